"""Tiny anchor families built through timm kwargs, for tests: seconds on a CPU, no hub.

Each family is (anchors, timm_kwargs) for `SNNet.from_timm(anchors, **timm_kwargs)`; sizes
differ in width and (for Swin and ResNet) depth, so unequal-depth mapping is exercised.
"""

from __future__ import annotations

from typing import Any

TINY_VIT = (
    [
        ("deit_tiny_patch16_224", dict(embed_dim=32, depth=4, num_heads=2)),
        ("deit_small_patch16_224", dict(embed_dim=48, depth=4, num_heads=2)),
        ("deit_base_patch16_224", dict(embed_dim=64, depth=4, num_heads=2)),
    ],
    dict(img_size=32, patch_size=8, num_classes=10),
)

TINY_SWIN = (
    [
        ("swin_tiny_patch4_window7_224", dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2))),
        ("swin_small_patch4_window7_224", dict(embed_dim=16, depths=(2, 2, 4, 2), num_heads=(1, 1, 2, 2))),
        ("swin_base_patch4_window7_224", dict(embed_dim=24, depths=(2, 2, 4, 2), num_heads=(1, 1, 2, 2))),
    ],
    dict(img_size=32, patch_size=2, window_size=4, num_classes=10),
)

TINY_RESNET = (
    [
        ("resnet18", dict(channels=(8, 16, 24, 32))),
        ("resnet50", dict(channels=(8, 16, 24, 32), layers=(2, 3, 3, 2))),
    ],
    dict(num_classes=10),
)

FAMILIES: dict[str, tuple[list[tuple[str, dict[str, Any]]], dict[str, Any]]] = {
    "vit": TINY_VIT,
    "swin": TINY_SWIN,
    "resnet": TINY_RESNET,
}


def tiny_snnet(family: str = "vit", **overrides: Any):
    """A tiny SN-Net of a registered family (random weights)."""
    from snnet_ray import SNNet

    anchors, kwargs = FAMILIES[family]
    return SNNet.from_timm(anchors, **{**kwargs, **overrides})
