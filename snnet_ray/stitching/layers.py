"""Stitching layers: small linear maps from a front anchor's activation to a back anchor's.

Token (B, N, C) and NHWC (B, H, W, C) activations use a `Linear` over channels, applied to
every token or pixel (the class token included); NCHW (CNN) activations use a 1x1 `Conv2d`.
Both start from a least-squares solution (`load_solution`) before training.

SN-Netv2 (arXiv 2307.00154) trains a low-rank update over that solution instead of the whole
matrix: `LoRAStitch` keeps the least-squares weight frozen and learns `B A` of rank `lora_r`
(and the bias); `fold()` merges it back into a plain `LinearStitch` for export and serving.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ConvStitch", "LinearStitch", "LoRAStitch", "fold_stitching_layer", "make_stitching_layer", "to_rows"]


class LinearStitch(nn.Linear):
    """Stitching layer for token and NHWC layouts: `y = x W^T + b` over the last dimension."""

    def load_solution(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Set weight (out, in) and bias (out) from a least-squares solution."""
        with torch.no_grad():
            self.weight.copy_(weight.to(self.weight))
            self.bias.copy_(bias.to(self.bias))


class LoRAStitch(LinearStitch):
    """SN-Netv2 stitching layer: `y = x (W0 + s B A)^T + b`, W0 frozen, A (r, in) and B (out, r) trained.

    W0 holds the least-squares solution and does not train (`requires_grad=False`); the bias and
    the low-rank factors do. B starts at zero, so the layer starts exactly at the least-squares
    solution; A starts as a Linear weight would (Kaiming uniform). `s = lora_alpha / lora_r`
    (the official configs: r = 64, alpha = 1). The low-rank branch runs as two thin matmuls, so
    its MACs and parameters count in the config's cost until the layer is folded.
    """

    def __init__(self, in_features: int, out_features: int, lora_r: int, lora_alpha: float = 1.0) -> None:
        if lora_r < 1:
            raise ValueError(f"lora_r must be >= 1 for a LoRA stitching layer, got {lora_r}")
        if not (math.isfinite(lora_alpha) and lora_alpha > 0):
            raise ValueError(f"lora_alpha must be positive and finite, got {lora_alpha}")
        super().__init__(in_features, out_features)
        self.lora_r, self.lora_alpha = int(lora_r), float(lora_alpha)
        self.scaling = self.lora_alpha / self.lora_r
        device, dtype = self.weight.device, self.weight.dtype
        self.lora_a = nn.Parameter(torch.empty(self.lora_r, in_features, device=device, dtype=dtype))
        self.lora_b = nn.Parameter(torch.zeros(out_features, self.lora_r, device=device, dtype=dtype))
        self.weight.requires_grad_(False)
        if device.type != "meta":
            nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + F.linear(F.linear(x, self.lora_a), self.lora_b) * self.scaling

    def load_solution(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Set the frozen base to a least-squares solution and restart the update from zero."""
        super().load_solution(weight, bias)
        with torch.no_grad():
            self.lora_b.zero_()

    def merged_weight(self) -> torch.Tensor:
        """W0 + s B A: the weight of the equivalent plain linear layer."""
        return self.weight + (self.lora_b @ self.lora_a) * self.scaling

    def fold(self) -> LinearStitch:
        """A plain `LinearStitch` computing the same function (for export and serving)."""
        plain = LinearStitch(self.in_features, self.out_features, device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            plain.weight.copy_(self.merged_weight())
            plain.bias.copy_(self.bias)
        return plain.train(self.training)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, lora_r={self.lora_r}, lora_alpha={self.lora_alpha:g}"


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


def make_stitching_layer(
    layout: str,
    in_features: int,
    out_features: int,
    out_layout: str | None = None,
    lora_r: int = 0,
    lora_alpha: float = 1.0,
) -> nn.Module:
    """The stitching layer for an activation layout ('tokens', 'nhwc' or 'nchw').

    `out_layout` is the back anchor's layout when it differs (cross-family): NCHW -> NHWC only.
    `lora_r > 0` gives SN-Netv2's `LoRAStitch` (token and NHWC layouts).
    """
    if layout not in _LAYER_BY_LAYOUT:
        raise ValueError(f"unknown activation layout '{layout}'; known: {sorted(_LAYER_BY_LAYOUT)}")
    if lora_r < 0:
        raise ValueError(f"lora_r must be >= 0 (0: plain stitching layers), got {lora_r}")
    same = out_layout is None or out_layout == layout
    if lora_r > 0:
        if _LAYER_BY_LAYOUT[layout] is not LinearStitch or not same:
            raise ValueError(f"LoRA stitching layers need token or NHWC activations, not '{layout}'; set lora_r=0")
        return LoRAStitch(in_features, out_features, lora_r, lora_alpha)
    if same:
        return _LAYER_BY_LAYOUT[layout](in_features, out_features)
    if (layout, out_layout) == ("nchw", "nhwc"):
        return ConvStitch(in_features, out_features, channels_last_out=True)
    raise ValueError(
        f"no stitching layer from '{layout}' to '{out_layout}' activations; across families SN-Net "
        "stitches a CNN front (nchw) into a Swin back (nhwc)"
    )


def fold_stitching_layer(layer: nn.Module) -> nn.Module:
    """A plain copy of a stitching layer: LoRA layers folded into a `LinearStitch`, others copied."""
    return layer.fold() if isinstance(layer, LoRAStitch) else copy.deepcopy(layer)


def to_rows(x: torch.Tensor, layout: str) -> torch.Tensor:
    """Activations as a (rows, channels) matrix: one row per token or pixel."""
    if layout == "nchw":
        x = x.movedim(1, -1)
    return x.reshape(-1, x.shape[-1])
