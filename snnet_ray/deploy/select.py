"""Pick the config to deploy: the most accurate config of a run under a GMACs or latency budget.

One trained SN-Net holds many accuracy/cost trade-offs (SN-Net, Pan et al. 2023); deployment picks
the one that fits the target's budget. The results service knows every config's exact top-1,
GMACs and measured latency, so selection is a query to it (`best`); this module checks the budget
first and, when nothing fits, says what the cheapest config costs.
"""

from __future__ import annotations

import os
from typing import Any

from snnet_ray.results.schema import ConfigResult, ResultsNotFound

__all__ = ["checkpoint_path", "select_config"]

# Keys of a run's stored experiment that name its saved SN-Net (`snnet-ray eval` stores model_dir).
CHECKPOINT_KEYS = ("model_dir", "checkpoint", "checkpoint_path")


def select_config(
    results: Any,
    run: str,
    *,
    max_gmacs: float | None = None,
    max_latency_ms: float | None = None,
    device: str | None = None,
    checkpoint: str | None = None,
) -> ConfigResult:
    """The most accurate evaluated config of `run` within the budget(s).

    Args:
        results: a results client (`snnet_ray.results.connect(...)`) or its URL / database URL.
        max_gmacs: GMACs budget (multiply-adds of one image at the anchors' input size).
        max_latency_ms: latency budget in ms on `device` (needed when latency was measured on several).
        checkpoint: the evaluated checkpoint to choose from (default: the run's latest).

    Raises ValueError without a budget and ResultsNotFound (a ValueError) when no config fits,
    naming the cheapest config and its cost.
    """
    if max_gmacs is None and max_latency_ms is None:
        raise ValueError("give a budget: max_gmacs (--max-gmacs G) and/or max_latency_ms (--max-latency-ms T)")
    for name, value in (("max_gmacs", max_gmacs), ("max_latency_ms", max_latency_ms)):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be a positive number, got {value}")
    if device is not None and max_latency_ms is None:
        raise ValueError(f"device {device!r} only applies to a latency budget: give max_latency_ms too")
    if isinstance(results, (str, os.PathLike)):
        from snnet_ray.results import connect

        results = connect(results)
    try:
        return results.best(run, max_gmacs=max_gmacs, max_latency_ms=max_latency_ms, device=device,
                            checkpoint=checkpoint)
    except ResultsNotFound as err:
        hint = _cheapest_hint(results, run, checkpoint, max_gmacs, max_latency_ms, device)
        if hint is None:
            raise
        raise ResultsNotFound(f"no config of run {run!r} fits {hint}") from err


def checkpoint_path(results: Any, run: str) -> str:
    """The saved SN-Net a run's stored experiment names (see `CHECKPOINT_KEYS`); ValueError if none."""
    experiment = results.get_run(run).experiment or {}
    for key in CHECKPOINT_KEYS:
        if isinstance(experiment.get(key), str) and experiment[key]:
            return experiment[key]
    raise ValueError(
        f"run {run!r} stores no checkpoint path in the results service (its experiment has none of "
        f"{', '.join(CHECKPOINT_KEYS)}): pass --checkpoint PATH (a saved SN-Net or training checkpoint)"
    )


def _cheapest_hint(
    results: Any,
    run: str,
    checkpoint: str | None,
    max_gmacs: float | None,
    max_latency_ms: float | None,
    device: str | None,
) -> str | None:
    """'the budget: the cheapest config is ...' for the budget nothing fits, or None to keep the service's error."""
    try:
        rows = [r for r in results.table(run, checkpoint).rows if r.top1 is not None]
    except ValueError:
        return None
    for by, limit, unit in (("gmacs", max_gmacs, "GMACs"), ("latency", max_latency_ms, "ms")):
        if limit is None:
            continue
        costed = [r for r in rows if r.cost(by, device) is not None]
        if costed and all(r.cost(by, device) > limit for r in costed):
            cheapest = min(costed, key=lambda r: (r.cost(by, device), r.config_id))
            where = f" on {device}" if by == "latency" and device else ""
            return (
                f"{by} <= {limit:g} {unit}{where}: the cheapest evaluated config is {cheapest.config_id} "
                f"({cheapest.label}) at {cheapest.cost(by, device):.4g} {unit}; raise the budget to at least that"
            )
    return None
