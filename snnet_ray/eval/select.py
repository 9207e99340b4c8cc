"""Which configs a periodic evaluation scores: all, the anchors, a list, or a span of the GMACs range.

A sweep's ASHA compares trials on periodic evaluations. Scoring only the anchors makes the signal
blind to the stitch hyperparameters (the stitching-layer lr, the window, the sampler): two trials
that differ only there score the same. `span:N` scores the anchors plus N stitches spread evenly
over the family's GMACs range, so the objective (the area under the frontier) moves with them at a
fraction of the cost of scoring every config.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from snnet_ray.stitching.snnet import SNNet

__all__ = ["DEFAULT_SPAN", "check_eval_configs", "resolve_eval_configs", "spanning_configs"]

DEFAULT_SPAN = 8
_SPAN = re.compile(r"^span(?::(\d+))?$")


def check_eval_configs(spec: Any, where: str = "eval.configs") -> None:
    """Raise ValueError unless `spec` is 'all', 'anchors', 'span', 'span:N' (N >= 1) or a list of ids."""
    if isinstance(spec, list):
        if not spec or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in spec):
            raise ValueError(f"{where} as a list must hold config ids (integers >= 0), got {spec!r}")
        return
    if spec in ("all", "anchors"):
        return
    m = _SPAN.match(spec) if isinstance(spec, str) else None
    if m is None or (m.group(1) is not None and int(m.group(1)) < 1):
        raise ValueError(
            f"{where} must be 'all', 'anchors', 'span[:N]' (anchors + N stitches across the GMACs range) "
            f"or a list of config ids, got {spec!r}"
        )


def spanning_configs(model: SNNet, stitches: int = DEFAULT_SPAN) -> list[int]:
    """The anchors and `stitches` stitched configs spread evenly over the anchors' GMACs range.

    Budget k of `stitches` sits at lo + (k + 0.5) (hi - lo) / stitches; each takes the stitch with the
    nearest GMACs not taken yet (ties: the lower id). Sorted ids.
    """
    anchors = [c.id for c in model.configs if c.is_anchor]
    candidates = {c.id: model.cost(c.id).gmacs for c in model.configs if not c.is_anchor}
    gmacs = [model.cost(i).gmacs for i in anchors]
    lo, hi = min(gmacs), max(gmacs)
    chosen: list[int] = []
    for k in range(min(stitches, len(candidates))):
        target = lo + (k + 0.5) * (hi - lo) / stitches
        best = min(candidates, key=lambda i: (abs(candidates[i] - target), i))
        chosen.append(best)
        del candidates[best]
    return sorted(anchors + chosen)


def resolve_eval_configs(model: SNNet, spec: Any) -> list[int]:
    """Config ids named by an `eval.configs` value for this model."""
    check_eval_configs(spec)
    if spec == "all":
        return [c.id for c in model.configs]
    if spec == "anchors":
        return [c.id for c in model.configs if c.is_anchor]
    if isinstance(spec, str):
        n = _SPAN.match(spec).group(1)
        return spanning_configs(model, int(n) if n else DEFAULT_SPAN)
    return [int(c) for c in spec]
