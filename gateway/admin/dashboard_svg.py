"""Server-rendered SVG charts for the dashboard: no JavaScript, no charting library.

Every mark carries its figure in ``data-*`` attributes (``data-value`` the exact number, plus what
it is: ``data-series``, ``data-label``, ``data-t``...), so a test or a script can read the
charts' data back out of the page. All text is escaped: team, task and model names come from
policy files, headers and provider responses.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from html import escape
from typing import Any

PALETTE = ("#2563eb", "#d97706", "#059669", "#dc2626", "#7c3aed", "#0891b2", "#be185d", "#65a30d")


def _a(value: object) -> str:
    """An attribute value, quoted and escaped."""
    return f'"{escape(str(value), quote=True)}"'


def _num(value: float) -> str:
    """A number for ``data-value``: exact (``repr``) so nothing is lost to rounding."""
    return repr(float(value)) if isinstance(value, float) else str(value)


def usd(value: float) -> str:
    return f"${value:,.2f}" if value >= 1 else f"${value:.6f}".rstrip("0").rstrip(".")


def clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(t))


def traffic_chart(buckets: Sequence[dict[str, Any]], bucket_s: int) -> str:
    """Requests and fallbacks per time bucket: one bar each, fallbacks drawn over requests."""
    width, height, left, bottom, top = 1000, 180, 36, 22, 10
    plot_h = height - bottom - top
    n = max(1, len(buckets))
    slot = (width - left - 4) / n
    peak = max([1, *(b["requests"] for b in buckets), *(b["fallbacks"] for b in buckets)])
    total_requests = sum(b["requests"] for b in buckets)
    total_fallbacks = sum(b["fallbacks"] for b in buckets)
    parts = [
        f'<svg class="chart" data-chart="traffic" data-bucket-s={_a(bucket_s)} '
        f"data-requests={_a(total_requests)} data-fallbacks={_a(total_fallbacks)} "
        f'viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="Requests and fallbacks per {bucket_s} s">',
        _y_axis(left, top, plot_h, width, peak, str),
    ]
    for i, bucket in enumerate(buckets):
        x = left + i * slot
        for series, value, inset, cls in (
            ("requests", bucket["requests"], 0.1, "bar-requests"),
            ("fallbacks", bucket["fallbacks"], 0.3, "bar-fallbacks"),
        ):
            if not value:
                continue
            h = plot_h * value / peak
            parts.append(
                f'<rect class="{cls}" data-series="{series}" data-t={_a(bucket["t"])} '
                f"data-value={_a(value)} x={_a(round(x + slot * inset, 2))} "
                f"y={_a(round(top + plot_h - h, 2))} width={_a(round(slot * (1 - 2 * inset), 2))} "
                f"height={_a(round(h, 2))}><title>{clock(bucket['t'])} UTC: {value} "
                f"{series}</title></rect>"
            )
    for i in range(0, len(buckets), max(1, n // 6)):
        x = left + i * slot
        parts.append(
            f'<text class="tick" x="{x:.1f}" y="{height - 6}">{clock(buckets[i]["t"])}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def bar_list(chart: str, items: Sequence[dict[str, Any]], fmt: Callable[[float], str]) -> str:
    """Horizontal bars, one per ``{"name", "value"}``, longest first."""
    if not items:
        return f'<p class="empty" data-chart={_a(chart)} data-empty="true">No data yet.</p>'
    row, label_w, value_w, width = 24, 150, 90, 720
    height = row * len(items) + 4
    peak = max(float(item["value"]) for item in items) or 1.0
    bar_w = width - label_w - value_w
    parts = [
        f'<svg class="chart" data-chart={_a(chart)} viewBox="0 0 {width} {height}" role="img">'
    ]
    for i, item in enumerate(items):
        y = 2 + i * row
        w = max(1.0, bar_w * float(item["value"]) / peak)
        parts.append(
            f'<text class="label" x="{label_w - 8}" y="{y + 16}" text-anchor="end">'
            f"{escape(_clip(str(item['name'])))}</text>"
            f'<rect class="bar" fill="{PALETTE[i % len(PALETTE)]}" data-label={_a(item["name"])} '
            f'data-value={_a(_num(item["value"]))} x="{label_w}" y="{y + 3}" '
            f'width="{w:.2f}" height="{row - 6}"><title>{escape(str(item["name"]))}: '
            f"{escape(fmt(item['value']))}</title></rect>"
            f'<text class="value" x="{label_w + w + 6:.2f}" y="{y + 16}">'
            f"{escape(fmt(item['value']))}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def rate_bar(name: str, rate: dict[str, Any]) -> str:
    """A 0..100 % bar: hits over lookups (``rate`` None when nothing was looked up)."""
    width, height = 340, 34
    value = rate["rate"]
    shown = "no lookups" if value is None else f"{value:.0%} ({rate['hits']}/{rate['lookups']})"
    filled = 0.0 if value is None else (width - 4) * value
    return (
        f'<svg class="chart rate" data-chart="{escape(name)}-hit-rate" '
        f"data-value={_a('' if value is None else _num(value))} data-hits={_a(rate['hits'])} "
        f'data-lookups={_a(rate["lookups"])} viewBox="0 0 {width} {height}" role="img">'
        f'<rect class="track" x="2" y="2" width="{width - 4}" height="18" rx="4"/>'
        f'<rect class="fill" x="2" y="2" width="{filled:.2f}" height="18" rx="4"/>'
        f'<text class="value" x="6" y="32">{escape(name)}: {escape(shown)}</text></svg>'
    )


def quality_chart(series: Sequence[dict[str, Any]]) -> str:
    """Mean quality (0..1) per minute, one line per (model, task type)."""
    if not series:
        return (
            '<p class="empty" data-chart="quality" data-empty="true">'
            "No quality scores yet (feedback or quality signals).</p>"
        )
    width, height, left, bottom, top, legend = 1000, 200, 36, 22, 10, 220
    plot_w, plot_h = width - left - legend, height - bottom - top
    times = sorted({p["t"] for s in series for p in s["points"]})
    t0, t1 = times[0], times[-1]
    span = (t1 - t0) or 1

    def xy(point: dict[str, Any]) -> tuple[float, float]:
        x = left + plot_w * ((point["t"] - t0) / span if t1 > t0 else 0.5)
        return x, top + plot_h * (1 - float(point["score"]))

    parts = [
        f'<svg class="chart" data-chart="quality" viewBox="0 0 {width} {height}" role="img">',
        _y_axis(left, top, plot_h, left + plot_w, 1.0, lambda v: f"{v:.1f}"),
    ]
    for i, line in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        who = f"data-model={_a(line['model'])} data-task-type={_a(line['task_type'])}"
        points = [xy(p) for p in line["points"]]
        parts.append(
            f'<polyline class="line" stroke="{colour}" {who} '
            f'points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in points)}"/>'
        )
        for point, (x, y) in zip(line["points"], points, strict=True):
            parts.append(
                f'<circle class="point" fill="{colour}" {who} data-t={_a(point["t"])} '
                f"data-value={_a(_num(point['score']))} data-n={_a(point['n'])} "
                f'cx="{x:.1f}" cy="{y:.1f}" r="3.5"><title>{escape(line["model"])} / '
                f"{escape(line['task_type'])} {clock(point['t'])} UTC: "
                f"{point['score']:.2f} over {point['n']}</title></circle>"
            )
        ly = top + 14 + i * 18
        parts.append(
            f'<rect x="{width - legend + 8}" y="{ly - 9}" width="10" height="10" fill="{colour}"/>'
            f'<text class="label" x="{width - legend + 22}" y="{ly}">'
            f"{escape(_clip(line['model'] + ' / ' + line['task_type'], 32))}</text>"
        )
    parts.append(
        f'<text class="tick" x="{left}" y="{height - 6}">{clock(t0)}</text>'
        f'<text class="tick" x="{left + plot_w}" y="{height - 6}" text-anchor="end">'
        f"{clock(t1)}</text></svg>"
    )
    return "".join(parts)


def _y_axis(
    left: int, top: int, plot_h: int, right: float, peak: float, fmt: Callable[[Any], str]
) -> str:
    bottom = top + plot_h
    return (
        f'<line class="axis" x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}"/>'
        f'<line class="grid" x1="{left}" y1="{top}" x2="{right}" y2="{top}"/>'
        f'<text class="tick" x="{left - 4}" y="{top + 4}" text-anchor="end">{fmt(peak)}</text>'
        f'<text class="tick" x="{left - 4}" y="{bottom}" text-anchor="end">0</text>'
    )


def _clip(text: str, size: int = 22) -> str:
    return text if len(text) <= size else text[: size - 1] + "…"
