"""Stitch rules: `paper` reproduces the official SN-Net spaces, `dense` is the finer window rule;
cross-family stitching (ResNet -> Swin); the final-norm option.

The official layouts (ids, positions, stages, stitching-layer keys) are the packaged reference
data in snnet_ray/reference/published/, generated from ../shared/data/official_snnet/.
"""

from __future__ import annotations

import json

import pytest
import torch

from snnet_ray import SNNet, least_squares_init
from snnet_ray.cli import main
from snnet_ray.reference import load_published
from snnet_ray.stitching import load_snnet, save_snnet
from snnet_ray.stitching.layers import ConvStitch
from snnet_ray.stitching.official import OFFICIAL_RELEASES, official_layer_key
from snnet_ray.stitching.space import (
    AnchorLayout,
    RuleOptions,
    SpaceBuilder,
    build_stitch_space,
    list_rules,
    register_rule,
)

EXPECTED = {"deit": (71, 22), "swin": (41, 27), "resnet": (10, 4), "resnet_swin": (8, 3)}


@pytest.fixture(scope="module")
def official_models():
    return {name: SNNet.from_timm(list(r.anchors), device="meta") for name, r in OFFICIAL_RELEASES.items()}


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_paper_rule_is_the_default_and_reproduces_the_official_space(official_models, family):
    model, pub = official_models[family], load_published(family)
    configs, layers = EXPECTED[family]
    assert model.rule == "paper"
    assert len(model.configs) == len(pub.configs) == configs and len(model.stitch_layers) == layers
    for ours, theirs in zip(model.configs, pub.configs):
        assert ours.id == theirs.id and ours.kind == theirs.kind and ours.anchors == theirs.anchors
        if ours.is_anchor:
            continue
        assert ours.positions == theirs.positions, ours.id
        assert ours.stage == (0 if theirs.stage is None else theirs.stage), ours.id
        # layer sharing: the config's stitching layer is the official module it used
        assert official_layer_key(model, model.layer_specs[ours.layer]) == theirs.layer_key, ours.id
    assert len({c.layer_key for c in pub.configs if c.layer_key}) == layers
    for spec in model.layer_specs:  # a layer's least-squares positions are exactly the configs using it
        assert spec.positions == tuple(c.positions[0] for c in model.configs if c.layer == spec.index)


def test_official_swin_stage2_shares_six_layers_over_17_positions(official_models):
    model = official_models["swin"]
    ti_s = [c for c in model.configs if c.stage == 2 and c.anchors == (0, 1)]
    assert [c.positions[0] for c in ti_s][:6] == [(0, 1), (0, 2), (1, 3), (1, 4), (1, 5), (2, 6)]
    windows = [model.layer_specs[c.layer].window for c in ti_s]
    assert windows == [k * 6 // 18 for k in range(17)] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5]


def vit(depth: int, width: int) -> AnchorLayout:
    return AnchorLayout(depths=(depth,), widths=(width,), stitch_stages=(0,), first_back_blocks=(0,))


def test_nearest_false_adds_the_official_two_hop_configs():
    space = build_stitch_space([vit(12, 192), vit(12, 384), vit(12, 768)], nearest=False)
    assert len(space.configs) == 732
    singles = space.configs[3:105]
    assert [c.anchors for c in singles[::34]] == [(0, 1), (0, 2), (1, 2)]
    pair_positions = [c.positions[0] for c in singles[:34]]
    chains = space.configs[105:]
    assert all(c.anchors == (0, 1, 2) and c.num_hops == 2 for c in chains)
    # every (first hop, second hop) with the second cut no earlier than the first entry, in order
    expected = [(p, q) for p in pair_positions for q in pair_positions if q[0] >= p[1]]
    assert [c.positions for c in chains] == expected and len(expected) == 627
    layers = {c.anchors: c.layer for c in singles}
    for c in chains[:50]:  # hops reuse the pairs' layers
        first = next(s for s in singles if s.anchors == (0, 1) and s.positions[0] == c.positions[0])
        second = next(s for s in singles if s.anchors == (1, 2) and s.positions[0] == c.positions[1])
        assert c.layers == (first.layer, second.layer)
    assert layers


def test_two_hop_path_runs_middle_blocks_between_its_cuts():
    anchors = [("deit_tiny_patch16_224", dict(embed_dim=e, depth=4, num_heads=2)) for e in (16, 24, 32)]
    model = SNNet.from_timm(anchors, nearest=False, img_size=32, patch_size=8, num_classes=5).eval()
    cfg = next(c for c in model.configs if c.num_hops == 2 and c.positions == ((0, 1), (2, 3)))
    x = torch.randn(2, 3, 32, 32)
    a, b, c = model.anchors
    h = model.stitch_layers[cfg.layers[0]](a.forward_until(x, 0, 0))
    h = model.stitch_layers[cfg.layers[1]](b.run_stage(0, h, 1, 3))
    assert torch.allclose(model.forward_config(x, cfg.id), c.forward_from(h, 0, 3), atol=1e-6)
    cost = model.cost(cfg.id)
    assert model.cost(0).gmacs < cost.gmacs < model.cost(2).gmacs
    mods = model.config_modules(cfg.id)
    assert mods.count(model.stitch_layers[cfg.layers[0]]) == 1 and model.stitch_layers[cfg.layers[1]] in mods


@pytest.mark.parametrize("final_norm", ["always", "v1"])
def test_two_hop_paths_evaluate_export_and_give_features(final_norm, tmp_path):
    """Official v1 two-hop configs share SN-Netv2's multi-hop path: one pass, export, features."""
    from snnet_ray.deploy.export import export_config, load_exported
    from snnet_ray.deploy.network import RouteNetwork
    from snnet_ray.eval.one_pass import evaluate_batch, evaluate_batch_by_config

    anchors = [("deit_tiny_patch16_224", dict(embed_dim=e, depth=4, num_heads=2)) for e in (16, 24, 32)]
    model = SNNet.from_timm(
        anchors, nearest=False, final_norm=final_norm, img_size=32, patch_size=8, num_classes=5
    ).eval()
    cfg = next(c for c in model.configs if c.num_hops == 2 and c.positions == ((0, 1), (2, 3)))
    x, y = torch.randn(3, 3, 32, 32), torch.randint(0, 5, (3,))
    with torch.no_grad():
        one_pass, by_config = evaluate_batch(model, x, y), evaluate_batch_by_config(model, x, y)
        assert one_pass.keys() == by_config.keys()
        for i, want in by_config.items():
            assert (one_pass[i].top1_correct, one_pass[i].top5_correct) == (want.top1_correct, want.top5_correct)
            assert one_pass[i].loss_sum == pytest.approx(want.loss_sum, rel=1e-4)
        out = export_config(model, cfg.id, tmp_path / "hop", formats=("safetensors",))
        net = load_exported(out.out_dir)
        assert isinstance(net, RouteNetwork) and net.final_norm == (final_norm == "always")
        assert torch.allclose(net(x), model.forward_config(x, cfg.id), atol=1e-5)
        feats = model.forward_features(x, cfg.id)  # timm's convention: after the final norm
        assert feats.shape == (3, 1 + 16, model.feature_width(cfg.id))
        if final_norm == "always":
            head = model.anchors[2].model.forward_head(feats)
            assert torch.allclose(head, model.forward_config(x, cfg.id), atol=1e-5)


def test_dense_rule_is_todays_space_and_rules_are_a_registry():
    swin = [
        AnchorLayout(d, (96, 192, 384, 768), (0, 1, 2), (0, 0, 0, 0))
        for d in ((2, 2, 6, 2), (2, 2, 18, 2), (2, 2, 18, 2))
    ]
    assert len(build_stitch_space(swin, rule="dense").configs) == 87
    assert len(build_stitch_space(swin, rule="paper").configs) == 41
    assert {"paper", "dense"} <= set(list_rules())
    with pytest.raises(ValueError, match="unknown stitch rule 'nope'; known rules: .*dense.*paper"):
        build_stitch_space(swin, rule="nope")

    @register_rule("test_first_blocks")
    def first_blocks(layouts, opts: RuleOptions):
        space = SpaceBuilder(layouts)
        layer = space.add_layer(0, 1, 0, 0, [(0, opts.extra["l"])])
        space.add_config((0, 1), 0, [(0, opts.extra["l"])], [layer])
        return space.build()

    space = build_stitch_space([vit(4, 8), vit(4, 16)], rule="test_first_blocks", rule_options={"l": 2})
    assert [c.name for c in space.configs] == ["anchor0", "anchor1", "0-1:0,2"]


def test_paper_rule_refuses_a_deeper_front_and_names_dense():
    with pytest.raises(ValueError, match="rule='dense'"):
        build_stitch_space([vit(6, 8), vit(3, 16)])


def test_stitches_command_rules(capsys):
    assert main(["stitches", "--anchors", "resnet18,resnet50", "--json"]) == 0
    paper = json.loads(capsys.readouterr().out)
    assert paper["rule"] == "paper" and paper["num_configs"] == 10
    assert [c["stage"] for c in paper["configs"][2:]] == [1, 1, 1, 2, 2, 2, 2, 2]
    assert main(["stitches", "--anchors", "resnet18,resnet50", "--rule", "dense", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_configs"] == 8
    assert main(["stitches", "--anchors", "resnet18,resnet50", "--rule", "bogus"]) == 2
    assert "unknown stitch rule 'bogus'" in capsys.readouterr().err


# -- cross-family: ResNet -> Swin (features NCHW to NHWC tokens) ------------------------------------------

CROSS = [
    ("resnet18", dict(channels=(8, 16, 24, 32))),
    ("swin_tiny_patch4_window7_224", dict(embed_dim=32, depths=(2, 2, 4, 2), num_heads=(1, 1, 2, 2), img_size=32,
                                          window_size=4)),
]  # fmt: skip


def test_cross_family_resnet_to_swin_stitches_through_the_same_adapters():
    torch.manual_seed(0)
    model = SNNet.from_timm(CROSS, num_classes=10).eval()
    assert model.family == "resnet+swin" and model.anchor_names[0] == "resnet18"
    # official stages 1 and 2 of the front (ResNet): (0,1) | 2 -> 4 blocks unpaired: (0,1), (1,2), (1,3)
    assert [(c.stage, c.positions[0]) for c in model.configs[2:]] == [
        (1, (0, 1)),
        (2, (0, 1)),
        (2, (1, 2)),
        (2, (1, 3)),
    ]
    assert all(isinstance(layer, ConvStitch) and layer.channels_last_out for layer in model.stitch_layers)
    x = torch.randn(8, 3, 32, 32)
    residuals = least_squares_init(model, x)
    assert all(0 <= r < 1 for r in residuals.values())
    front, back = model.anchors
    for cfg in model.configs[2:]:
        (j, l), layer = cfg.positions[0], model.stitch_layers[cfg.layer]
        feats = front.forward_until(x, cfg.stage, j)
        h = torch.nn.functional.conv2d(feats, layer.weight, layer.bias).permute(0, 2, 3, 1)
        out = model.forward_config(x, cfg.id)
        assert out.shape == (8, 10) and torch.allclose(out, back.forward_from(h, cfg.stage, l), atol=1e-5)
        stitch_macs = layer.in_channels * layer.out_channels * feats.shape[-1] * feats.shape[-2] / 1e9
        assert model.cost(cfg.id).gmacs > stitch_macs > 0  # the 1x1 conv is counted on the path
    # still refused where activations are not both pixel grids
    with pytest.raises(ValueError, match="anchors must be of one family"):
        SNNet.from_timm(["deit_tiny_patch16_224", "resnet18"], device="meta")


# -- final norm: 'always' or 'v1' ------------------------------------------------------------------------

TINY_VIT = [("deit_tiny_patch16_224", dict(embed_dim=e, depth=4, num_heads=2)) for e in (16, 32)]


def test_final_norm_v1_skips_the_back_norm_on_vit_stitches_only_and_is_saved(tmp_path):
    torch.manual_seed(0)
    kwargs = dict(img_size=32, patch_size=8, num_classes=5)
    v1 = SNNet.from_timm(TINY_VIT, final_norm="v1", **kwargs).eval()
    always = SNNet.from_timm(TINY_VIT, **kwargs).eval()
    always.load_state_dict(v1.state_dict())
    assert always.final_norm == "always"
    x = torch.randn(2, 3, 32, 32)
    for i in range(2):  # anchors run their norm in both modes
        assert torch.equal(v1.forward_config(x, i), always.forward_config(x, i))
    cfg = v1.configs[5]
    (j, l), back = cfg.positions[0], v1.anchors[1]
    h = v1.stitch_layers[cfg.layer](v1.anchors[0].forward_until(x, 0, j))
    expected = back.model.forward_head(back.run_stage(0, h, l))  # no back.model.norm
    assert torch.allclose(v1.forward_config(x, cfg.id), expected, atol=1e-6)
    assert not torch.allclose(always.forward_config(x, cfg.id), expected, atol=1e-3)

    save_snnet(v1, tmp_path / "v1")
    assert json.loads((tmp_path / "v1" / "snnet.json").read_text())["final_norm"] == "v1"
    loaded = load_snnet(tmp_path / "v1").eval()
    assert loaded.final_norm == "v1" and loaded.rule == "paper"
    assert torch.equal(loaded.forward_config(x, cfg.id), v1.forward_config(x, cfg.id))

    # saved before rules existed: the dense rule and the always-on norm it was trained with
    spec = json.loads((tmp_path / "v1" / "snnet.json").read_text())
    for key in ("rule", "final_norm", "rule_options"):
        spec.pop(key)
    (tmp_path / "v1" / "snnet.json").write_text(json.dumps(spec))
    old = load_snnet(tmp_path / "v1", device="meta")
    assert (old.rule, old.final_norm) == ("dense", "always")
    with pytest.raises(ValueError, match="final_norm must be one of always, v1"):
        SNNet.from_timm(TINY_VIT, final_norm="sometimes", device="meta", **kwargs)


def test_swin_v1_keeps_the_final_norm_as_the_official_code():
    kwargs = dict(img_size=32, patch_size=4, window_size=4, num_classes=5)
    anchors = [("swin_tiny_patch4_window7_224", dict(embed_dim=e, depths=(2, 2, 2, 2), num_heads=(1, 1, 1, 1)))
               for e in (8, 16)]  # fmt: skip
    v1 = SNNet.from_timm(anchors, final_norm="v1", **kwargs).eval()
    assert all(v1.stitch_final_norm(c) for c in v1.configs[2:])
