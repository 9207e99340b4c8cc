"""Swin Transformers: four stages of shifted-window blocks at halving resolution.

Cuts stay inside a stage and never in the last one (no stitch across a resolution change).
In timm, stage i > 0 starts with its `PatchMerging` downsample (`layers[i].downsample`), so
the front half of a cut inside stage i has already run that downsample, and the back half
starts at a block of the same stage. Activations at a cut are NHWC; the stitching layer is a
linear map over channels per stage (Ti/S: 96/192/384/768, B: 128/256/512/1024).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.models.swin_transformer import SwinTransformer
from torch import nn

from snnet_ray.anchors.base import AnchorAdapter, register_family

__all__ = ["SwinAdapter"]


@register_family(SwinTransformer)
class SwinAdapter(AnchorAdapter):
    """timm `SwinTransformer` (v1)."""

    family = "swin"
    layout = "nhwc"

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.patch_embed(x)

    def stage_blocks(self, stage: int) -> Sequence[nn.Module]:
        return self.model.layers[stage].blocks

    def enter(self, stage: int, x: torch.Tensor) -> torch.Tensor:
        return self.model.layers[stage].downsample(x)

    def enter_modules(self, stage: int) -> list[nn.Module]:
        return [self.model.layers[stage].downsample]

    def finish(self, x: torch.Tensor, norm: bool = True) -> torch.Tensor:
        return self.model.forward_head(self.model.norm(x) if norm else x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.norm(x)

    def finish_modules(self) -> list[nn.Module]:
        return [self.model.norm, self.model.head]

    @property
    def num_stages(self) -> int:
        return len(self.model.layers)

    @property
    def stage_widths(self) -> list[int]:
        return [int(layer.blocks[0].dim) for layer in self.model.layers]
