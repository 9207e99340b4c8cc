"""Published SN-Net results as a results table, so a run can be put beside them.

    table = published_table("deit")                  # run 'published:deit', 71 rows
    compare_published(my_table, "deit")               # per-config deltas and both frontiers

Rows are named as `rule='paper'` names its configs ('0-1:0,0', '0-1:s2:1,3'), so a run trained
with the paper rule on the same anchors matches id for id; a run whose configs differ is refused
rather than compared config by config with the wrong partners.
"""

from __future__ import annotations

from snnet_ray.reference.published import PublishedResults, load_published
from snnet_ray.results.compare import compare_tables
from snnet_ray.results.pareto import pareto_front
from snnet_ray.results.schema import Comparison, ConfigResult, ResultsTable

__all__ = ["PUBLISHED_PREFIX", "compare_published", "published_name", "published_table"]

PUBLISHED_PREFIX = "published:"


def published_name(run: str) -> str | None:
    """'deit' for the pseudo-run 'published:deit', else None."""
    return run[len(PUBLISHED_PREFIX) :] if run.startswith(PUBLISHED_PREFIX) else None


def _config_name(pub: PublishedResults, i: int) -> str:
    c = pub.configs[i]
    if c.kind == "anchor":
        return f"anchor{c.anchors[0]}"
    where = "" if c.stage is None else f"s{c.stage}:"  # single-stage anchors (DeiT) have no stage
    return f"{'-'.join(map(str, c.anchors))}:{where}" + ";".join(f"{j},{l}" for j, l in c.positions)


def published_table(name: str) -> ResultsTable:
    """The published per-config results of release `name` as the table of run 'published:<name>'."""
    pub = load_published(name)
    rows = [
        ConfigResult(
            config_id=c.id,
            name=_config_name(pub, c.id),
            kind=c.kind,
            anchors=list(c.anchors),
            gmacs=c.gmacs,
            params=c.params,
            samples=50_000,
            top1=c.acc1,
            top5=c.acc5,
        )
        for c in pub.configs
    ]
    front = {id(r) for r in pareto_front(rows, "gmacs")}
    rows = [r.model_copy(update={"frontier": id(r) in front}) for r in rows]
    return ResultsTable(run=f"{PUBLISHED_PREFIX}{name}", checkpoint=pub.source.get("checkpoint"), rows=rows)


def compare_published(table: ResultsTable, name: str) -> Comparison:
    """A run beside the published results (a = published, b = the run), configs matched by id and name."""
    published = published_table(name)
    names = {r.config_id: r.name for r in published.rows}
    for row in table.rows:
        if row.config_id in names and row.name and row.name != names[row.config_id]:
            raise ValueError(
                f"run {table.run!r} does not have the published {name} layout: config {row.config_id} is "
                f"'{row.name}' there and '{names[row.config_id]}' published; train with "
                f"model.rule={load_published(name).space.get('rule', 'paper')} on the release's anchors to "
                "compare config by config"
            )
    return compare_tables(published, table)
