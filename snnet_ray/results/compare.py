"""Run-vs-run comparison of two SN-Net families.

Two runs (e.g. two Tune trials, or nearest vs non-nearest stitching) are compared config by config
(matched by config id) and as wholes: min/mean/max top-1 and the normalised area under each
frontier (`frontier_auc`) over the GMACs range both runs cover, from the dearer of the two
cheapest configs to the dearer of the two most expensive ones, so neither run's curve is
extrapolated below its cheapest config.
"""

from __future__ import annotations

from snnet_ray.results.pareto import frontier_auc, pareto_front
from snnet_ray.results.schema import ComparedConfig, Comparison, FrontierSummary, ResultsTable

__all__ = ["compare_tables", "summarize"]


def compare_tables(a: ResultsTable, b: ResultsTable) -> Comparison:
    """Per-config deltas (b - a) and a frontier summary of each run over a common GMACs range."""
    fronts = [pareto_front(t.rows, "gmacs") for t in (a, b)]
    gmacs_range = None
    if all(fronts):
        lo = max(f[0].gmacs for f in fronts)
        hi = max(f[-1].gmacs for f in fronts)
        gmacs_range = (lo, max(lo, hi))
    rows_b = {r.config_id: r for r in b.rows}
    rows = []
    for ra in a.rows:
        rb = rows_b.pop(ra.config_id, None)
        top1_b = rb.top1 if rb else None
        delta = top1_b - ra.top1 if top1_b is not None and ra.top1 is not None else None
        rows.append(ComparedConfig(
            config_id=ra.config_id, name=ra.name or (rb.name if rb else ""), kind=ra.kind,
            gmacs=ra.gmacs if ra.gmacs is not None else (rb.gmacs if rb else None),
            top1_a=ra.top1, top1_b=top1_b, delta=delta,
        ))
    for rb in rows_b.values():
        rows.append(ComparedConfig(config_id=rb.config_id, name=rb.name, kind=rb.kind, gmacs=rb.gmacs,
                                   top1_b=rb.top1))
    rows.sort(key=lambda r: r.config_id)
    return Comparison(
        run_a=a.run,
        run_b=b.run,
        gmacs_range=gmacs_range,
        summaries=[summarize(t, gmacs_range) for t in (a, b)],
        rows=rows,
    )


def summarize(table: ResultsTable, gmacs_range: tuple[float, float] | None = None) -> FrontierSummary:
    """Min/mean/max top-1 of the evaluated configs, frontier size and (given a range) its AUC."""
    top1 = [r.top1 for r in table.rows if r.top1 is not None]
    auc = frontier_auc(table.rows, *gmacs_range) if gmacs_range else None
    return FrontierSummary(
        run=table.run,
        checkpoint=table.checkpoint,
        configs=len(top1),
        min_top1=min(top1, default=None),
        mean_top1=sum(top1) / len(top1) if top1 else None,
        max_top1=max(top1, default=None),
        frontier_size=len(pareto_front(table.rows, "gmacs")),
        frontier_auc=auc,
    )
