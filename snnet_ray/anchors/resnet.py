"""ResNets: four stages of residual blocks, stitched with 1x1 convolutions (NCHW).

A stage's first block may downsample (stride 2 and/or a projection shortcut), so its input
still has the previous stage's shape: a back half may start at block 1 of such a stage but not
at block 0. Cuts are placed in every stage but the last.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.models.resnet import ResNet
from torch import nn

from snnet_ray.anchors.base import AnchorAdapter, register_family

__all__ = ["ResNetAdapter"]


@register_family(ResNet)
class ResNetAdapter(AnchorAdapter):
    """timm `ResNet` (ResNet-18/34/50/101, ResNet-D, ...)."""

    family = "resnet"
    layout = "nchw"

    def _stage(self, stage: int) -> nn.Sequential:
        return getattr(self.model, f"layer{stage + 1}")

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        return m.maxpool(m.act1(m.bn1(m.conv1(x))))

    def stage_blocks(self, stage: int) -> Sequence[nn.Module]:
        return self._stage(stage)

    def first_back_block(self, stage: int) -> int:
        first = self._stage(stage)[0]
        return 0 if getattr(first, "downsample", None) is None else 1

    def finish(self, x: torch.Tensor, norm: bool = True) -> torch.Tensor:
        return self.model.forward_head(x)  # no final norm in a ResNet

    @property
    def official_stitch_stages(self) -> list[int]:
        # The official ResNet code stitches layer2 and layer3 only (never the stem's stage or the last).
        return list(range(1, self.num_stages - 1))

    def finish_modules(self) -> list[nn.Module]:
        return [self.model.fc]

    @property
    def num_stages(self) -> int:
        return 4

    @property
    def stage_widths(self) -> list[int]:
        widths = []
        for s in range(4):
            last = self._stage(s)[-1]
            conv = last.conv3 if hasattr(last, "conv3") else last.conv2  # bottleneck or basic block
            widths.append(int(conv.out_channels))
        return widths
