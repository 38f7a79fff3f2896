"""A small SVG line-plot renderer for the operations report: no library, no script, no external URL.

Every text that comes from data (titles, series names: host and model names are the site's, and a
label value can hold anything) is escaped for XML; numbers are formatted with fixed precision, so
the same data gives the same bytes. Each data point is a `<circle class="point">` on its series'
`<polyline>`, which is what the tests count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

WIDTH, HEIGHT = 760, 260
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 28, 64
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")


@dataclass(frozen=True)
class Series:
    name: str
    points: tuple[tuple[float, float], ...]  # (unix seconds, value)


@dataclass(frozen=True)
class Plot:
    key: str
    title: str
    unit: str
    series: tuple[Series, ...]
    note: str = ""  # shown instead of the plot when there is nothing to draw


def _number(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".") if abs(value) < 1e6 else f"{value:.3g}"


def _clock(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _bounds(series: Sequence[Series]) -> tuple[float, float, float]:
    times = [t for s in series for t, _ in s.points]
    values = [v for s in series for _, v in s.points]
    start, end = min(times), max(times)
    top = max(values) if max(values) > 0 else 1.0
    return start, max(end, start + 1), top * 1.1


def render(plot: Plot) -> str:
    """The plot as an `<svg>` element (inline in the page)."""
    title = escape(f"{plot.title} ({plot.unit})" if plot.unit else plot.title)
    drawn = [s for s in plot.series if s.points]
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" id="plot-{escape(plot.key)}" '
        f'width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{title}"><title>{title}</title>'
    )
    if not drawn:
        note = escape(plot.note or "no data in this window")
        return head + f'<text class="empty" x="{LEFT}" y="{HEIGHT // 2}">{note}</text></svg>'
    start, end, top = _bounds(drawn)
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(at: float) -> str:
        return f"{LEFT + (at - start) / (end - start) * inner_w:.1f}"

    def y(value: float) -> str:
        return f"{TOP + inner_h - value / top * inner_h:.1f}"

    parts = [head, f'<text class="title" x="{LEFT}" y="18">{title}</text>']
    parts.append(
        f'<path class="axis" d="M{LEFT},{TOP} V{TOP + inner_h} H{LEFT + inner_w}" fill="none" stroke="#555"/>'
    )
    for fraction in (0.0, 0.5, 1.0):
        value = top / 1.1 * fraction
        parts.append(
            f'<text class="tick" x="{LEFT - 6}" y="{y(value)}" text-anchor="end">{_number(value)}</text>'
        )
    base = TOP + inner_h + 16
    parts.append(f'<text class="tick" x="{LEFT}" y="{base}">{_clock(start)}</text>')
    parts.append(f'<text class="tick" x="{LEFT + inner_w}" y="{base}" text-anchor="end">{_clock(end)}</text>')
    for index, series in enumerate(drawn):
        color = PALETTE[index % len(PALETTE)]
        coords = " ".join(f"{x(t)},{y(v)}" for t, v in series.points)
        parts.append(f'<g class="series" data-name="{escape(series.name)}">')
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="1.5"/>')
        parts += [
            f'<circle class="point" cx="{x(t)}" cy="{y(v)}" r="2" fill="{color}"/>' for t, v in series.points
        ]
        parts.append("</g>")
        legend_y = base + 16 + (index // 2) * 14
        legend_x = LEFT + (index % 2) * 340
        parts.append(
            f'<rect x="{legend_x}" y="{legend_y - 9}" width="10" height="10" fill="{color}"/>'
            f'<text class="legend" x="{legend_x + 14}" y="{legend_y}">{escape(series.name[:48])}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
