"""Anchor adapters: the same view of every family, weight loading, and input checks."""

from __future__ import annotations

import logging

import pytest
import safetensors.torch
import timm
import torch
from tiny_families import FAMILIES

from snnet_ray import SNNet
from snnet_ray.anchors import AnchorSpec, adapter_for, create_anchors, list_families


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_adapter_reproduces_timm_forward(family):
    anchors, kwargs = FAMILIES[family]
    for adapter in create_anchors([AnchorSpec(n, k) for n, k in anchors], **kwargs):
        adapter.eval()
        x = torch.randn(2, 3, 32, 32)
        assert torch.equal(adapter(x), adapter.model(x))
        # front half + back half at every cut equals the whole anchor
        for stage in adapter.stitch_stages:
            for j in range(adapter.first_back_block(stage), adapter.stage_depths[stage]):
                h = adapter.forward_until(x, stage, j - 1) if j > 0 else None
                if h is None:
                    continue
                assert torch.allclose(adapter.forward_from(h, stage, j), adapter.model(x), atol=1e-5)


def test_every_family_is_registered():
    assert set(list_families()) >= {"vit", "swin", "resnet"}
    with torch.device("meta"):
        convnext = timm.create_model("convnext_atto")
    with pytest.raises(ValueError, match="no stitching adapter for ConvNeXt"):
        adapter_for(convnext)


def test_stage_views():
    anchors, kwargs = FAMILIES["swin"]
    small = create_anchors([AnchorSpec(*anchors[1])], **kwargs)[0]
    assert small.stage_depths == [2, 2, 4, 2]
    assert small.stage_widths == [16, 32, 64, 128]
    assert small.stitch_stages == [0, 1, 2]
    anchors, kwargs = FAMILIES["resnet"]
    r18, r50 = create_anchors([AnchorSpec(n, k) for n, k in anchors], **kwargs)
    assert r18.stage_widths == [8, 16, 24, 32] and r50.stage_widths == [32, 64, 96, 128]
    # A stage whose first block projects (64-wide stem -> 8 or 32 channels, or stride 2) can only
    # be entered by a back half at block 1.
    assert [r50.first_back_block(s) for s in range(4)] == [1, 1, 1, 1]
    assert [r18.first_back_block(s) for s in range(4)] == [1, 1, 1, 1]


def _save(model: torch.nn.Module, path, fmt: str):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        safetensors.torch.save_file(state, str(path))
    elif fmt == "torch":
        torch.save(state, path)
    else:  # a training checkpoint that wraps the weights, as many repos publish them
        torch.save({"model": state, "epoch": 300}, path)


@pytest.mark.parametrize("fmt", ["safetensors", "torch", "wrapped"])
def test_pretrained_weights_from_local_files(tmp_path, fmt):
    anchors, kwargs = FAMILIES["vit"]
    paths = []
    sources = []
    for i, (name, kw) in enumerate(anchors[:2]):
        src = timm.create_model(name, **kw, **kwargs)
        path = tmp_path / f"anchor{i}.{'safetensors' if fmt == 'safetensors' else 'pth'}"
        _save(src, path, fmt)
        paths.append(path)
        sources.append(src)
    model = SNNet.from_timm(anchors[:2], pretrained=paths, **kwargs)
    for adapter, src in zip(model.anchors, sources):
        for key, value in src.state_dict().items():
            assert torch.equal(adapter.model.state_dict()[key], value), key


def test_pretrained_head_with_other_classes_is_dropped(tmp_path):
    """A 1000-class checkpoint fine-tunes to a 10-class SN-Net: trunk loaded, new head."""
    anchors, kwargs = FAMILIES["vit"]
    paths, sources = [], []
    for i, (name, kw) in enumerate(anchors[:2]):
        src = timm.create_model(name, **kw, **{**kwargs, "num_classes": 1000})
        paths.append(tmp_path / f"a{i}.safetensors")
        _save(src, paths[-1], "safetensors")
        sources.append(src)
    model = SNNet.from_timm(anchors[:2], pretrained={anchors[0][0]: paths[0], anchors[1][0]: paths[1]}, **kwargs)
    assert model.num_classes == 10
    got = model.anchors[0].model.state_dict()
    assert torch.equal(got["blocks.0.attn.qkv.weight"], sources[0].state_dict()["blocks.0.attn.qkv.weight"])
    assert got["head.weight"].shape == (10, 32)


def test_clear_errors_before_building():
    anchors, kwargs = FAMILIES["vit"]
    with pytest.raises(ValueError, match="unknown timm model 'deit_tinyy_patch16_224'.*deit_tiny_patch16_224"):
        SNNet.from_timm(["deit_tinyy_patch16_224", "deit_small_patch16_224"], device="meta")
    with pytest.raises(ValueError, match="one family.*vit.*swin"):
        SNNet.from_timm(["deit_tiny_patch16_224", "swin_tiny_patch4_window7_224"], device="meta")
    with pytest.raises(FileNotFoundError, match="weights file for anchor 'deit_tiny_patch16_224' not found"):
        SNNet.from_timm(anchors[:2], pretrained=["/nonexistent/ti.safetensors", False], **kwargs)
    with pytest.raises(ValueError, match="one file for 2 anchors"):
        SNNet.from_timm(anchors[:2], pretrained="/some/file.safetensors", **kwargs)
    with pytest.raises(ValueError, match="at least two anchors"):
        SNNet.from_timm(anchors[:1], **kwargs)
    with pytest.raises(ValueError, match="different token/spatial shapes"):
        SNNet.from_timm(["deit_tiny_patch16_224", "vit_small_patch32_224"], device="meta")


def test_anchors_out_of_order_are_sorted_and_logged(caplog):
    anchors, kwargs = FAMILIES["vit"]
    with caplog.at_level(logging.WARNING):
        model = SNNet.from_timm(list(reversed(anchors)), **kwargs)
    assert [a.stage_widths[0] for a in model.anchors] == [32, 48, 64]
    assert "anchors sorted by size" in caplog.text
    assert model.anchor_order == [2, 1, 0]


@pytest.mark.parametrize(
    "names",
    [
        ["deit3_small_patch16_224", "deit3_base_patch16_224"],  # DeiT III: layer scale, no class-token pooling change
        ["deit_tiny_distilled_patch16_224", "deit_small_distilled_patch16_224"],  # class + distillation tokens
    ],
)
def test_vit_variants_stitch_and_reproduce_their_anchors(names):
    model = SNNet.from_timm([(n, dict(depth=2)) for n in names], img_size=32, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    for i, adapter in enumerate(model.anchors):
        assert torch.equal(model.forward_config(x, i), adapter.model(x))
    assert all(model.forward_config(x, c.id).shape == (2, 10) for c in model.configs)
