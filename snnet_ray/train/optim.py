"""Optimizer and learning-rate schedule of SN-Net training.

The paper trains with AdamW and a cosine schedule with linear warm-up (DeiT recipe: lr 5e-5 x
global_batch / 512, min lr 1e-6, weight decay 0.05). The Swin recipe trains the anchors' parameters
at 0.1x the base lr and the stitching layers at 1x, so parameters fall into groups:

    anchors.*                 anchor_lr_scale x lr
    stitch_layers.*           stitch_lr_scale x lr
    stitch_layers.*.lora_*    lora_lr_scale x lr   (SN-Netv2's low-rank stitching updates)
    anything else             1x lr

and each group splits into decay / no-decay: no weight decay on norms, biases and other 1-D
parameters, position embeddings and tokens (timm's convention, `model.no_weight_decay()`).

    optimizer = build_optimizer(snnet, OptimConfig(lr=1e-3, anchor_lr_scale=0.1))
    optimizer = build_optimizer(snnet, OptimConfig(name="lamb", lr=3e-5))   # SN-Netv2's recipe
    scheduler = build_scheduler(optimizer, OptimConfig(...), total_steps=10_000, warmup_steps=500)

The schedule is a per-optimizer-step `LambdaLR` (DeepSpeed steps it after each optimizer step
and saves its state in checkpoints); each group's lr follows `scale x schedule(step)`, so the lr
scales hold through warm-up and decay, and the minimum lr is `min_lr x scale`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["OptimConfig", "build_optimizer", "build_scheduler", "cosine_factor", "param_groups"]

OPTIMIZERS = ("adamw", "lamb")

# timm's names for parameters that take no weight decay (VisionTransformer/Swin `no_weight_decay`).
NO_DECAY_NAMES = frozenset(
    {
        "pos_embed",
        "cls_token",
        "dist_token",
        "reg_token",
        "absolute_pos_embed",
        "relative_position_bias_table",
        "pos_embed_window",
    }
)


@dataclass
class OptimConfig:
    """AdamW (or LAMB) with per-part lr scales, and its cosine schedule with linear warm-up."""

    name: str = "adamw"
    """'adamw' (SN-Net v1, DeiT) or 'lamb' (SN-Netv2's DeiT III recipe; timm's `Lamb`)."""
    lr: float = 5e-4
    """Base learning rate (the peak after warm-up)."""
    min_lr: float = 1e-6
    """End of the cosine decay (scaled per group like the lr)."""
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    anchor_lr_scale: float = 1.0
    """lr multiplier of the anchors' parameters (names starting with `anchors.`); Swin recipe: 0.1."""
    stitch_lr_scale: float = 1.0
    """lr multiplier of the stitching layers (names starting with `stitch_layers.`)."""
    lora_lr_scale: float = 1.0
    """lr multiplier of the LoRA factors of stitching layers (`stitch_layers.*.lora_a/lora_b`)."""
    warmup_lr: float = 1e-6
    """lr at the first warm-up step (scaled per group)."""

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # YAML gives lists
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optim.name must be one of {', '.join(OPTIMIZERS)}, got {self.name!r}")
        for name in ("lr", "anchor_lr_scale", "stitch_lr_scale", "lora_lr_scale"):
            if getattr(self, name) <= 0:
                raise ValueError(f"optim.{name} must be > 0, got {getattr(self, name)}")
        for name in ("min_lr", "weight_decay", "warmup_lr"):
            if getattr(self, name) < 0:
                raise ValueError(f"optim.{name} must be >= 0, got {getattr(self, name)}")
        if self.min_lr > self.lr:
            raise ValueError(f"optim.min_lr={self.min_lr} exceeds optim.lr={self.lr}")


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Parameter groups: (anchors | stitch_layers | lora | other) x (decay | no decay), empty ones dropped.

    Frozen parameters (`requires_grad=False`, e.g. a LoRA stitching layer's least-squares base)
    are left out.

    Each group carries `name` and `lr_scale` for logging; `lr` is already scaled.
    """
    skip = _no_decay_names(model)
    scales = {
        "anchors": cfg.anchor_lr_scale,
        "stitch_layers": cfg.stitch_lr_scale,
        "lora": cfg.lora_lr_scale,
        "other": 1.0,
    }
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = name.split(".", 1)[0]
        part = part if part in ("anchors", "stitch_layers") else "other"
        leaf = name.rsplit(".", 1)[-1]
        if part == "stitch_layers" and leaf.startswith("lora_"):
            part = "lora"
        decay = not (p.ndim <= 1 or name.endswith(".bias") or leaf in NO_DECAY_NAMES or name in skip)
        groups.setdefault((part, decay), []).append(p)
    return [
        {
            "name": f"{part}{'' if decay else '_no_decay'}",
            "params": params,
            "lr": cfg.lr * scales[part],
            "lr_scale": scales[part],
            "weight_decay": cfg.weight_decay if decay else 0.0,
        }
        for (part, decay), params in sorted(groups.items(), key=lambda kv: (kv[0][0], not kv[0][1]))
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """`cfg.name`'s optimizer (AdamW or LAMB) over `param_groups(model, cfg)`.

    AdamW is fused (one kernel per step, and the step count stays a device tensor: torch's
    per-tensor AdamW reads it back with `.item()` every step).
    """
    groups = param_groups(model, cfg)
    if cfg.name == "lamb":
        from timm.optim import Lamb

        return Lamb(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=True)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int, warmup_steps: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then cosine decay to `min_lr`, per optimizer step; every group keeps its scale."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} must lie in 0..total_steps={total_steps}")

    def factor(step: int) -> float:
        return cosine_factor(step, cfg, total_steps, warmup_steps)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def cosine_factor(step: int, cfg: OptimConfig, total_steps: int, warmup_steps: int = 0) -> float:
    """lr / cfg.lr at optimizer step `step`: warm-up from warmup_lr, cosine from lr down to min_lr."""
    if step < warmup_steps:
        start = min(cfg.warmup_lr, cfg.lr) / cfg.lr
        return start + (1 - start) * step / warmup_steps
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    floor = cfg.min_lr / cfg.lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def _no_decay_names(model: nn.Module) -> set[str]:
    """Full names a module (or any submodule, e.g. a timm anchor) lists in `no_weight_decay()`."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        fn = getattr(module, "no_weight_decay", None)
        if callable(fn):
            names.update(_join(prefix, n) for n in _as_iterable(fn()))
    return names


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _as_iterable(names: Iterable[str] | None) -> Iterable[str]:
    return names or ()
