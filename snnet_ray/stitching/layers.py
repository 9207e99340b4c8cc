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
    """Stitching layer for NCHW activations: a 1x1 convolution."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, kernel_size=1)

    def load_solution(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        with torch.no_grad():
            self.weight.copy_(weight.reshape(self.weight.shape).to(self.weight))
            self.bias.copy_(bias.to(self.bias))


_LAYER_BY_LAYOUT: dict[str, type[nn.Module]] = {"tokens": LinearStitch, "nhwc": LinearStitch, "nchw": ConvStitch}


def make_stitching_layer(layout: str, in_features: int, out_features: int) -> nn.Module:
    """The stitching layer for an activation layout ('tokens', 'nhwc' or 'nchw')."""
    try:
        return _LAYER_BY_LAYOUT[layout](in_features, out_features)
    except KeyError:
        raise ValueError(f"unknown activation layout '{layout}'; known: {sorted(_LAYER_BY_LAYOUT)}") from None


def to_rows(x: torch.Tensor, layout: str) -> torch.Tensor:
    """Activations as a (rows, channels) matrix: one row per token or pixel."""
    if layout == "nchw":
        x = x.movedim(1, -1)
    return x.reshape(-1, x.shape[-1])
