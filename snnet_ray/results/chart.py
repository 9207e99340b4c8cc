"""Accuracy-vs-GMACs chart of an SN-Net family as inline SVG, drawn on the server.

The figure of the SN-Net paper: every config is a point (x: GMACs at the anchors' input size,
y: top-1 %), the anchors are marked and named, and the Pareto frontier is highlighted. Stitches
are coloured by anchor pair (or by run when several runs share the chart). The SVG needs no
script and no network, so the page works offline; every mark carries `data-config` and a
`<title>` tooltip, which the page's small script uses to link points and table rows.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from snnet_ray.results.pareto import pareto_front
from snnet_ray.results.schema import ConfigResult

__all__ = ["PALETTE", "Series", "nice_ticks", "pair_label", "render_chart"]

# Tableau 10, without its red, which marks the frontier.
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f", "#ff9da7")
FRONTIER = "#e15759"
ANCHOR = "#1f2430"


@dataclass
class Series:
    """Points of one run; `color` None colours stitches by anchor pair."""

    label: str
    rows: Sequence[ConfigResult]
    color: str | None = None


def render_chart(
    series: Sequence[Series],
    width: int = 880,
    height: int = 480,
    title: str | None = None,
) -> str:
    """An `<svg>` element: points, anchors with names, frontier line and legend."""
    plotted = [
        (s, [r for r in s.rows if r.gmacs is not None and r.top1 is not None]) for s in series
    ]
    left, right, top, bottom = 64, 24, 40 if title else 20, 52
    w, h = width - left - right, height - top - bottom
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="top-1 accuracy versus GMACs">',
        f'<rect class="bg" x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
    ]
    if title:
        out.append(f'<text class="title" x="{left}" y="24" font-size="15" font-weight="600" '
                   f'fill="#1f2430">{escape(title)}</text>')
    points = [r for _, rows in plotted for r in rows]
    if not points:
        out.append(f'<text class="empty" x="{width / 2}" y="{height / 2}" text-anchor="middle" '
                   f'font-size="14" fill="#6b7280">No config has both an accuracy and GMACs yet.</text>')
        out.append("</svg>")
        return "\n".join(out)

    xs = [r.gmacs for r in points]
    ys = [r.top1 for r in points]
    xticks = nice_ticks(*_padded(min(xs), max(xs)))
    yticks = nice_ticks(*_padded(min(ys), max(ys)))
    x0, x1, y0, y1 = xticks[0], xticks[-1], yticks[0], yticks[-1]

    def sx(v: float) -> float:
        return left + _fraction(v, x0, x1) * w

    def sy(v: float) -> float:
        return top + h - _fraction(v, y0, y1) * h

    out.append('<g class="grid" stroke="#e5e7eb" stroke-width="1">')
    out += [f'<line x1="{sx(t):.1f}" y1="{top}" x2="{sx(t):.1f}" y2="{top + h}"/>' for t in xticks]
    out += [f'<line x1="{left}" y1="{sy(t):.1f}" x2="{left + w}" y2="{sy(t):.1f}"/>' for t in yticks]
    out.append("</g>")
    out.append(f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#9ca3af"/>')
    out.append('<g class="axis" font-size="12" fill="#4b5563">')
    out += [f'<text x="{sx(t):.1f}" y="{top + h + 18}" text-anchor="middle">{_fmt_tick(t, xticks)}</text>'
            for t in xticks]
    out += [f'<text x="{left - 8}" y="{sy(t) + 4:.1f}" text-anchor="end">{_fmt_tick(t, yticks)}</text>'
            for t in yticks]
    out.append(f'<text x="{left + w / 2}" y="{height - 12}" text-anchor="middle" font-size="13">'
               "GMACs (multiply-adds)</text>")
    out.append(f'<text transform="translate(16 {top + h / 2}) rotate(-90)" text-anchor="middle" '
               'font-size="13">Top-1 accuracy (%)</text>')
    out.append("</g>")

    legend: list[tuple[str, str, str]] = []  # (kind, color, label)
    pair_colors = _pair_colors(points) if len(plotted) == 1 and plotted[0][0].color is None else {}
    for index, (s, rows) in enumerate(plotted):
        color = s.color or PALETTE[index % len(PALETTE)]
        front = pareto_front(rows, "gmacs")
        front_ids = {r.config_id for r in front}
        if len(front) > 1:
            path = " ".join(f"{sx(r.gmacs):.1f},{sy(r.top1):.1f}" for r in front)
            line_color = FRONTIER if len(plotted) == 1 else color
            out.append(f'<polyline class="frontier" data-run="{escape(s.label)}" points="{path}" '
                       f'fill="none" stroke="{line_color}" stroke-width="2.5" stroke-linejoin="round" '
                       'stroke-opacity="0.85"/>')
        out.append(f'<g class="series" data-run="{escape(s.label)}">')
        # Stitches first, anchors on top so their markers and names stay readable.
        for row in sorted(rows, key=lambda r: r.kind == "anchor"):
            fill = pair_colors.get(pair_label(row), color) if pair_colors else color
            out.append(_mark(row, sx(row.gmacs), sy(row.top1), fill, row.config_id in front_ids, s.label,
                             ring=FRONTIER if len(plotted) == 1 else color, named=index == 0))
        out.append("</g>")
        if len(plotted) > 1:
            legend.append(("dot", color, s.label))
    if pair_colors:
        legend += [("dot", c, f"stitch {p}") for p, c in pair_colors.items() if p != "anchor"]
    if any(r.kind == "anchor" for r in points):
        legend.append(("anchor", ANCHOR, "anchor"))
    if len(plotted) == 1:
        legend.append(("line", FRONTIER, "Pareto frontier"))
    out.append(_legend(legend, left + 12, top + 10))
    out.append("</svg>")
    return "\n".join(out)


def pair_label(row: ConfigResult) -> str:
    """ "0→1" for a stitch of anchors 0 and 1, "anchor" for an anchor."""
    if row.kind == "anchor":
        return "anchor"
    if len(row.anchors) >= 2:
        return "→".join(str(a) for a in row.anchors)
    return row.name.split(":", 1)[0] if ":" in row.name else "stitch"


def nice_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten) that cover [lo, hi].

    Terminates for any finite input, in at most `4 * target` ticks: a range narrower than the
    floats can resolve around its values (5e18 and 5.000000000000001e18) is widened first, and the
    ticks are counted, not accumulated until they pass `hi`.
    """
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"axis range must be finite, got [{lo}, {hi}]")
    lo, hi = min(lo, hi), max(lo, hi)
    # Below ~1e-9 of the values' magnitude, steps would vanish in the floats' spacing.
    floor = max(abs(lo), abs(hi), 1e-300) * 1e-9
    if hi - lo < floor:
        mid = lo / 2 + hi / 2
        half = max(abs(mid) * 0.05, 0.5) if abs(mid) > 0 else 0.5
        lo, hi = mid - half, mid + half
    raw = (hi - lo) / max(1, target - 1)
    if not math.isfinite(raw) or raw <= 0:  # hi - lo overflowed (e.g. -1e308 .. 1e308)
        return [lo, hi]
    magnitude = 10.0 ** math.floor(math.log10(raw))  # a float: an int step outgrows floats
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(lo / step + 1e-9)
    count = math.ceil(hi / step - 1e-9) - first
    if not 1 <= count <= 4 * target:
        return [lo, hi]
    ticks = [round((first + i) * step, 10) if abs(step) >= 1e-10 else (first + i) * step for i in range(count + 1)]
    ok = all(math.isfinite(t) for t in ticks) and all(b > a for a, b in itertools.pairwise(ticks))
    return ticks if ok else [lo, hi]


def _padded(lo: float, hi: float) -> tuple[float, float]:
    span = hi - lo if hi > lo else max(abs(hi), 1.0)
    if not math.isfinite(span) or not math.isfinite(lo - span) or not math.isfinite(hi + span):
        return lo, hi
    return lo - 0.04 * span, hi + 0.04 * span


def _fraction(v: float, lo: float, hi: float) -> float:
    # Where v sits in [lo, hi], in halves: hi - lo overflows for -1e308 .. 1e308, hi/2 - lo/2 never does.
    span = hi / 2 - lo / 2
    if not span > 0:
        return 0.5
    frac = (v / 2 - lo / 2) / span
    return min(max(frac, -1.0), 2.0) if math.isfinite(frac) else 0.5


def _fmt_tick(value: float, ticks: Sequence[float]) -> str:
    # As many decimals as the step needs: 2.5 -> "72.5", 0.25 -> "0.25", 5 -> "75".
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else 1.0
    if math.isfinite(step) and step >= 1e-6 and max(abs(t) for t in ticks) < 1e15:
        digits = next((d for d in range(6) if abs(step * 10**d - round(step * 10**d)) < 1e-6), 6)
        return f"{value:.{digits}f}"
    # Huge, tiny or overflowing steps (1e308 GMACs): significant digits, enough to tell the ticks apart.
    if math.isfinite(step) and step > 0:
        top = max(abs(t) for t in ticks)
        precision = min(17, max(3, math.ceil(math.log10(top / step)) + 2)) if top > 0 else 3
    else:
        precision = 3
    return f"{value:.{precision}g}"


def _pair_colors(rows: Sequence[ConfigResult]) -> dict[str, str]:
    pairs = sorted({pair_label(r) for r in rows if r.kind != "anchor"})
    return {p: PALETTE[i % len(PALETTE)] for i, p in enumerate(pairs)}


def _mark(
    row: ConfigResult, x: float, y: float, fill: str, on_front: bool, run: str, ring: str, named: bool
) -> str:
    tip = f"{row.label} · {row.gmacs:.3g} GMACs · {row.top1:.2f}% top-1"
    if on_front:
        tip += " · on the frontier"
    attrs = (f'class="pt {row.kind}{" front" if on_front else ""}" data-config="{row.config_id}" '
             f'data-run="{escape(run)}"')
    title = f"<title>{escape(tip)}</title>"
    if row.kind == "anchor":
        r = 7.5
        diamond = f"{x:.1f},{y - r:.1f} {x + r:.1f},{y:.1f} {x:.1f},{y + r:.1f} {x - r:.1f},{y:.1f}"
        halo = (f'<circle cx="{x:.1f}" cy="{y:.1f}" r="11" fill="none" stroke="{ring}" stroke-width="2"/>'
                if on_front else "")
        label = (f'<text x="{x + 11:.1f}" y="{y - 9:.1f}" font-size="12" font-weight="600" fill="{ANCHOR}" '
                 f'paint-order="stroke" stroke="#ffffff" stroke-width="3">{escape(row.label)}</text>'
                 if named else "")
        return (f'<g {attrs}>{title}{halo}<polygon points="{diamond}" fill="{ANCHOR}" stroke="#ffffff" '
                f'stroke-width="1.5"/>{label}</g>')
    halo = (f'<circle cx="{x:.1f}" cy="{y:.1f}" r="8" fill="none" stroke="{ring}" stroke-width="2"/>'
            if on_front else "")
    return (f'<g {attrs}>{title}{halo}<circle cx="{x:.1f}" cy="{y:.1f}" r="4.8" fill="{fill}" '
            'fill-opacity="0.85" stroke="#ffffff" stroke-width="1"/></g>')


def _legend(items: Sequence[tuple[str, str, str]], x: float, y: float) -> str:
    if not items:
        return ""
    row_h, width = 18, 16 + 8 * max(len(label) for _, _, label in items) + 12
    out = ['<g class="legend" font-size="12" fill="#374151">',
           f'<rect x="{x - 6}" y="{y - 6}" width="{width}" height="{row_h * len(items) + 6}" rx="6" '
           'fill="#ffffff" fill-opacity="0.9" stroke="#e5e7eb"/>']
    for i, (kind, color, label) in enumerate(items):
        cy = y + i * row_h + 6
        if kind == "anchor":
            out.append(f'<polygon points="{x + 6},{cy - 6} {x + 12},{cy} {x + 6},{cy + 6} {x},{cy}" '
                       f'fill="{color}"/>')
        elif kind == "line":
            out.append(f'<line x1="{x}" y1="{cy}" x2="{x + 12}" y2="{cy}" stroke="{color}" '
                       'stroke-width="2.5"/>')
        else:
            out.append(f'<circle cx="{x + 6}" cy="{cy}" r="4.8" fill="{color}"/>')
        out.append(f'<text x="{x + 20}" y="{cy + 4}">{escape(label)}</text>')
    out.append("</g>")
    return "\n".join(out)
