"""import-official: official SN-Net checkpoints (key/shape listings of the releases, random tensors)
become saved SNNets with the official configs; every key is accounted for and every config runs.

The full import (file -> saved SNNet -> reloaded, values and outputs checked, every config run) is
real for ResNet-18/50 (a CNN runs at 64 px, so this stays cheap on a CPU); the other releases
(DeiT 118M, Swin 166M, ResNet-18 -> Swin-Ti parameters at 224 px) are checked on the meta device:
every key maps onto the model, and a subset of configs (each anchor, one stitch per pair and
stage) runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from snnet_ray.cli import main
from snnet_ray.reference import load_published
from snnet_ray.stitching import load_snnet
from snnet_ray.stitching.official import (
    build_official_snnet,
    convert_official_state_dict,
    import_official,
    load_official_checkpoint,
    official_layer_key,
)

DATA = Path(__file__).parent / "data"


def listing(family: str) -> list:
    return json.loads((DATA / f"official_{family}_keys.json").read_text())["keys"]


def official_state(family: str, device: str = "cpu") -> dict[str, torch.Tensor]:
    """A state dict with the release's keys and shapes, random values (integer buffers zero)."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for key, shape, dtype, *_ in listing(family):
        if device == "meta":
            out[key] = torch.empty(shape, dtype=getattr(torch, dtype), device="meta")
        elif dtype == "int64":
            out[key] = torch.zeros(shape, dtype=torch.int64)
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=g) + 0.5  # a variance is positive
        else:
            out[key] = torch.rand(shape, generator=g) * 0.02 - 0.01
    return out


@pytest.mark.parametrize("family, rebuilt, aux", [("deit", 0, 0), ("swin", 87, 0), ("resnet", 0, 365),
                                                  ("resnet_swin", 17, 100)])  # fmt: skip
def test_every_official_key_is_used_or_named(family, rebuilt, aux):
    model = build_official_snnet(family, device="meta")
    state = official_state(family, device="meta")
    converted, report = convert_official_state_dict(model, state, family)
    assert report.total == len(state) and report.loaded == len(converted)
    assert set(converted) == set(model.state_dict())  # nothing of the model is left unloaded
    assert (len(report.rebuilt_buffers), len(report.split_bn_aux)) == (rebuilt, aux)
    assert all(k.endswith(("relative_position_index", "attn_mask")) for k in report.rebuilt_buffers)
    # configs: the published ones in their order (anchors, cut positions, the official layer), v1 paths
    pub = load_published(family)
    assert len(model.configs) == len(pub.configs) and model.final_norm == "v1"
    for ours, theirs in zip(model.configs, pub.configs):
        assert (ours.anchors, tuple(ours.positions)) == (theirs.anchors, tuple(theirs.positions)), ours.name
        if theirs.layer_key is not None:
            assert official_layer_key(model, model.layer_specs[ours.layer]) == theirs.layer_key, ours.name
    if family == "swin":  # the keys that move: timm keeps PatchMerging in the next stage, the head in head.fc
        for official, timm_key in [("anchors.1.layers.0.downsample.reduction.weight",
                                    "anchors.1.model.layers.1.downsample.reduction.weight"),
                                   ("anchors.2.layers.2.downsample.norm.bias",
                                    "anchors.2.model.layers.3.downsample.norm.bias"),
                                   ("anchors.0.head.weight", "anchors.0.model.head.fc.weight")]:  # fmt: skip
            assert converted[timm_key] is state[official]
    if family != "resnet":  # a subset runs on meta: anchors and one stitch per (pair, stage)
        x = torch.empty(1, 3, 224, 224, device="meta")
        firsts = {}
        for c in model.configs:
            firsts.setdefault((c.anchors, c.stage), c.id)
        with torch.no_grad():
            for cfg_id in firsts.values():
                assert model.forward_config(x, cfg_id).shape == (1, 1000)


def test_import_official_file_gives_a_saved_snnet_with_official_outputs(tmp_path, capsys):
    family = "resnet"
    state = official_state(family)
    location = "state_dict"
    # a raw training checkpoint: the state dict and a pickled argparse.Namespace
    ckpt = tmp_path / "release.pth"
    torch.save({location: state, "args": argparse.Namespace(model="snnet"), "epoch": 99}, ckpt)
    assert main(["import-official", "--family", family, "--checkpoint", str(ckpt), "--out", str(tmp_path / "m"),
                 "--json"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert summary["loaded"] + summary["rebuilt_buffers"] + summary["split_bn_aux"] == len(state)
    model = load_snnet(tmp_path / "m").eval()
    assert (model.rule, model.final_norm) == ("paper", "v1")
    extra = json.loads((tmp_path / "m" / "snnet.json").read_text())["extra"]
    assert extra["imported_from"]["release"] == family and extra["published"] == family
    # values landed where the official code keeps them
    assert torch.equal(model.anchors[0].model.conv1.weight, state["anchors.0.conv1.weight"])
    w = state["stitch_layers.1.0.1.transform.weight"]
    last = model.configs[-1]  # the official config uses stitch_layers.1.0.1
    assert torch.equal(model.stitch_layers[last.layer].weight, w)
    # anchors equal timm models loaded with the official anchor weights; every config runs
    import timm

    ref = timm.create_model("resnet18", num_classes=1000).eval()
    ref.load_state_dict({k[len("anchors.0."):]: v for k, v in state.items()
                         if k.startswith("anchors.0.") and ".aux_bn." not in k})  # fmt: skip
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.forward_config(x, 0), ref(x), atol=1e-5)
        for cfg in model.configs:
            assert model.forward_config(x, cfg.id).shape == (1, 1000)


def test_load_official_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="official checkpoint not found"):
        load_official_checkpoint(tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "obj": Path("x")}, bad)  # a non-allowlisted object
    with pytest.raises(ValueError, match="weights-only loading refuses"):
        load_official_checkpoint(bad)
    with pytest.raises(ValueError, match="unknown official release 'levit'"):
        import_official("levit", {}, tmp_path / "out")
    state = official_state("resnet", device="meta")
    state["anchors.0.fc.weight"] = torch.empty(10, 512, device="meta")
    with pytest.raises(ValueError, match=r"anchors\.0\.fc\.weight: shape \(10, 512\) does not fit"):
        convert_official_state_dict(build_official_snnet("resnet", "meta"), state, "resnet")
