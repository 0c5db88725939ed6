"""Charts drawn on the server as SVG (docs/design.md#charts): no script, nothing loaded, so the
dashboard's CSP stays strict and a mail client shows the same drawing as the browser.

Bars for counts, lines for latencies, each with a y axis (0, half and a round top), x labels
spread to fit, a title and a ``<title>`` per bar or point that says its exact value. Colours and
sizes are SVG attributes, not styles (a CSP without 'unsafe-inline' and mail clients both accept
those). Every text, labels and titles included, goes through ``html.escape``: a client folder's
name is file-system input.
"""

from __future__ import annotations

import math
from html import escape
from typing import Sequence

from markupsafe import Markup

WIDTH, HEIGHT = 640, 200
LEFT, RIGHT, TOP, BOTTOM = 52, 10, 26, 30
MAX_LABELS = 8
INK, MUTED, GRID = "#1f2937", "#6b7280", "#e5e7eb"
COLOURS = ("#2563eb", "#b45309")        # the first series, the second


def nice_top(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten at or above ``value`` (1 for nothing)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= value * (1 - 1e-9):
            return step * power
    return 10 * power


def count_text(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 or value == int(value) else f"{value:.1f}"


def seconds_text(value: float) -> str:
    """A latency: "0.35 s", "12 s", "4.5 min", "2.1 h"."""
    if value < 1:
        return f"{value:.2f} s"
    if value < 120:
        return f"{value:.0f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def _frame(title: str, top: float, labels: Sequence[str], unit_text, width: int, height: int) -> list[str]:
    """The chart's opening tag, title, y axis with its grid lines, and the x labels."""
    plot_h = height - TOP - BOTTOM
    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}">',
             f"<title>{escape(title)}</title>",
             f'<text x="{LEFT}" y="16" font-size="13" font-weight="600" fill="{INK}">{escape(title)}</text>']
    for share in (0, 0.5, 1):
        y = TOP + plot_h * (1 - share)
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{width - RIGHT}" y2="{y:.1f}" stroke="{GRID}"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" '
                     f'fill="{MUTED}">{escape(unit_text(top * share))}</text>')
    parts.append(f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" stroke="{MUTED}"/>')
    slot = (width - LEFT - RIGHT) / max(len(labels), 1)
    every = max(1, math.ceil(len(labels) / MAX_LABELS))
    for i, label in enumerate(labels):
        if i % every == 0:
            x = LEFT + slot * (i + 0.5)
            parts.append(f'<text x="{x:.1f}" y="{height - 10}" font-size="11" text-anchor="middle" '
                         f'fill="{MUTED}">{escape(label)}</text>')
    return parts


def bars(values: Sequence[float], labels: Sequence[str], title: str, unit: str = "jobs",
         width: int = WIDTH, height: int = HEIGHT) -> Markup:
    """A bar per value, labelled below; each bar's ``<title>`` says "label: value unit"."""
    top = nice_top(max(values, default=0))
    parts = _frame(title, top, labels, count_text, width, height)
    plot_h = height - TOP - BOTTOM
    slot = (width - LEFT - RIGHT) / max(len(values), 1)
    for i, (value, label) in enumerate(zip(values, labels)):
        h = plot_h * value / top
        parts.append(f'<rect x="{LEFT + slot * i + slot * 0.12:.1f}" y="{TOP + plot_h - h:.1f}" '
                     f'width="{slot * 0.76:.1f}" height="{h:.1f}" fill="{COLOURS[0]}">'
                     f"<title>{escape(label)}: {count_text(value)} {escape(unit)}</title></rect>")
    parts.append("</svg>")
    return Markup("".join(parts))


def lines(series: Sequence[tuple[str, Sequence[float | None]]], labels: Sequence[str], title: str,
          width: int = WIDTH, height: int = HEIGHT) -> Markup:
    """A line of seconds per named series (a gap where a value is None), with a legend; each
    point's ``<title>`` says "name label: value"."""
    known = [v for _, values in series for v in values if v is not None]
    top = nice_top(max(known, default=0))
    parts = _frame(title, top, labels, seconds_text, width, height)
    plot_h = height - TOP - BOTTOM
    slot = (width - LEFT - RIGHT) / max(len(labels), 1)
    for n, (name, values) in enumerate(series):
        colour = COLOURS[n % len(COLOURS)]
        points = [(LEFT + slot * (i + 0.5), TOP + plot_h * (1 - v / top), v, labels[i])
                  for i, v in enumerate(values) if v is not None]
        runs, run = [], []
        for i, v in enumerate(values):          # consecutive known values make one polyline
            if v is None:
                if run:
                    runs.append(run)
                run = []
                continue
            run.append(f"{LEFT + slot * (i + 0.5):.1f},{TOP + plot_h * (1 - v / top):.1f}")
        if run:
            runs.append(run)
        for run in runs:
            parts.append(f'<polyline points="{" ".join(run)}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x, y, v, label in points:
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}">'
                         f"<title>{escape(name)} {escape(label)}: {escape(seconds_text(v))}</title></circle>")
        legend_x = width - RIGHT - 70 * (len(series) - n)
        parts.append(f'<rect x="{legend_x}" y="8" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{legend_x + 14}" y="17" font-size="11" fill="{INK}">{escape(name)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def spark(values: Sequence[float], title: str, width: int = 120, height: int = 24) -> Markup:
    """A small bar strip without axes, for a table cell; its ``<title>`` says the total."""
    top = max(values, default=0) or 1
    slot = width / max(len(values), 1)
    parts = [f'<svg class="spark" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}">',
             f"<title>{escape(title)}</title>",
             f'<line x1="0" y1="{height - 0.5}" x2="{width}" y2="{height - 0.5}" stroke="{GRID}"/>']
    for i, value in enumerate(values):
        h = (height - 2) * value / top
        if h:
            parts.append(f'<rect x="{slot * i + 0.5:.1f}" y="{height - 1 - h:.1f}" width="{max(slot - 1, 1):.1f}" '
                         f'height="{h:.1f}" fill="{COLOURS[0]}"/>')
    parts.append("</svg>")
    return Markup("".join(parts))


def trend_charts(hours: Sequence, days: Sequence, hours_title: str = "last 24 h",
                 days_title: str = "last 14 days") -> list[Markup]:
    """The four trend charts of the overview and the daily report, from ``trends.Bucket``s:
    routed per hour and per day, drop-to-routed p50 and p95 per hour and per day."""
    out = []
    for buckets, unit, span in ((hours, "hour", hours_title), (days, "day", days_title)):
        labels = [b.label for b in buckets]
        out.append(bars([b.jobs for b in buckets], labels, f"Routed per {unit}, {span}"))
        out.append(lines([("p50", [b.p50 for b in buckets]), ("p95", [b.p95 for b in buckets])], labels,
                         f"Drop to routed per {unit}, {span}"))
    return out
