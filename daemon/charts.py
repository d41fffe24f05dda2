"""Charts as inline SVG for the usage report and the dashboard: no scripts, no external files, readable as
they are (values on the bars, labelled axes, cap lines). Pure string building."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape

PALETTE = ("#4a7bd0", "#e07b39", "#3a9d5d", "#9b59b6", "#c0392b", "#16a085", "#7f8c8d", "#d4ac0d")


def nice_step(peak: float, ticks: int = 5) -> float:
    """A round tick step (1, 2 or 5 times a power of ten) giving about ``ticks`` steps up to ``peak``."""
    if peak <= 0:
        return 1.0
    raw = peak / ticks
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def number_text(value: float) -> str:
    """Two decimals (dollars and cents, hours), three significant digits below 0.1 (a job's fraction of a
    cent stays visible), none from 100 on."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if value == 0 or abs(value) >= 0.1:
        return f"{value:,.2f}"
    return f"{value:.3g}"


def bar_chart(
    title: str,
    items: Sequence[tuple[str, float]],
    *,
    unit: str,
    cap: float | None = None,
    cap_label: str = "cap",
    show: Callable[[float], str] = number_text,
    width: int = 640,
    height: int = 240,
) -> str:
    """Vertical bars with each value written on its bar, a y axis with ticks in ``unit``, the category labels
    under the x axis, the total in the caption and, with ``cap``, a dashed line at the cap."""
    left, right, top, bottom = 64, 16, 24, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max([v for _, v in items] + [cap or 0.0])
    step = nice_step(peak)
    axis_top = step * max(math.ceil(peak / step), 1)

    def y(value: float) -> float:
        return top + plot_h * (1 - value / axis_top)

    total = sum(v for _, v in items)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" font-family="sans-serif">'
    ]
    tick = 0.0
    while tick <= axis_top + step / 2:
        ty = y(tick)
        parts.append(
            f'<line x1="{left}" y1="{ty:.1f}" x2="{width - right}" y2="{ty:.1f}" stroke="#ddd"/>'
            f'<text class="tick" x="{left - 6}" y="{ty + 4:.1f}" font-size="11" text-anchor="end">'
            f"{escape(show(tick))}</text>"
        )
        tick += step
    parts.append(
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#333"/>'
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" stroke="#333"/>'
        f'<text x="14" y="{top + plot_h / 2:.1f}" font-size="11" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + plot_h / 2:.1f})">{escape(unit)}</text>'
    )
    slot = min(plot_w / max(len(items), 1), 90.0)  # a few bars stay bar-shaped, left-aligned
    for i, (label, value) in enumerate(items):
        x = left + i * slot + slot * 0.15
        bar_top = y(value)
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{bar_top:.1f}" width="{slot * 0.7:.1f}" '
            f'height="{top + plot_h - bar_top:.1f}" fill="#4a7bd0"><title>{escape(label)}: {escape(show(value))} '
            f"{escape(unit)}</title></rect>"
            f'<text class="value" x="{x + slot * 0.35:.1f}" y="{bar_top - 4:.1f}" font-size="11" '
            f'text-anchor="middle">{escape(show(value))}</text>'
            f'<text class="label" x="{x + slot * 0.35:.1f}" y="{top + plot_h + 16}" font-size="11" '
            f'text-anchor="middle">{escape(label[:16])}</text>'
        )
    if not items:
        parts.append(
            f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h / 2:.1f}" font-size="12" text-anchor="middle" '
            f'fill="#777">nothing yet</text>'
        )
    if cap is not None:
        cy = y(cap)
        parts.append(
            f'<line class="cap" x1="{left}" y1="{cy:.1f}" x2="{width - right}" y2="{cy:.1f}" stroke="#c0392b" '
            f'stroke-width="1.5" stroke-dasharray="6 3"/><text class="cap-label" x="{width - right}" '
            f'y="{cy - 5:.1f}" font-size="11" text-anchor="end" fill="#c0392b">{escape(cap_label)} '
            f"{escape(show(cap))} {escape(unit)}</text>"
        )
    parts.append("</svg>")
    caption = f"{escape(title)} <span class='total'>total {escape(show(total))} {escape(unit)}</span>"
    return f"<figure><figcaption>{caption}</figcaption>{''.join(parts)}</figure>"


def meter(label: str, used: float, cap: float | None, *, unit: str = "USD", width: int = 640) -> str:
    """One horizontal bar: what was used, against the cap (a line and its value), and what is left."""
    height, left, right = 46, 8, 8
    plot_w = width - left - right
    scale = max(used, cap or 0.0, 1e-9) * 1.1
    used_w = plot_w * used / scale
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="meter" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}" font-family="sans-serif">',
        f'<rect x="{left}" y="8" width="{plot_w}" height="18" fill="#eee"/>',
        f'<rect class="used" x="{left}" y="8" width="{used_w:.1f}" height="18" '
        f'fill="{"#c0392b" if cap is not None and used >= cap else "#4a7bd0"}"/>',
        f'<text x="{left + 4}" y="21" font-size="12" fill="#000">{number_text(used)} {escape(unit)} spent</text>',
    ]
    if cap is not None:
        cx = left + plot_w * cap / scale
        left_over = max(cap - used, 0.0)
        parts.append(
            f'<line class="cap" x1="{cx:.1f}" y1="4" x2="{cx:.1f}" y2="30" stroke="#c0392b" stroke-width="2"/>'
            f'<text class="cap-label" x="{cx:.1f}" y="42" font-size="11" text-anchor="end" fill="#c0392b">'
            f"cap {number_text(cap)} {escape(unit)} ({number_text(left_over)} left)</text>"
        )
    else:
        parts.append(f'<text x="{left}" y="42" font-size="11" fill="#777">no cap</text>')
    parts.append("</svg>")
    return f"<figure><figcaption>{escape(label)}</figcaption>{''.join(parts)}</figure>"


def timeline(
    segments: Sequence[tuple[float, float, str]], duration: float, *, names: dict[str, str] | None = None
) -> str:
    """Who spoke when: one row per speaker, a time axis in seconds (or minutes past 5 minutes)."""
    names = names or {}
    speakers = sorted({s for _, _, s in segments})
    width, label_w, row_h, axis_h = 640, 110, 16, 20
    plot_w = width - label_w - 10
    height = row_h * max(len(speakers), 1) + axis_h + 4
    span = max(duration, max((e for _, e, _ in segments), default=0.0), 1e-6)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="speaker timeline" font-family="sans-serif">'
    ]
    for row, speaker in enumerate(speakers):
        y = row * row_h + 2
        color = PALETTE[row % len(PALETTE)]
        parts.append(
            f'<text class="speaker" x="{label_w - 6}" y="{y + 11}" font-size="11" text-anchor="end">'
            f"{escape(names.get(speaker, speaker)[:18])}</text>"
        )
        for start, end, who in segments:
            if who == speaker:
                x = label_w + plot_w * start / span
                w = max(plot_w * (end - start) / span, 0.5)
                parts.append(
                    f'<rect class="turn" x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row_h - 4}" fill="{color}">'
                    f"<title>{escape(names.get(speaker, speaker))} {start:.1f}-{end:.1f} s</title></rect>"
                )
    axis_y = row_h * max(len(speakers), 1) + 2
    minutes = span > 300
    step = nice_step(span / 60 if minutes else span, 6) * (60 if minutes else 1)
    parts.append(f'<line x1="{label_w}" y1="{axis_y}" x2="{label_w + plot_w}" y2="{axis_y}" stroke="#333"/>')
    tick = 0.0
    while tick <= span + 1e-9:
        x = label_w + plot_w * tick / span
        shown = f"{tick / 60:g} min" if minutes else f"{tick:g} s"
        parts.append(
            f'<line x1="{x:.1f}" y1="{axis_y}" x2="{x:.1f}" y2="{axis_y + 4}" stroke="#333"/>'
            f'<text class="tick" x="{x:.1f}" y="{axis_y + 15}" font-size="10" text-anchor="middle">{shown}</text>'
        )
        tick += step
    parts.append("</svg>")
    return "".join(parts)
