"""Stitching layers: small linear maps from a front anchor's activation to a back anchor's.

Token (B, N, C) and NHWC (B, H, W, C) activations use a `Linear` over channels, applied to
every token or pixel (the class token included); NCHW (CNN) activations use a 1x1 `Conv2d`.
Both start from a least-squares solution (`load_solution`) before training.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ConvStitch", "LinearStitch", "make_stitching_layer", "to_rows"]


class LinearStitch(nn.Linear):
    """Stitching layer for token and NHWC layouts: `y = x W^T + b` over the last dimension."""

    def load_solution(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Set weight (out, in) and bias (out) from a least-squares solution."""
        with torch.no_grad():
            self.weight.copy_(weight.to(self.weight))
            self.bias.copy_(bias.to(self.bias))


class ConvStitch(nn.Conv2d):
    """Stitching layer for NCHW activations: a 1x1 convolution.

    `channels_last_out=True` hands the back anchor NHWC (a CNN front stitched into Swin, as the
    official ResNet-18 -> Swin-Ti SN-Net does: features to tokens).
    """

    def __init__(self, in_features: int, out_features: int, channels_last_out: bool = False) -> None:
        super().__init__(in_features, out_features, kernel_size=1)
        self.channels_last_out = channels_last_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return y.permute(0, 2, 3, 1) if self.channels_last_out else y

    def load_solution(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        with torch.no_grad():
            self.weight.copy_(weight.reshape(self.weight.shape).to(self.weight))
            self.bias.copy_(bias.to(self.bias))


_LAYER_BY_LAYOUT: dict[str, type[nn.Module]] = {"tokens": LinearStitch, "nhwc": LinearStitch, "nchw": ConvStitch}


def make_stitching_layer(layout: str, in_features: int, out_features: int, out_layout: str | None = None) -> nn.Module:
    """The stitching layer for an activation layout ('tokens', 'nhwc' or 'nchw').

    `out_layout` is the back anchor's layout when it differs (cross-family): NCHW -> NHWC only.
    """
    if layout not in _LAYER_BY_LAYOUT:
        raise ValueError(f"unknown activation layout '{layout}'; known: {sorted(_LAYER_BY_LAYOUT)}")
    if out_layout is None or out_layout == layout:
        return _LAYER_BY_LAYOUT[layout](in_features, out_features)
    if (layout, out_layout) == ("nchw", "nhwc"):
        return ConvStitch(in_features, out_features, channels_last_out=True)
    raise ValueError(
        f"no stitching layer from '{layout}' to '{out_layout}' activations; across families SN-Net "
        "stitches a CNN front (nchw) into a Swin back (nhwc)"
    )


def to_rows(x: torch.Tensor, layout: str) -> torch.Tensor:
    """Activations as a (rows, channels) matrix: one row per token or pixel."""
    if layout == "nchw":
        x = x.movedim(1, -1)
    return x.reshape(-1, x.shape[-1])
