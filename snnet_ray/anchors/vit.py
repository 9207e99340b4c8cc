"""Plain ViTs (ViT, DeiT, DeiT III): one stage of `depth` equal-width transformer blocks.

A cut after block j leaves the token sequence (B, N, C) with the class (and distillation or
register) tokens in front; the stitching layer maps every token, class token included.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from snnet_ray.anchors.base import AnchorAdapter, register_family

__all__ = ["ViTAdapter"]


@register_family(VisionTransformer)
class ViTAdapter(AnchorAdapter):
    """timm `VisionTransformer` (and subclasses such as DeiT's distilled variant)."""

    family = "vit"
    layout = "tokens"
    v1_stitch_final_norm = False  # official v1 DeiT stitches end in forward_head, without `norm`

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m.patch_embed(x)
        x = m._pos_embed(x)
        x = m.patch_drop(x)
        return m.norm_pre(x)

    def stage_blocks(self, stage: int) -> Sequence[nn.Module]:
        return self.model.blocks

    def finish(self, x: torch.Tensor, norm: bool = True) -> torch.Tensor:
        return self.model.forward_head(self.model.norm(x) if norm else x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.norm(x)

    def feature_map(self, features: torch.Tensor) -> torch.Tensor:
        """Patch tokens (class/register tokens dropped) on the patch grid: (B, C, H/p, W/p)."""
        m = self.model
        tokens = features[:, m.num_prefix_tokens :]
        h, w = m.patch_embed.grid_size
        if tokens.shape[1] != h * w:  # another image size (dynamic_img_size): square grids only
            h = w = round(tokens.shape[1] ** 0.5)
            if h * w != tokens.shape[1]:
                raise ValueError(
                    f"{tokens.shape[1]} patch tokens of {self.name} form no square grid; use square images"
                )
        return tokens.reshape(tokens.shape[0], h, w, tokens.shape[-1]).permute(0, 3, 1, 2)

    def finish_modules(self) -> list[nn.Module]:
        m = self.model
        heads = [m.norm, m.fc_norm, m.head, getattr(m, "attn_pool", None), getattr(m, "head_dist", None)]
        return [h for h in heads if h is not None]

    @property
    def num_stages(self) -> int:
        return 1

    @property
    def stage_widths(self) -> list[int]:
        return [int(self.model.embed_dim)]
