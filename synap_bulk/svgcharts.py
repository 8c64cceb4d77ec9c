"""Charts as inline SVG, drawn in Python: lines over a run's seconds, a latency histogram on a
log axis, horizontal bars; and the few lines of script that measure what each chart drew.

No charting library: a chart here is a dozen ``<polyline>``/``<rect>`` elements, a few
kilobytes of markup that any browser draws with nothing to load (the run report must open
offline and ask nothing of the network). Every mark carries the ``mark`` class, so
:data:`MEASURE_SCRIPT` can sum their ``getBBox`` boxes; hovering a mark shows its ``<title>``.
Labels given to :func:`bar_chart` must already be HTML-escaped; every other text is escaped here.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .report import format_duration

__all__ = ["MEASURE_SCRIPT", "Series", "bar_chart", "histogram", "line_chart"]


@dataclass
class Series:
    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    color: str
    kind: str = "line"  # line | dash | bar


_W, _H = 600, 220
_L, _R, _T, _B = 56, 14, 12, 34


def _nice_step(span: float, ticks: int = 5) -> float:
    if span <= 0:
        return 1.0
    raw = span / ticks
    mag = 10.0 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * mag >= raw)


def _fmt(v: float) -> str:
    if abs(v) >= 10_000:
        return f"{v / 1000:.0f}k"
    if abs(v) >= 1000:
        return f"{v / 1000:.1f}k".replace(".0k", "k")
    return f"{v:.0f}" if v == int(v) else f"{v:.1f}"


def _legend(items: Iterable[tuple[str, str]], dashed: Iterable[str] = ()) -> str:
    dash = set(dashed)
    parts = [
        f'<span class=key><i style="background:{c}"'
        + (' class="dashed"' if n in dash else "")
        + f"></i>{html.escape(n)}</span>"
        for n, c in items
    ]
    return f"<div class=legend>{''.join(parts)}</div>" if parts else ""


def _figure(title: str, svg: str, legend: str) -> str:
    return f"<figure><figcaption>{html.escape(title)}</figcaption>{legend}{svg}</figure>"


def line_chart(title: str, series: Sequence[Series], *, y_label: str) -> str:
    """Lines (and per-interval bars) over the run's seconds, from 0."""
    x_max = max((max(s.xs) for s in series if s.xs), default=1.0) or 1.0
    y_top = max((max(s.ys) for s in series if s.ys), default=0.0)
    y_step = _nice_step(y_top or 1.0)
    y_max = y_step * max(1, math.ceil((y_top or 1.0) / y_step))
    pw, ph = _W - _L - _R, _H - _T - _B

    def px(x: float) -> float:
        return _L + pw * x / x_max

    def py(y: float) -> float:
        return _T + ph * (1 - y / y_max)

    out = [_axes_y(y_max, y_step, py, y_label), _axes_x_time(x_max, px)]
    for s in series:
        if not s.xs:
            continue
        if s.kind == "bar":
            prev = 0.0
            rects = []
            for x, y in zip(s.xs, s.ys, strict=True):
                if y > 0:
                    x0, x1 = px(prev), px(x)
                    rects.append(
                        f'<rect x="{x0:.1f}" y="{py(y):.1f}" width="{max(1.0, x1 - x0 - 1):.1f}" '
                        f'height="{py(0) - py(y):.1f}"><title>{_fmt(y)} at {x:.0f}s</title></rect>'
                    )
                prev = x
            out.append(f'<g class="mark" fill="{s.color}" opacity="0.8">{"".join(rects)}</g>')
            continue
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(s.xs, s.ys, strict=True))
        if len(s.xs) == 1:
            points = f"{px(0):.1f},{py(s.ys[0]):.1f} " + points
        dash = ' stroke-dasharray="6 4"' if s.kind == "dash" else ""
        out.append(
            f'<polyline class="mark line" fill="none" stroke="{s.color}" stroke-width="2"{dash} '
            f'stroke-linejoin="round" points="{points}"><title>{html.escape(s.name)}</title>'
            "</polyline>"
        )
    svg = _svg(title, out)
    legend = _legend(
        [(s.name, s.color) for s in series], dashed=[s.name for s in series if s.kind == "dash"]
    )
    return _figure(title, svg, legend)


def _svg(title: str, parts: Sequence[str], height: int = _H) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {_W} {height}" width="{_W}" height="{height}" '
        f'role="img" aria-label="{html.escape(title)}">{"".join(parts)}</svg>'
    )


def _axes_y(y_max: float, step: float, py: Any, label: str) -> str:
    parts = []
    v = 0.0
    while v <= y_max + step / 1000:
        y = py(v)
        parts.append(
            f'<line class="grid" x1="{_L}" x2="{_W - _R}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text x="{_L - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(v)}</text>'
        )
        v += step
    parts.append(
        f'<text class="axis-label" transform="translate(12 {_T + (_H - _T - _B) / 2:.0f}) '
        f'rotate(-90)" text-anchor="middle">{html.escape(label)}</text>'
    )
    return "".join(parts)


def _axes_x_time(x_max: float, px: Any) -> str:
    step = _nice_step(x_max, 6)
    if x_max > 120:  # whole minutes once the run is long enough to read them so
        step = max(60.0, 60 * _nice_step(x_max / 60, 6))
    parts = [f'<line class="axis" x1="{_L}" x2="{_W - _R}" y1="{_H - _B}" y2="{_H - _B}"/>']
    v = 0.0
    while v <= x_max + step / 1000:
        x = px(v)
        text = "0s" if not v else (f"{v * 1000:.0f}ms" if step < 1 else format_duration(v))
        anchor = "end" if x > _W - _R - 20 else "middle"  # the last label stays inside
        parts.append(
            f'<line class="axis" x1="{x:.1f}" x2="{x:.1f}" y1="{_H - _B}" y2="{_H - _B + 4}"/>'
            f'<text x="{x:.1f}" y="{_H - _B + 17}" text-anchor="{anchor}">{text}</text>'
        )
        v += step
    return "".join(parts)


def histogram(
    title: str,
    buckets: Sequence[tuple[float, float, int]],
    marks: Sequence[tuple[str, float]],
    *,
    color: str = "#2c6fbb",
) -> str:
    """Latency buckets on a log axis (the histogram's buckets are even in log2(ms + 1))."""

    def lg(ms: float) -> float:
        return math.log10(max(ms, 0.0) + 1.0)

    lo_ms = min(lo for lo, _, _ in buckets)
    hi_ms = max(hi for _, hi, _ in buckets)
    decades = [10.0**k for k in range(-1, 7)]
    ticks = [v * m for v in decades for m in (1, 2, 5)]
    x_lo = lg(max(0.0, max([v for v in ticks if v <= lo_ms] or [0.0])))
    x_hi = lg(min([v for v in ticks if v >= hi_ms] or [hi_ms]))
    x_hi = x_hi if x_hi > x_lo else x_lo + 1
    top = max(n for _, _, n in buckets)
    step = _nice_step(float(top))
    y_max = step * max(1, math.ceil(top / step))
    pw, ph = _W - _L - _R, _H - _T - _B

    def px(ms: float) -> float:
        return _L + pw * (lg(ms) - x_lo) / (x_hi - x_lo)

    def py(y: float) -> float:
        return _T + ph * (1 - y / y_max)

    parts = [_axes_y(y_max, step, py, "requests")]
    parts.append(f'<line class="axis" x1="{_L}" x2="{_W - _R}" y1="{_H - _B}" y2="{_H - _B}"/>')
    for v in ticks:
        if x_lo <= lg(v) <= x_hi + 1e-9:
            x = px(v)
            parts.append(
                f'<line class="axis" x1="{x:.1f}" x2="{x:.1f}" y1="{_H - _B}" '
                f'y2="{_H - _B + 4}"/><text x="{x:.1f}" y="{_H - _B + 17}" '
                f'text-anchor="middle">{_fmt(v)}</text>'
            )
    rects = "".join(
        f'<rect x="{px(lo):.1f}" y="{py(n):.1f}" width="{max(1.0, px(hi) - px(lo) - 0.5):.1f}" '
        f'height="{py(0) - py(n):.1f}"><title>{n:,} requests, {lo:.0f}–{hi:.0f} ms</title></rect>'
        for lo, hi, n in buckets
    )
    parts.append(f'<g class="mark" fill="{color}">{rects}</g>')
    for i, (name, ms) in enumerate(marks):
        x = px(ms)
        left = x > _W - _R - 70  # near the right edge: the label goes left of its line
        anchor = f'x="{x - 3:.1f}" text-anchor="end"' if left else f'x="{x + 3:.1f}"'
        parts.append(
            f'<line class="pct" x1="{x:.1f}" x2="{x:.1f}" y1="{_T}" y2="{_H - _B}"/>'
            f'<text class="pct" {anchor} y="{_T + 10 + 12 * i}">{name} {ms:.0f} ms</text>'
        )
    return _figure(title, _svg(title, parts), "")


def bar_chart(
    title: str,
    bars: Sequence[tuple[str, str, Sequence[tuple[float, str]]]],
    *,
    legend: Sequence[tuple[str, str]],
) -> str:
    """Horizontal bars, one row per (label, tooltip, [(value, colour), ...]); labels are
    already escaped."""
    per = len(bars[0][2]) if bars else 1
    row_h = 8 + 12 * per
    label_w = 260
    height = _T + row_h * len(bars) + 26
    top = max((v for _, _, vs in bars for v, _ in vs), default=1.0) or 1.0
    step = _nice_step(top)
    x_max = step * max(1, math.ceil(top / step))
    pw = _W - label_w - _R - 40

    def px(v: float) -> float:
        return label_w + pw * v / x_max

    parts = []
    rects = []
    for i, (label, tip, values) in enumerate(bars):
        y = _T + i * row_h
        parts.append(
            f'<text x="{label_w - 6}" y="{y + row_h / 2 + 4:.1f}" text-anchor="end">{label}</text>'
        )
        for j, (v, color) in enumerate(values):
            by = y + 4 + j * 12
            w = px(v) - px(0)
            rects.append(
                f'<rect x="{px(0):.1f}" y="{by:.1f}" width="{w:.1f}" height="11" '
                f'fill="{color}"><title>{tip}</title></rect>'
                f'<text class="val" x="{px(v) + 4:.1f}" y="{by + 9:.1f}">{_fmt(v)}</text>'
            )
    parts.append(f'<g class="mark">{"".join(rects)}</g>')
    base = _T + row_h * len(bars)
    v = 0.0
    while v <= x_max + step / 1000:
        x = px(v)
        parts.append(
            f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{_T}" y2="{base}"/>'
            f'<text x="{x:.1f}" y="{base + 16}" text-anchor="middle">{_fmt(v)}</text>'
        )
        v += step
    return _figure(title, _svg(title, parts, height=height), _legend(legend))


#: Measures what each chart drew (the union of its marks' boxes, from ``getBBox``) and records
#: it, so a headless browser's DOM dump shows whether the charts rendered: ``data-bbox`` and
#: ``data-drawn`` on each chart and ``data-charts="drawn/total"`` on the body. A chart is drawn
#: when its marks cover an area, or when a line of it spans the time axis at a level value.
MEASURE_SCRIPT = """
(function () {
  var charts = document.querySelectorAll("svg.chart"), ok = 0;
  for (var i = 0; i < charts.length; i++) {
    var marks = charts[i].querySelectorAll(".mark"), x0 = 1e9, y0 = 1e9, x1 = -1e9, y1 = -1e9;
    var flat = false;
    for (var j = 0; j < marks.length; j++) {
      var b = marks[j].getBBox();
      if (b.width <= 0 && b.height <= 0) continue;
      if (b.height <= 0 && marks[j].classList.contains("line")) flat = true;
      x0 = Math.min(x0, b.x); y0 = Math.min(y0, b.y);
      x1 = Math.max(x1, b.x + b.width); y1 = Math.max(y1, b.y + b.height);
    }
    // Drawn: the marks cover an area, or (a series that stayed level) a line spans the axis.
    var w = x1 > x0 ? x1 - x0 : 0, h = y1 > y0 ? y1 - y0 : 0, drawn = w > 0 && (h > 0 || flat);
    charts[i].setAttribute("data-bbox", Math.round(w) + "x" + Math.round(h));
    charts[i].setAttribute("data-drawn", drawn ? "yes" : "no");
    if (drawn) ok++;
  }
  document.body.setAttribute("data-charts", ok + "/" + charts.length);
})();
"""
