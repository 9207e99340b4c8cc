"""Plain-text tables of results for the terminal (`snnet-ray results show|runs|pareto|compare`).

Columns are aligned, numbers right-aligned; anchors are marked ◆ and configs on the
accuracy-vs-GMACs Pareto frontier ★, as on the results page.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from snnet_ray.results.chart import pair_label
from snnet_ray.results.schema import Comparison, ConfigResult, ResultsTable, RunSummary

__all__ = ["format_comparison", "format_rows", "format_runs", "format_table"]

SORT_KEYS = {
    "id": lambda r: r.config_id,
    "gmacs": lambda r: (r.gmacs is None, r.gmacs or 0.0, r.config_id),
    "top1": lambda r: (r.top1 is None, -(r.top1 or 0.0), r.config_id),
}


def format_table(table: ResultsTable, sort: str = "gmacs") -> str:
    """The per-config table of one checkpoint with a header line and a legend."""
    if sort not in SORT_KEYS:
        raise ValueError(f"unknown sort {sort!r}: use one of {', '.join(SORT_KEYS)}")
    done = [r for r in table.rows if r.top1 is not None]
    where = table.checkpoint or "no checkpoint evaluated yet"
    if len(table.checkpoints) > 1:
        where += f" (checkpoints: {', '.join(table.checkpoints)})"
    head = f"run {table.run} · {where} · {len(done)} configs evaluated"
    if not table.rows:
        return head + "\n(no config described or evaluated yet)"
    lines = [head, "", format_rows(sorted(table.rows, key=SORT_KEYS[sort]), table.devices)]
    best = max(done, key=lambda r: r.top1, default=None)
    legend = "◆ anchor   ★ on the accuracy-vs-GMACs Pareto frontier"
    if best is not None:
        legend += f"   best: {best.label} {best.top1:.2f}%"
    lines += ["", legend]
    return "\n".join(lines)


def gmacs_digits(values: Iterable[float | None]) -> int:
    """Decimals that tell configs apart: tiny demo models cost a few MMACs, ImageNet ones GMACs."""
    largest = max((v for v in values if v is not None), default=1.0)
    return 2 if largest >= 1 else 3 if largest >= 0.1 else 4


def format_rows(rows: Sequence[ConfigResult], devices: Sequence[str] = ()) -> str:
    """Aligned rows: id, config, pair, GMACs, params, top-1, top-5, loss, shards, latency, frontier."""
    header = ["id", "config", "pair", "GMACs", "params(M)", "top-1", "top-5", "loss", "shards"]
    header += [f"{d}(ms)" for d in devices] + [""]
    right = {0, 3, 4, 5, 6, 7, 8, *range(9, 9 + len(devices))}
    digits = gmacs_digits(r.gmacs for r in rows)
    body = []
    for r in rows:
        body.append([
            str(r.config_id),
            ("◆ " if r.kind == "anchor" else "  ") + r.label,
            pair_label(r),
            _num(r.gmacs, digits),
            _num(r.params / 1e6 if r.params is not None else None, 2),
            _pct(r.top1),
            _pct(r.top5),
            _num(r.loss, 3),
            str(r.shards),
            *[_num(r.latency_ms.get(d), 2) for d in devices],
            "★" if r.frontier else "",
        ])
    return _grid(header, body, right)


def format_runs(runs: Sequence[RunSummary]) -> str:
    if not runs:
        return "(no run has reported yet)"
    header = ["run", "status", "trial", "created", "latest", "ckpts", "configs", "best top-1", "hyperparameters"]
    body = [
        [
            r.run,
            r.status or "",
            r.trial_id or "",
            _when(r.created),
            r.latest or "—",
            str(len(r.checkpoints)),
            str(r.configs),
            _pct(r.best_top1),
            _hyperparameters(r.hyperparameters),
        ]
        for r in runs
    ]
    return _grid(header, body, right={5, 6, 7})


def _when(ts: float | None) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else ""
    except (OverflowError, OSError, ValueError):
        return ""


def _hyperparameters(params: dict | None) -> str:
    if not params:
        return ""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def format_comparison(cmp: Comparison) -> str:
    """Frontier summaries of both runs, then per-config top-1 and delta (b - a)."""
    span = "no common range"
    if cmp.gmacs_range:
        span = f"{cmp.gmacs_range[0]:.2f}-{cmp.gmacs_range[1]:.2f} GMACs"
    header = ["run", "checkpoint", "configs", "min top-1", "mean top-1", "max top-1", "frontier", "AUC"]
    summary = [
        [s.run, s.checkpoint or "—", str(s.configs), _pct(s.min_top1), _pct(s.mean_top1), _pct(s.max_top1),
         str(s.frontier_size), _pct(s.frontier_auc)]
        for s in cmp.summaries
    ]
    rows = [
        [str(r.config_id), r.name, _num(r.gmacs, 2), _pct(r.top1_a), _pct(r.top1_b),
         "" if r.delta is None else f"{r.delta:+.2f}"]
        for r in cmp.rows
    ]
    return "\n".join([
        f"{cmp.run_b} vs {cmp.run_a}",
        "",
        _grid(header, summary, right={2, 3, 4, 5, 6, 7}),
        f"AUC: mean best top-1 within a GMACs budget, budgets over {span}",
        "",
        _grid(["id", "config", "GMACs", cmp.run_a, cmp.run_b, "Δ top-1"], rows, right={0, 2, 3, 4, 5}),
    ])


def _grid(header: list[str], body: list[list[str]], right: set[int]) -> str:
    # Nothing stored reaches the terminal as an escape sequence or a line break.
    header = [_printable(c) for c in header]
    body = [[_printable(c) for c in row] for row in body]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        cols = enumerate(zip(cells, widths))
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in cols)

    rule = "  ".join("─" * w for w in widths)
    return "\n".join([line(header).rstrip(), rule.rstrip(), *(line(r).rstrip() for r in body)])


def _printable(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}%"


def _num(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"
