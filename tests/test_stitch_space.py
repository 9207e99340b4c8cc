"""The stitch space (`dense` rule): positions, shared layers, unequal depths, pairs, ids, `stitches`.

The official spaces (`paper` rule, the default) are tested against the official listings in
test_stitch_rules.py.
"""

from __future__ import annotations

import json

import pytest

from snnet_ray.cli import main
from snnet_ray.stitching.space import AnchorLayout, anchor_pairs, build_stitch_space, window_positions

DEIT = ["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"]
SWIN = ["swin_tiny_patch4_window7_224", "swin_small_patch4_window7_224", "swin_base_patch4_window7_224"]


def vit(depth: int, width: int) -> AnchorLayout:
    return AnchorLayout(depths=(depth,), widths=(width,), stitch_stages=(0,), first_back_blocks=(0,))


def test_window_positions_paper_count():
    windows = window_positions(12, kernel_size=2, stride=1)
    positions = [p for w in windows for p in w]
    assert len(positions) == 34 and len(set(positions)) == 34
    assert windows[0] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert windows[1] == [(1, 2), (2, 1), (2, 2)]
    assert windows[-1] == []  # the window [11] adds nothing new, hence no layer
    assert sum(1 for w in windows if w) == 11


def test_deit_ti_s_b_has_71_configs_and_22_layers():
    space = build_stitch_space([vit(12, 192), vit(12, 384), vit(12, 768)], rule="dense")
    assert len(space.configs) == 71 and len(space.layers) == 22
    assert [c.name for c in space.configs[:5]] == ["anchor0", "anchor1", "anchor2", "0-1:0,0", "0-1:0,1"]
    assert [c.id for c in space.configs] == list(range(71))
    # all positions of a window share that window's layer
    by_layer = {}
    for c in space.configs[3:]:
        by_layer.setdefault(c.layer, []).append(c.positions[0])
    assert by_layer[0] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert space.layers[11].front == 1 and space.layers[11].in_width == 384 and space.layers[11].out_width == 768


def test_larger_windows_and_strides():
    # k=3, s=2 over 12 blocks: windows start 0,2,..,10, the last is cut to [10, 11]
    windows = window_positions(12, kernel_size=3, stride=2)
    assert len(windows) == 6
    assert windows[0] == [(j, l) for j in range(3) for l in range(3)]
    assert windows[-1] == [(10, 11), (11, 10), (11, 11)]
    covered = {p for w in windows for p in w}
    assert {(i, i) for i in range(12)} <= covered


def test_unequal_depth_maps_by_relative_depth():
    # front 6 blocks (shallow), back 18: back index l -> 3l
    space = build_stitch_space([vit(6, 96), vit(18, 192)], rule="dense")
    positions = [c.positions[0] for c in space.configs[2:]]
    assert len(positions) == 3 * 6 - 2
    assert positions[:5] == [(0, 0), (0, 3), (1, 0), (1, 3), (1, 6)]
    # deeper front: front cut j -> round((j + 1) * 3) - 1
    space = build_stitch_space([vit(18, 96), vit(6, 192)], rule="dense")
    assert [c.positions[0] for c in space.configs[2:6]] == [(2, 0), (2, 1), (5, 0), (5, 1)]


def test_back_half_starts_only_where_the_stage_shape_holds():
    a = AnchorLayout((2, 2), (8, 16), (0,), (0, 1))
    b = AnchorLayout((2, 2), (32, 64), (0,), (1, 1))
    space = build_stitch_space([a, b], rule="dense")
    assert [c.positions[0] for c in space.configs[2:]] == [(0, 1), (1, 1)]


def test_pairs():
    assert anchor_pairs(3, nearest=True) == [(0, 1), (1, 2)]
    assert anchor_pairs(3, nearest=False) == [(0, 1), (0, 2), (1, 2)]
    space = build_stitch_space([vit(12, 192), vit(12, 384), vit(12, 768)], nearest=False, rule="dense")
    assert len(space.configs) == 3 + 3 * 34
    assert {c.anchors for c in space.configs[3:]} == {(0, 1), (0, 2), (1, 2)}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kernel_size=13), "kernel_size=13 is larger than the depth"),
        (dict(kernel_size=0), "kernel_size must be >= 1"),
        (dict(stride=0), "stride must be >= 1"),
    ],
)
def test_bad_windows(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_stitch_space([vit(12, 192), vit(12, 384)], rule="dense", **kwargs)


def test_stitches_command_deit_json(capsys):
    assert main(["stitches", "--anchors", ",".join(DEIT), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["num_configs"] == 71 and len(out["configs"]) == 71
    first, last = out["configs"][0], out["configs"][-1]
    assert first["path"] == "deit_tiny_patch16_224" and first["kind"] == "anchor"
    assert last["name"] == "1-2:11,11" and "L21" in last["path"]
    gmacs = [c["gmacs"] for c in out["configs"]]
    # the published DeiT SN-Net spans 1.26 - 18.34 GMACs
    assert min(gmacs) == pytest.approx(1.26, rel=0.05) and max(gmacs) == pytest.approx(18.34, rel=0.05)


def test_stitches_command_swin(capsys):
    assert main(["stitches", "--anchors", ",".join(SWIN), "--rule", "dense", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    # 3 anchors + stages 0,1 (2 blocks: 4 positions per pair) + stage 2 (Ti->S 6->18 blocks: 16,
    # S->B 18 blocks: 52). The official code keeps only forward jumps j < l (41, rule paper).
    assert out["num_configs"] == 3 + 2 * (4 + 4) + 16 + 52 == 87 and out["rule"] == "dense"
    assert {c["stage"] for c in out["configs"][3:]} == {0, 1, 2}


def test_stitches_command_table_and_errors(capsys):
    assert main(["stitches", "--anchors", ",".join(DEIT[:2]), "--kernel-size", "3", "--stride", "2"]) == 0
    out = capsys.readouterr().out
    assert "configs (2 anchors +" in out and "GMACs" in out
    assert main(["stitches", "--anchors", "deit_tiny_patch16_224,swin_tiny_patch4_window7_224"]) == 2
    assert "anchors must be of one family" in capsys.readouterr().err
