"""SVG bar charts, the one chart module of the web UI's emissions page and the printable HTML report.

Plain SVG text: no script (the web UI's CSP forbids inline script), no external assets (the report prints
as it shows). Styling is given as presentation attributes so the standalone report needs no stylesheet;
the web UI's CSS may override them through the class names (``chart``, ``grid``, ``axis``,
``chart-title``). Axis ticks are round numbers (1, 2 or 5 times a power of ten), so a phone shows
"0.005" rather than "0.00452".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

#: The viewBox width. The web UI draws a chart at most this wide (one to one on a desktop) and about 306 px wide in a
#: card on a 360 px phone, so 18 units of text show as 18 px and 11.5 px (issue 15: 8 px on a phone).
WIDTH = 480
TITLE_PX, AXIS_PX = 20, 18
SOURCE_COLOR = "#2e7d4f"


def nice_ticks(peak: float, count: int = 4) -> list[float]:
    """Round tick values from 0 up to at least ``peak``: steps of 1, 2 or 5 times a power of ten.

    ``nice_ticks(0.00452)`` is ``[0, 0.002, 0.004, 0.006]`` (0.00452 / 4 = 0.00113, rounded up to 0.002); a peak of 0 gives ``[0, 1]``.
    """
    if not peak > 0 or not math.isfinite(peak):
        return [0.0, 1.0]
    raw = peak / count
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw * (1 - 1e-9))
    n = math.ceil(peak / step - 1e-9)
    return [round(i * step, 12) for i in range(n + 1)]


def _short(label: str, n: int) -> str:
    return label if len(label) <= n else label[: n - 1] + "…"


def _value_text(value: float) -> str:
    """0.000054 rather than 5.4e-05: a technician reads decimals, not exponents."""
    if value == 0 or abs(value) >= 0.001:
        return f"{value:.4g}"
    return f"{value:.3g}" if abs(value) < 1e-9 else f"{value:.9f}".rstrip("0")


def _tick_text(value: float) -> str:
    return f"{value:.10g}"


def bar_chart_svg(labels: Sequence[str], series: Mapping[str, Sequence[float]], colors: Mapping[str, str],
                  title: str, legend: Mapping[str, str] | None = None, unit: str = "tCO2e") -> str:
    """A stacked bar chart: one bar per label, one colour per series (stacked in the order given).

    :param labels: the text under each bar (a few are skipped when there are many).
    :param legend: the shown name of each series (default: its key).
    """
    legend = dict(legend or {k: k for k in series})
    width, height, left, bottom, top = WIDTH, 310, 84, 74, 38
    n = max(1, len(labels))
    totals = [sum(max(values[i], 0.0) for values in series.values()) for i in range(len(labels))]
    ticks = nice_ticks(max(totals, default=0.0))
    peak = ticks[-1]
    plot_h = height - top - bottom
    slot = (width - left - 10) / n
    bar = max(2.0, slot * 0.7)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" class="chart" '
             f'aria-label="{escape(title)}">',
             f'<text x="0" y="24" class="chart-title" font-size="{TITLE_PX}" font-weight="bold">{escape(title)}</text>']
    for value in ticks:
        y = top + plot_h * (1 - value / peak)
        parts.append(f'<line x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" class="grid" stroke="#ddd"/>'
                     f'<text x="{left - 6}" y="{y + 7:.1f}" text-anchor="end" class="axis" '
                     f'font-size="{AXIS_PX}">{_tick_text(value)}</text>')
    every = max(1, math.ceil(n / 5))     # at most five labels: they stay readable on a phone
    for i, label in enumerate(labels):
        x = left + i * slot + (slot - bar) / 2
        y = top + plot_h
        for name, values in series.items():
            v = max(values[i], 0.0)
            h = plot_h * v / peak
            y -= h
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" fill="{colors[name]}">'
                         f'<title>{escape(label)} {escape(legend.get(name, name))}: {values[i]:.6g} {escape(unit)}'
                         f'</title></rect>')
        if i % every == 0:
            parts.append(f'<text x="{x + bar / 2:.1f}" y="{top + plot_h + 24}" text-anchor="middle" class="axis" '
                         f'font-size="{AXIS_PX}">{escape(label)}</text>')
    lx = left
    for name in series:
        shown = legend.get(name, name)
        parts.append(f'<rect x="{lx}" y="{height - 22}" width="14" height="14" fill="{colors[name]}"/>'
                     f'<text x="{lx + 20}" y="{height - 8}" class="axis" font-size="{AXIS_PX}">{escape(shown)}</text>')
        lx += 36 + 11 * len(shown)
    parts.append("</svg>")
    return "".join(parts)


def hbar_chart_svg(rows: Sequence[tuple[str, float]], title: str, color: str = SOURCE_COLOR) -> str:
    """Horizontal bars, one per row (label, value): the emissions by source."""
    width, row_h, left = WIDTH, 34, 180
    height = 38 + row_h * max(1, len(rows))
    peak = max([v for _, v in rows if v > 0], default=1.0)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" class="chart" '
             f'aria-label="{escape(title)}">',
             f'<text x="0" y="24" class="chart-title" font-size="{TITLE_PX}" font-weight="bold">{escape(title)}</text>']
    for i, (label, value) in enumerate(rows):
        y = 32 + i * row_h
        w = (width - left - 110) * value / peak if value > 0 else 0
        parts.append(f'<text x="{left - 6}" y="{y + 22}" text-anchor="end" class="axis" '
                     f'font-size="{AXIS_PX}">{escape(_short(label, 16))}</text>'
                     f'<rect x="{left}" y="{y + 4}" width="{w:.1f}" height="{row_h - 8}" fill="{color}"/>'
                     f'<text x="{left + w + 4:.1f}" y="{y + 22}" class="axis" font-size="{AXIS_PX}">{_value_text(value)}</text>')
    parts.append("</svg>")
    return "".join(parts)
