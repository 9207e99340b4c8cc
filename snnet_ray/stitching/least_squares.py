"""Least-squares initialisation of stitching layers (SN-Net §3.2).

For a stitch (j, l), run one batch through both anchors, take X = the front's output after
block j and Y = the back's input of block l (its embedding output when l = 0), tokens or
pixels flattened to rows, and solve min ||[X, 1] W - Y|| for weight and bias. Positions that
share a layer average their solutions. The solve runs in float64 on the CPU so that it is
deterministic: every rank that feeds the same batch gets the same weights.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import TYPE_CHECKING

import torch

from snnet_ray.stitching.layers import to_rows

if TYPE_CHECKING:
    from snnet_ray.stitching.snnet import SNNet

__all__ = ["least_squares_init", "solve_least_squares"]

log = logging.getLogger(__name__)


def solve_least_squares(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight (d_out, d_in) and bias (d_out) minimising ||x W^T + b - y|| over rows of x and y."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y need the same number of rows, got {x.shape[0]} and {y.shape[0]}")
    x = x.detach().to("cpu", torch.float64)
    y = y.detach().to("cpu", torch.float64)
    x1 = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
    # gelsd: SVD-based, handles rank-deficient activations (e.g. dead channels) gracefully.
    solution = torch.linalg.lstsq(x1, y, driver="gelsd").solution
    return solution[:-1].T.contiguous(), solution[-1].contiguous()


@torch.no_grad()
def least_squares_init(model: SNNet, images: torch.Tensor) -> dict[int, float]:
    """Initialise every stitching layer of `model` from one batch of images.

    Returns the relative residual ||XW + b - Y|| / ||Y|| of each layer's averaged solution,
    averaged over its positions (0 is a perfect fit), for logging.
    """
    was_training = model.training
    model.eval()
    by_pair_stage: dict[tuple[int, int, int], list] = defaultdict(list)
    for spec in model.layer_specs:
        by_pair_stage[(spec.front, spec.back, spec.stage)].append(spec)

    residuals: dict[int, float] = {}
    cache: dict[tuple[int, int], tuple[torch.Tensor, list[torch.Tensor]]] = {}
    for (front, back, stage), specs in by_pair_stage.items():
        # Only this pair's features are kept: memory stays at two anchors' activations.
        cache = {k: v for k, v in cache.items() if k in ((front, stage), (back, stage))}
        for a in (front, back):
            if (a, stage) not in cache:
                cache[(a, stage)] = model.anchors[a].stage_features(images, stage)
        _, front_out = cache[(front, stage)]
        back_in, back_out = cache[(back, stage)]
        # The layouts differ across families (ResNet -> Swin: NCHW front, NHWC back).
        front_layout, back_layout = model.anchors[front].layout, model.anchors[back].layout
        for spec in specs:
            rows = [
                (to_rows(front_out[j], front_layout), to_rows(back_in if l == 0 else back_out[l - 1], back_layout))
                for j, l in spec.positions
            ]
            solutions = [solve_least_squares(x, y) for x, y in rows]
            w = torch.stack([s[0] for s in solutions]).mean(0)
            b = torch.stack([s[1] for s in solutions]).mean(0)
            model.stitch_layers[spec.index].load_solution(w, b)
            residuals[spec.index] = sum(_relative_residual(x, y, w, b) for x, y in rows) / len(rows)
        log.info(
            "least-squares init: anchors %d->%d stage %d, %d layers, mean relative residual %.3f",
            front,
            back,
            stage,
            len(specs),
            sum(residuals[s.index] for s in specs) / len(specs),
        )
    model.train(was_training)
    return residuals


def _relative_residual(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> float:
    x, y = x.to("cpu", torch.float64), y.to("cpu", torch.float64)
    return float((x @ w.T + b - y).norm() / y.norm().clamp_min(1e-12))
