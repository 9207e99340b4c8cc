"""Pareto frontier of an SN-Net family, and the best config under a budget.

One trained SN-Net holds many accuracy/cost trade-offs. A config is on the *frontier* when no other
config is at least as accurate and at least as cheap, and strictly better in one of them. The cost
is GMACs (the paper's FLOPs axis) or measured latency on one device. `frontier_auc` condenses a
frontier to one number to compare runs: the mean, over budgets spread evenly in a GMACs range, of
the best top-1 affordable within the budget (the normalised area under the frontier's step curve).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from snnet_ray.results.schema import ConfigResult, ResultsNotFound

__all__ = ["COST_AXES", "best_under_budget", "frontier_auc", "pareto_front"]

COST_AXES = ("gmacs", "latency")


def pareto_front(
    rows: Sequence[ConfigResult], by: str = "gmacs", device: str | None = None
) -> list[ConfigResult]:
    """Rows on the max-top-1 / min-cost frontier, cheapest first (rows without a cost are left out)."""
    _check_axis(by, rows, device)
    costed = [(r.cost(by, device), r) for r in rows if r.top1 is not None and r.cost(by, device) is not None]
    # Cheapest first; among equal costs the most accurate first, so it shadows the others.
    costed.sort(key=lambda cr: (cr[0], -cr[1].top1, cr[1].config_id))
    front: list[ConfigResult] = []
    best = -1.0
    for _, row in costed:
        if row.top1 > best:
            front.append(row)
            best = row.top1
    return front


def best_under_budget(
    rows: Sequence[ConfigResult],
    max_gmacs: float | None = None,
    max_latency_ms: float | None = None,
    device: str | None = None,
) -> ConfigResult:
    """The most accurate config within every given budget (ties: the cheaper one).

    Raises ResultsNotFound when nothing fits, naming the cheapest config so the caller can adjust.
    """
    if max_gmacs is None and max_latency_ms is None:
        raise ValueError("give a budget: max_gmacs and/or max_latency_ms")
    if max_latency_ms is not None:
        _check_axis("latency", rows, device)
    fits = [r for r in rows if r.top1 is not None]
    for by, limit in (("gmacs", max_gmacs), ("latency", max_latency_ms)):
        if limit is None:
            continue
        costed = [r for r in fits if r.cost(by, device) is not None]
        fits = [r for r in costed if r.cost(by, device) <= limit]
        if not fits:
            unit = "GMACs" if by == "gmacs" else "ms"
            cheapest = min((r.cost(by, device) for r in costed), default=None)
            hint = "" if cheapest is None else f"; the cheapest evaluated config costs {cheapest:.4g} {unit}"
            raise ResultsNotFound(f"no evaluated config fits {by} <= {limit:g} {unit}{hint}")
    key_by = "gmacs" if max_gmacs is not None else "latency"
    return max(fits, key=lambda r: (r.top1, -(r.cost(key_by, device) or 0.0), -r.config_id))


def frontier_auc(rows: Sequence[ConfigResult], lo: float, hi: float) -> float | None:
    """Mean best top-1 within a GMACs budget, over budgets uniform in [lo, hi].

    The best-within-budget curve is a step function of the budget; below the cheapest config it is
    undefined, so `lo` must be at least this run's cheapest GMACs (None otherwise).
    """
    front = pareto_front(rows, "gmacs")
    if not front or lo < front[0].gmacs - 1e-12 or hi < lo:
        return None
    if hi - lo <= 1e-12:
        return _best_at(front, lo)
    area = 0.0
    # Integrate the step function: between consecutive frontier costs the best top-1 is constant.
    edges = [lo] + [r.gmacs for r in front if lo < r.gmacs < hi] + [hi]
    for left, right in itertools.pairwise(edges):
        area += _best_at(front, left) * (right - left)
    return area / (hi - lo)


def _best_at(front: Sequence[ConfigResult], budget: float) -> float:
    return max(r.top1 for r in front if r.gmacs <= budget + 1e-12)


def _check_axis(by: str, rows: Sequence[ConfigResult], device: str | None) -> None:
    if by not in COST_AXES:
        raise ValueError(f"unknown cost axis {by!r}: use one of {', '.join(COST_AXES)}")
    if by != "latency":
        return
    devices = sorted({d for r in rows for d in r.latency_ms})
    if device is not None and device not in devices:
        known = ", ".join(devices) or "none"
        raise ResultsNotFound(f"no latency recorded on device {device!r} (recorded: {known})")
    if device is None and len(devices) > 1:
        raise ValueError(f"latency was measured on several devices ({', '.join(devices)}): pick one")
    if device is None and not devices:
        raise ResultsNotFound("no latency has been recorded for this run: put_latency first")
