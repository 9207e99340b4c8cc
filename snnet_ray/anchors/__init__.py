"""Anchors: adapters that give every timm family one view (embed, stage blocks, widths, finish)."""

from snnet_ray.anchors.base import AnchorAdapter, adapter_for, list_families, register_family
from snnet_ray.anchors.drop_path import uniform_drop_path
from snnet_ray.anchors.factory import AnchorSpec, create_anchors, resolve_anchor_specs
from snnet_ray.anchors.resnet import ResNetAdapter
from snnet_ray.anchors.swin import SwinAdapter
from snnet_ray.anchors.vit import ViTAdapter

__all__ = [
    "AnchorAdapter",
    "AnchorSpec",
    "ResNetAdapter",
    "SwinAdapter",
    "ViTAdapter",
    "adapter_for",
    "create_anchors",
    "list_families",
    "register_family",
    "resolve_anchor_specs",
    "uniform_drop_path",
]
