"""HTML pages of the results service: the run list, one run, and run-vs-run.

Pages are rendered on the server with the chart inline (see chart.py) and need nothing from the
network: the stylesheet and a small optional script (sortable table, point/row highlighting and a
GMACs budget slider) are served from the package's `static/` folder. `base` is the URL prefix the
app is mounted under (Ray Serve's route prefix), so links work standalone and behind Serve.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from html import escape
from urllib.parse import quote, urlencode

from snnet_ray.results.chart import PALETTE, Series, pair_label, render_chart
from snnet_ray.results.schema import Comparison, ResultsTable, RunSummary
from snnet_ray.results.text import gmacs_digits

__all__ = ["compare_page", "index_page", "run_page"]


def index_page(runs: Sequence[RunSummary], base: str = "") -> str:
    """Every run with its latest evaluation, and a form to compare two runs."""
    if runs:
        body_rows = []
        for r in runs:
            link = f'{base}/runs/{quote(r.run, safe="")}'
            body_rows.append(
                "<tr>"
                f'<td><a href="{link}">{escape(r.run)}</a></td>'
                f"<td>{_status(r.status)}</td>"
                f"<td>{escape(r.trial_id or '—')}</td>"
                f"<td>{_when(r.created)}</td>"
                f"<td>{escape(r.latest or '—')}</td>"
                f'<td class="num">{len(r.checkpoints)}</td>'
                f'<td class="num">{r.configs}</td>'
                f'<td class="num">{_pct(r.best_top1)}</td>'
                "</tr>"
            )
        table = (
            '<table class="results"><thead><tr><th>run</th><th>status</th><th>trial</th><th>created</th>'
            '<th>latest checkpoint</th><th class="num">checkpoints</th><th class="num">configs</th>'
            '<th class="num">best top-1</th></tr></thead><tbody>' + "".join(body_rows) + "</tbody></table>"
        )
    else:
        table = ('<p class="empty">No run has reported yet. Evaluation workers send their counts to '
                 f"<code>{escape(base)}/api/evals</code>.</p>")
    compare = ""
    if len(runs) >= 2:
        compare = (
            f'<form class="compare" action="{base}/compare" method="get"><h2>Compare two runs</h2>'
            f'<select name="a">{_options(runs, 1)}</select> <span>vs</span> '
            f'<select name="b">{_options(runs, 0)}</select> '
            '<button type="submit">Compare</button></form>'
        )
    from snnet_ray.reference.published import list_published

    published = " · ".join(f'<a href="{base}/published/{quote(n)}">{escape(n)}</a>' for n in list_published())
    published = f'<p class="note">Published SN-Net results: {published} (add <code>?run=RUN</code> to compare).</p>'
    return _layout("Runs", base, f"<h1>Runs</h1>{table}{compare}{published}", crumbs=[])


def run_page(table: ResultsTable, info: RunSummary | None = None, base: str = "") -> str:
    """One run: summary cards, the accuracy-vs-GMACs chart, a budget slider and the table."""
    run_q = quote(table.run, safe="")
    rows = table.rows
    done = [r for r in rows if r.top1 is not None]
    best = max(done, key=lambda r: r.top1, default=None)
    costs = [r.gmacs for r in done if r.gmacs is not None]
    d = gmacs_digits(costs)
    cards = [
        ("configs evaluated", f"{len(done)}" + (f" / {len(rows)}" if len(rows) != len(done) else "")),
        ("best top-1", f"{_pct(best.top1)}" if best else "—", best.label if best else ""),
        ("GMACs range", f"{min(costs):.{d}f} – {max(costs):.{d}f}" if costs else "—"),
        ("on the frontier", f"{sum(r.frontier for r in rows)}"),
        ("samples / config", f"{max((r.samples for r in done), default=0):,}"),
    ]
    cards_html = '<div class="cards">' + "".join(
        f'<div class="card"><div class="k">{escape(c[0])}</div><div class="v">{escape(c[1])}</div>'
        + (f'<div class="s">{escape(c[2])}</div>' if len(c) > 2 and c[2] else "") + "</div>"
        for c in cards
    ) + "</div>"

    checkpoints = ""
    if table.checkpoints:
        links = []
        for ck in table.checkpoints:
            cls = ' class="current"' if ck == table.checkpoint else ""
            href = f"{base}/runs/{run_q}?{urlencode({'checkpoint': ck})}"
            links.append(f'<a{cls} href="{href}">{escape(ck)}</a>')
        checkpoints = '<nav class="checkpoints"><span>checkpoint</span>' + "".join(links) + "</nav>"

    chart = render_chart([Series(table.run, rows)], title=None)
    slider = ""
    if len(costs) >= 2:
        slider = (
            '<div class="budget" hidden><label for="budget">GMACs budget</label> '
            f'<input id="budget" type="range" min="{min(costs):.4f}" max="{max(costs):.4f}" '
            f'step="{(max(costs) - min(costs)) / 200:.6f}" value="{max(costs):.4f}"> '
            '<output id="budget-out"></output></div>'
        )
    data = json.dumps([
        {"id": r.config_id, "name": r.label, "gmacs": r.gmacs, "top1": r.top1} for r in done
    ])
    api = f"{base}/api/runs/{run_q}"
    ck = {"checkpoint": table.checkpoint} if table.checkpoint else {}
    links = (
        f'<p class="links">Download this table: '
        f'<a href="{api}/export?{urlencode({**ck, "format": "csv"})}">CSV</a>'
        f' · <a href="{api}/export?{urlencode({**ck, "format": "parquet"})}">Parquet</a>'
        f' · <a href="{api}/table?{urlencode(ck)}">JSON</a></p>'
    )
    body = (
        f'<h1>{escape(table.run)} {_status(info.status if info else None)}</h1>'
        f"{_run_meta(info)}{checkpoints}{cards_html}"
        f'<section class="plot">{chart}{slider}</section>'
        f"{_config_table(table)}{links}"
        f'<script type="application/json" id="points">{_json_for_script(data)}</script>'
    )
    return _layout(table.run, base, body, crumbs=[(table.run, None)])


def compare_page(cmp: Comparison, a: ResultsTable, b: ResultsTable, base: str = "") -> str:
    """Both runs on one chart, a summary per run, and per-config deltas."""
    chart = render_chart([Series(a.run, a.rows, PALETTE[0]), Series(b.run, b.rows, PALETTE[1])])
    lo_hi = (f"{cmp.gmacs_range[0]:.2f} – {cmp.gmacs_range[1]:.2f} GMACs" if cmp.gmacs_range else "—")
    summary_rows = "".join(
        f"<tr><td>{escape(s.run)}</td><td>{escape(s.checkpoint or '—')}</td>"
        f'<td class="num">{s.configs}</td><td class="num">{_pct(s.min_top1)}</td>'
        f'<td class="num">{_pct(s.mean_top1)}</td><td class="num">{_pct(s.max_top1)}</td>'
        f'<td class="num">{s.frontier_size}</td><td class="num">{_pct(s.frontier_auc)}</td></tr>'
        for s in cmp.summaries
    )
    summary = (
        '<table class="results"><thead><tr><th>run</th><th>checkpoint</th><th class="num">configs</th>'
        '<th class="num">min top-1</th><th class="num">mean top-1</th><th class="num">max top-1</th>'
        '<th class="num">frontier</th><th class="num">frontier AUC</th></tr></thead>'
        f"<tbody>{summary_rows}</tbody></table>"
        f'<p class="note">Frontier AUC: the mean, over GMACs budgets in {lo_hi}, of the best top-1 '
        "within the budget.</p>"
    )
    delta_rows = "".join(
        f'<tr class="{r.kind}"><td class="num">{r.config_id}</td><td>{escape(r.name)}</td>'
        f'<td class="num">{_num(r.gmacs, 2)}</td><td class="num">{_pct(r.top1_a)}</td>'
        f'<td class="num">{_pct(r.top1_b)}</td>'
        f'<td class="num {_sign(r.delta)}">{"" if r.delta is None else f"{r.delta:+.2f}"}</td></tr>'
        for r in cmp.rows
    )
    deltas = (
        '<table class="results sortable"><thead><tr><th class="num">id</th><th>config</th>'
        f'<th class="num">GMACs</th><th class="num">{escape(cmp.run_a)}</th>'
        f'<th class="num">{escape(cmp.run_b)}</th><th class="num">Δ top-1</th></tr></thead>'
        f"<tbody>{delta_rows}</tbody></table>"
    )
    title = f"{cmp.run_a} vs {cmp.run_b}"
    body = f"<h1>{escape(title)}</h1>{summary}<section class=\"plot\">{chart}</section>{deltas}"
    return _layout(title, base, body, crumbs=[(title, None)])


# ---- helpers -------------------------------------------------------------------------------


def _config_table(table: ResultsTable) -> str:
    devices = table.devices
    head = (
        '<th class="num">id</th><th>config</th><th>pair</th><th class="num">GMACs</th>'
        '<th class="num">params (M)</th><th class="num">top-1</th><th class="num">top-5</th>'
        '<th class="num">loss</th><th class="num">shards</th>'
        + "".join(f'<th class="num">{escape(d)} (ms)</th>' for d in devices)
        + '<th title="on the accuracy-vs-GMACs Pareto frontier">frontier</th>'
    )
    best = max((r.top1 for r in table.rows if r.top1 is not None), default=None)
    digits = gmacs_digits(r.gmacs for r in table.rows)
    body = []
    # Cheapest first, like the chart read left to right; undescribed configs last.
    for r in sorted(table.rows, key=lambda r: (r.gmacs is None, r.gmacs or 0.0, r.config_id)):
        classes = [r.kind] + (["front"] if r.frontier else []) + (["best"] if best is not None
                                                                 and r.top1 == best else [])
        cells = [
            f'<td class="num">{r.config_id}</td>',
            f"<td>{'◆ ' if r.kind == 'anchor' else ''}{escape(r.label)}</td>",
            f"<td>{escape(pair_label(r))}</td>",
            f'<td class="num">{_num(r.gmacs, digits)}</td>',
            f'<td class="num">{_num(r.params / 1e6 if r.params is not None else None, 2)}</td>',
            f'<td class="num strong">{_pct(r.top1)}</td>',
            f'<td class="num">{_pct(r.top5)}</td>',
            f'<td class="num">{_num(r.loss, 3)}</td>',
            f'<td class="num">{r.shards}</td>',
            *[f'<td class="num">{_num(r.latency_ms.get(d), 2)}</td>' for d in devices],
            f'<td class="mark">{"★" if r.frontier else ""}</td>',
        ]
        body.append(f'<tr class="{" ".join(classes)}" data-config="{r.config_id}">{"".join(cells)}</tr>')
    if not body:
        return '<p class="empty">No config of this run has been described or evaluated yet.</p>'
    return (f'<table class="results sortable" id="configs"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def _run_meta(info: RunSummary | None) -> str:
    if info is None:
        return ""
    parts = [f"created {_when(info.created)}"]
    if info.trial_id:
        parts.append(f"trial <code>{escape(info.trial_id)}</code>")
    if info.hyperparameters:
        items = sorted(info.hyperparameters.items())
        hp = ", ".join(f"{escape(str(k))}={escape(_short(v))}" for k, v in items)
        parts.append(f"hyperparameters <code>{hp}</code>")
    meta = f'<p class="meta">{" · ".join(parts)}</p>'
    if info.experiment:
        pretty = json.dumps(info.experiment, indent=2, sort_keys=True, default=str)
        meta += f"<details><summary>experiment config</summary><pre>{escape(pretty)}</pre></details>"
    return meta


def _layout(title: str, base: str, body: str, crumbs: list[tuple[str, str | None]]) -> str:
    trail = f'<a href="{base}/">runs</a>' + "".join(
        f' <span>/</span> {escape(name) if href is None else f"<a href={href!r}>{escape(name)}</a>"}'
        for name, href in crumbs
    )
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)} · snnet-ray results</title>"
        f'<link rel="stylesheet" href="{base}/static/style.css">'
        f'<script src="{base}/static/results.js" defer></script></head>'
        f'<body><header><span class="brand">snnet-ray</span><span class="sub">results</span>'
        f'<nav class="crumbs">{trail}</nav></header><main>{body}</main>'
        '<footer>Stitchable Neural Networks: every config of one family, one point each.</footer>'
        "</body></html>\n"
    )


def _options(runs: Sequence[RunSummary], selected: int) -> str:
    return "".join(
        f'<option value="{escape(r.run)}"{" selected" if i == selected else ""}>{escape(r.run)}</option>'
        for i, r in enumerate(runs)
    )


def _status(status: str | None) -> str:
    if not status:
        return ""
    return f'<span class="badge {escape(status.lower())}">{escape(status)}</span>'


def _when(ts: float | None) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "—"
    except (OverflowError, OSError, ValueError):  # a row stored before timestamps were bounded
        return "—"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}%"


def _num(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _sign(value: float | None) -> str:
    if value is None or abs(value) < 1e-9:
        return ""
    return "up" if value > 0 else "down"


def _short(value: object) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def _json_for_script(data: str) -> str:
    # Inside <script> only "</" can end the element early.
    return data.replace("</", "<\\/")
