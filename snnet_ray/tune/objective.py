"""One number for a whole SN-Net family: the sweep objective.

A trained SN-Net is a family of configs, each a (GMACs, top-1) point. The sweep ranks families by
the normalised area under their accuracy-vs-GMACs Pareto frontier over a GMACs range [lo, hi]:

    best(b)   = max { top1(c) : config c with gmacs(c) <= b }      (0 when no config fits budget b)
    objective = 1 / (hi - lo) * integral_lo^hi best(b) db           (in top-1 %)

`best` is a step function of the budget b that rises at each frontier config, so the integral is a
sum of rectangles (`snnet_ray.results.pareto.frontier_auc` over [max(lo, cheapest config), hi]).
The objective is the mean, over budgets spread evenly from lo to hi, of the best top-1 a budget buys:
it rewards accurate anchors and stitches that fill the gaps between them. When hi == lo it is best(lo).

The range is the anchors' GMACs range: from the smallest anchor's GMACs to the largest anchor's.
When a sweep varies the anchors ([Ti, S] vs [S, B] vs [Ti, S, B]), the range runs from the smallest
anchor of any set to the largest of any set, the same for every trial, so families are compared on
the same budgets: a family without configs for the cheapest budgets scores 0 there, and one without
the dearest keeps its best top-1 there. Periodic evaluations (a few shards, often anchors only) give
the intermediate values that ASHA compares; the final value uses the final evaluation of every config.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from snnet_ray.results.pareto import frontier_auc, pareto_front
from snnet_ray.results.schema import ConfigResult

__all__ = ["OBJECTIVE", "family_summary", "frontier_objective"]

OBJECTIVE = "objective"
"""The metric name Tune optimises (mode max)."""


def frontier_objective(rows: Sequence[ConfigResult], gmacs_range: tuple[float, float]) -> float | None:
    """Normalised area under the best-top-1-within-budget curve over `gmacs_range` (None: nothing evaluated)."""
    lo, hi = gmacs_range
    if hi < lo:
        raise ValueError(f"GMACs range must have lo <= hi, got {gmacs_range}")
    front = pareto_front([r for r in rows if r.top1 is not None], "gmacs")
    if not front:
        return None
    cheapest = front[0].gmacs
    if hi - lo <= 1e-12 * max(hi, 1e-12):
        return max((r.top1 for r in front if r.gmacs <= hi * (1 + 1e-12)), default=0.0)
    if cheapest >= hi:
        return 0.0
    start = max(lo, cheapest)
    return frontier_auc(front, start, hi) * (hi - start) / (hi - lo)


def family_summary(rows: Sequence[ConfigResult], gmacs_range: tuple[float, float]) -> dict[str, Any]:
    """The objective and min/mean/max top-1 (%) of the evaluated configs, and how many there are."""
    top1 = [r.top1 for r in rows if r.top1 is not None]
    return {
        OBJECTIVE: frontier_objective(rows, gmacs_range),
        "top1_min": min(top1, default=None),
        "top1_mean": sum(top1) / len(top1) if top1 else None,
        "top1_max": max(top1, default=None),
        "configs_evaluated": len(top1),
    }
