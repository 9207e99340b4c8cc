"""The accuracy-vs-GMACs figure of the SN-Net paper as a PNG (matplotlib, Agg).

Same picture as the results page: every config a point, anchors as named diamonds, the Pareto
frontier highlighted; with several runs, one colour per run and one frontier each. Uses the
object API with an Agg canvas, so it never touches pyplot's global backend or needs a display.

Why two renderers of one figure (this and `chart.py`'s SVG) rather than one: the page's chart is
drawn per request inside the Serve replica in ~2 ms with no matplotlib import (~0.5-1.5 s and tens
of MB), and carries the `data-config` hooks and tooltips the page script uses to link points and
table rows, which matplotlib's SVG cannot attach; a paper-quality PNG/PDF needs matplotlib's text
layout, and rasterising our SVG would need a native library (cairo). What makes them the same
figure is shared: `PALETTE`, `FRONTIER`, `ANCHOR`, `pair_label` and `pareto_front`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from snnet_ray.results.chart import ANCHOR, FRONTIER, PALETTE, pair_label
from snnet_ray.results.pareto import pareto_front
from snnet_ray.results.schema import ResultsTable

__all__ = ["plot_pareto"]


def plot_pareto(
    tables: ResultsTable | Sequence[ResultsTable],
    out: str | os.PathLike[str],
    title: str | None = None,
    dpi: int = 150,
) -> Path:
    """Draw top-1 vs GMACs for one or more runs into `out` (.png, .svg or .pdf); returns the path."""
    tables = [tables] if isinstance(tables, ResultsTable) else list(tables)
    path = Path(out)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder {path.parent} does not exist: create it or pick another --png")
    plotted = [(t, [r for r in t.rows if r.gmacs is not None and r.top1 is not None]) for t in tables]
    if not any(rows for _, rows in plotted):
        names = ", ".join(t.run for t in tables)
        raise ValueError(f"nothing to plot for {names}: no config has both an accuracy and GMACs yet")

    fig = Figure(figsize=(8.0, 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    single = len(plotted) == 1
    for index, (table, rows) in enumerate(plotted):
        stitches = [r for r in rows if r.kind != "anchor"]
        anchors = [r for r in rows if r.kind == "anchor"]
        if single:
            pairs = sorted({pair_label(r) for r in stitches})
            for i, pair in enumerate(pairs):
                pts = [r for r in stitches if pair_label(r) == pair]
                ax.scatter([r.gmacs for r in pts], [r.top1 for r in pts], s=28, alpha=0.85,
                           color=PALETTE[i % len(PALETTE)], edgecolors="white", linewidths=0.6,
                           label=f"stitch {pair}", zorder=3)
        else:
            ax.scatter([r.gmacs for r in stitches], [r.top1 for r in stitches], s=28, alpha=0.85,
                       color=PALETTE[index % len(PALETTE)], edgecolors="white", linewidths=0.6,
                       label=table.run, zorder=3)
        front = pareto_front(rows, "gmacs")
        color = FRONTIER if single else PALETTE[index % len(PALETTE)]
        ax.plot([r.gmacs for r in front], [r.top1 for r in front], color=color, linewidth=2.0,
                alpha=0.9, label="Pareto frontier" if single else f"{table.run} frontier", zorder=2)
        ax.scatter([r.gmacs for r in anchors], [r.top1 for r in anchors], marker="D", s=60,
                   color=ANCHOR if single else PALETTE[index % len(PALETTE)], edgecolors="white",
                   linewidths=1.0, label="anchor" if single or index == 0 else None, zorder=4)
        # With several runs the anchors coincide: name them once.
        for r in anchors if single or index == 0 else []:
            ax.annotate(r.label, (r.gmacs, r.top1), xytext=(6, 6), textcoords="offset points",
                        fontsize=9, fontweight="bold", color=ANCHOR)
    if title is None:
        title = (f"{tables[0].run} · {tables[0].checkpoint}" if single
                 else " vs ".join(t.run for t in tables))
    ax.set_title(title, loc="left", fontsize=12)
    ax.set_xlabel("GMACs (multiply-adds)")
    ax.set_ylabel("Top-1 accuracy (%)")
    ax.margins(x=0.06, y=0.06)
    ax.grid(True, color="#e5e7eb", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(loc="best", fontsize=9, frameon=True, framealpha=0.9)  # away from the points
    fig.savefig(path, dpi=dpi)
    return path
