"""Hand-written networks for the benchmarks: one SN-Net path in straight-line code, no adapters."""

from __future__ import annotations

import torch
from torch import nn

from snnet_ray import SNNet

__all__ = ["HandWrittenPath"]


class HandWrittenPath(nn.Module):
    """The path of one ViT stitch written out by hand: no adapter, no config lookup."""

    def __init__(self, model: SNNet, cfg_id: int) -> None:
        super().__init__()
        cfg = model.configs[cfg_id]
        if cfg.is_anchor:
            front = back = model.anchors[cfg.anchors[0]].model
            j, l, stitch = len(front.blocks) - 1, len(front.blocks), nn.Identity()
        else:
            front, back = (model.anchors[a].model for a in cfg.anchors)
            (j, l), stitch = cfg.positions[0], model.stitch_layers[cfg.layer]
        self.front, self.back = front, back
        self.front_blocks = nn.Sequential(*front.blocks[: j + 1])
        self.stitch = stitch
        self.back_blocks = nn.Sequential(*back.blocks[l:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.front
        x = f.norm_pre(f.patch_drop(f._pos_embed(f.patch_embed(x))))
        x = self.back_blocks(self.stitch(self.front_blocks(x)))
        return self.back.forward_head(self.back.norm(x))
