"""Chart primitives for the HTML report: pure functions from numbers to inline SVG markup.

No script and no external reference, so a report opens offline, pastes into a ticket and
prints. Series are told apart three ways: colour from the Okabe-Ito palette (distinct under
the common colour-vision deficiencies), a dash or fill pattern that survives greyscale
printing, and a direct label. Sequential values (the per-core heatmap) use viridis, whose
lightness rises monotonically, so its order reads in grey too.

Every element that carries a data value has class "mark" (the browser test counts them per
chart); text from the target is escaped here, at the one place it becomes markup.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from typing import Callable

OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
             "#F0E442")
LINE_DASHES = ("", "7 4", "2 3", "9 3 2 3", "4 2", "1 5", "12 4", "6 2 2 2")
FILL_PATTERNS = ("solid", "hatch", "dots", "cross", "rhatch", "grid", "solid", "hatch")
# viridis at 0, 1/8, ..., 1: dark purple -> yellow, lightness rising.
VIRIDIS = ("#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962",
           "#addc30", "#fde725")

WIDTH, HEIGHT = 720, 240
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 70, 130, 14, 42

Formatter = Callable[[float], str]


@dataclass(frozen=True)
class Series:
    name: str
    points: list            # [(x, y or None)]; None breaks the line
    style: int = 0          # index into the palette, dashes and patterns
    dashed: bool = False    # force a dashed line (a projection, not a measurement)


@dataclass(frozen=True)
class Reference:
    """A horizontal line with a label: a limit or a capacity."""
    value: float
    label: str
    style: int = 6


@dataclass
class Bars:
    name: str
    values: list            # one value (or None) per category
    style: int = 0
    labels: list = field(default_factory=list)   # text at the end of each bar


def pattern_defs() -> str:
    """One hidden <svg> with the fill patterns, referenced by every chart on the page."""
    parts = []
    for index, colour in enumerate(OKABE_ITO):
        kind = FILL_PATTERNS[index]
        pid = f"fill{index}"
        if kind == "solid":
            continue
        body = {
            "hatch": f'<path d="M0 8L8 0" stroke="{colour}" stroke-width="2.5"/>',
            "rhatch": f'<path d="M0 0L8 8" stroke="{colour}" stroke-width="2.5"/>',
            "dots": f'<circle cx="4" cy="4" r="2.2" fill="{colour}"/>',
            "cross": f'<path d="M0 8L8 0M0 0L8 8" stroke="{colour}" stroke-width="1.6"/>',
            "grid": f'<path d="M4 0V8M0 4H8" stroke="{colour}" stroke-width="2"/>',
        }[kind]
        parts.append(f'<pattern id="{pid}" width="8" height="8" patternUnits="userSpaceOnUse">'
                     f'<rect width="8" height="8" fill="#fff"/>{body}</pattern>')
    return ('<svg class="defs" width="0" height="0" aria-hidden="true" focusable="false">'
            f'<defs>{"".join(parts)}</defs></svg>')


def colour(style: int) -> str:
    return OKABE_ITO[style % len(OKABE_ITO)]


def fill(style: int) -> str:
    index = style % len(OKABE_ITO)
    return colour(index) if FILL_PATTERNS[index] == "solid" else f"url(#fill{index})"


def sequential(value: float) -> str:
    """Viridis colour of a ratio in 0..1, in 9 steps."""
    step = min(len(VIRIDIS) - 1, max(0, int(round(value * (len(VIRIDIS) - 1)))))
    return VIRIDIS[step]


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """Round tick values 0..>=top at steps of 1, 2 or 5 times a power of ten."""
    if not top or top <= 0 or not math.isfinite(top):
        return [0.0, 1.0]
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    ticks = [0.0]
    while ticks[-1] < top - 1e-12 * top:
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


def _text(x: float, y: float, text: str, anchor: str = "start", cls: str = "",
          extra: str = "") -> str:
    klass = f' class="{cls}"' if cls else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{klass}{extra}>'
            f'{escape(text)}</text>')


def _frame(chart_id: str, title: str, body: str, height: int = HEIGHT,
           axis_max: float | None = None) -> str:
    # data-axis-max: the value axis' top tick, in the chart's own unit (what a reader sees
    # as the scale; the tests check it against the data and the limits).
    axis = f' data-axis-max="{axis_max:g}"' if axis_max is not None else ""
    return (f'<svg viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{escape(title)}" '
            f'data-svg="{escape(chart_id)}"{axis} preserveAspectRatio="xMinYMin meet">'
            f'<title>{escape(title)}</title>{body}</svg>')


def _axes(x0: float, x1: float, y0: float, y1: float, x_ticks, y_ticks, x_fmt: Formatter,
          y_fmt: Formatter, x_label: str, y_label: str, sx, sy) -> str:
    out = []
    for value in y_ticks:
        y = sy(value)
        out.append(f'<line class="grid" x1="{x0:.1f}" x2="{x1:.1f}" y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(_text(x0 - 6, y + 4, y_fmt(value), "end", "tick"))
    for value in x_ticks:
        x = sx(value)
        out.append(f'<line class="axis" x1="{x:.1f}" x2="{x:.1f}" y1="{y0:.1f}" '
                   f'y2="{y0 + 4:.1f}"/>')
        out.append(_text(x, y0 + 16, x_fmt(value), "middle", "tick"))
    out.append(f'<line class="axis" x1="{x0:.1f}" x2="{x1:.1f}" y1="{y0:.1f}" y2="{y0:.1f}"/>')
    out.append(f'<line class="axis" x1="{x0:.1f}" x2="{x0:.1f}" y1="{y0:.1f}" y2="{y1:.1f}"/>')
    out.append(_text((x0 + x1) / 2, y0 + 34, x_label, "middle", "label"))
    out.append(_text(14, (y0 + y1) / 2, y_label, "middle", "label",
                     f' transform="rotate(-90 14 {(y0 + y1) / 2:.1f})"'))
    return "".join(out)


def line_chart(chart_id: str, title: str, series: list[Series], x_label: str, y_label: str,
               y_fmt: Formatter, x_fmt: Formatter = lambda v: f"{v:g}",
               references: tuple[Reference, ...] = (), x_max: float | None = None,
               y_max: float | None = None) -> str:
    """Lines over time, each labelled at its last point; references drawn as labelled rules."""
    xs = [x for s in series for x, y in s.points if y is not None]
    ys = [y for s in series for _, y in s.points if y is not None]
    ys += [r.value for r in references if r.value is not None]
    top_x = max([x_max or 0.0] + xs) or 1.0
    y_ticks = nice_ticks(y_max if y_max is not None else (max(ys) if ys else 1.0))
    top_y = y_ticks[-1] or 1.0
    x_ticks = nice_ticks(top_x, 6)
    x_ticks = [t for t in x_ticks if t <= top_x * 1.0001]
    x0, x1 = MARGIN_LEFT, WIDTH - MARGIN_RIGHT
    y0, y1 = HEIGHT - MARGIN_BOTTOM, MARGIN_TOP

    def sx(value):
        return x0 + (x1 - x0) * value / top_x

    def sy(value):
        return y0 - (y0 - y1) * min(value, top_y) / top_y

    out = [_axes(x0, x1, y0, y1, x_ticks, y_ticks, x_fmt, y_fmt, x_label, y_label, sx, sy)]
    label_slots: list[float] = []
    for ref in references:
        y = sy(ref.value)
        out.append(f'<line class="reference mark" data-series="{escape(ref.label)}" '
                   f'x1="{x0}" x2="{x1}" y1="{y:.1f}" y2="{y:.1f}" stroke="{colour(ref.style)}" '
                   f'stroke-dasharray="3 3"/>')
        out.append(_text(x1 + 4, _free_slot(label_slots, y + 4), ref.label, "start", "direct"))
    for s in series:
        segments, current = [], []
        for x, y in s.points:
            if y is None:
                if current:
                    segments.append(current)
                current = []
            else:
                current.append((sx(x), sy(y)))
        if current:
            segments.append(current)
        if not segments:
            continue
        dash = LINE_DASHES[1] if s.dashed else LINE_DASHES[s.style % len(LINE_DASHES)]
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        path = "".join("M" + "L".join(f"{x:.1f} {y:.1f}" for x, y in seg) for seg in segments)
        out.append(f'<path class="series mark" data-series="{escape(s.name)}" d="{path}" '
                   f'fill="none" stroke="{colour(s.style)}" stroke-width="2.2"{dash_attr}/>')
        for seg in segments:
            if len(seg) == 1:
                x, y = seg[0]
                out.append(f'<circle class="mark" cx="{x:.1f}" cy="{y:.1f}" r="3" '
                           f'fill="{colour(s.style)}"/>')
        last_y = segments[-1][-1][1]
        out.append(_text(x1 + 4, _free_slot(label_slots, last_y + 4), s.name, "start",
                         "direct", f' fill="{colour(s.style)}"'))
    return _frame(chart_id, title, "".join(out), axis_max=top_y)


def _free_slot(taken: list[float], y: float, gap: float = 13.0) -> float:
    """Move a direct label down (or up) until it does not overlap the ones placed before."""
    candidate = y
    for _ in range(40):
        if all(abs(candidate - other) >= gap for other in taken):
            break
        candidate += gap
        if candidate > HEIGHT - MARGIN_BOTTOM + 10:
            candidate = y - gap * (len(taken) + 1)
    taken.append(candidate)
    return candidate


def stacked_columns(chart_id: str, title: str, xs: list[float], stacks: list[Series],
                    x_label: str, y_label: str, y_fmt: Formatter) -> str:
    """One column per x (a sample), stacked by category; each category a colour and pattern."""
    totals = [sum((s.points[i][1] or 0) for s in stacks) for i in range(len(xs))]
    y_ticks = nice_ticks(max(totals) if totals else 1.0)
    top_y = y_ticks[-1] or 1.0
    top_x = max(xs) if xs else 1.0
    x0, x1 = MARGIN_LEFT, WIDTH - MARGIN_RIGHT
    y0, y1 = HEIGHT - MARGIN_BOTTOM, MARGIN_TOP
    step = (x1 - x0) / max(1, len(xs))

    def sy(value):
        return y0 - (y0 - y1) * value / top_y

    x_ticks = [t for t in nice_ticks(top_x, 6) if t <= top_x * 1.0001]
    first_x = xs[0] if xs else 0.0

    def sx(value):
        # column i is centred on its slot; ticks are placed by time between first and last
        if len(xs) < 2:
            return x0 + step / 2
        return x0 + step / 2 + (x1 - x0 - step) * (value - first_x) / (top_x - first_x)

    out = [_axes(x0, x1, y0, y1, [t for t in x_ticks if t >= first_x] or [first_x],
                 y_ticks, lambda v: f"{v:g}", y_fmt, x_label, y_label, sx, sy)]
    bases = [0.0] * len(xs)
    label_slots: list[float] = []
    for s in stacks:
        rects = []
        for i, (_, value) in enumerate(s.points):
            if not value:
                continue
            top = sy(bases[i] + value)
            rects.append(f'<rect class="mark" x="{x0 + i * step + 0.5:.1f}" y="{top:.1f}" '
                         f'width="{max(0.5, step - 1):.1f}" height="{sy(bases[i]) - top:.1f}"/>')
            bases[i] += value
        if rects:
            out.append(f'<g data-series="{escape(s.name)}" fill="{fill(s.style)}" '
                       f'stroke="{colour(s.style)}" stroke-width="0.6">{"".join(rects)}</g>')
            last = next((i for i in range(len(xs) - 1, -1, -1) if s.points[i][1]), None)
            if last is not None:
                mid = sy(sum((o.points[last][1] or 0) for o in stacks[:stacks.index(s)])
                         + s.points[last][1] / 2)
                out.append(_text(x1 + 4, _free_slot(label_slots, mid + 4), s.name, "start",
                                 "direct"))
    return _frame(chart_id, title, "".join(out))


def heatmap(chart_id: str, title: str, row_labels: list[str], xs: list[float],
            rows: list[list[float | None]], x_label: str, y_label: str) -> str:
    """Rows (cores) x columns (samples), ratio 0..1 in viridis; equal neighbours are merged
    into one rect so a 60 s window of a 256-CPU host stays small."""
    count = len(row_labels)
    row_height = max(2.0, min(18.0, 260.0 / max(1, count)))
    plot_height = row_height * count
    height = int(MARGIN_TOP + plot_height + MARGIN_BOTTOM + 8)
    x0, x1 = MARGIN_LEFT, WIDTH - MARGIN_RIGHT
    y_top = MARGIN_TOP
    y0 = y_top + plot_height
    columns = len(xs)
    step = (x1 - x0) / max(1, columns)
    out = []
    label_every = max(1, math.ceil(count / 16))
    cells: dict[str, list[str]] = {}     # shade -> rects; one <g fill> per shade keeps it small
    for r, values in enumerate(rows):
        y = y_top + r * row_height
        if r % label_every == 0:
            out.append(_text(x0 - 6, y + row_height / 2 + 4, row_labels[r], "end", "tick"))
        start, current = 0, None
        for c in range(columns + 1):
            value = values[c] if c < columns and c < len(values) else None
            shade = sequential(value) if value is not None else None
            if c < columns and shade == current:
                continue
            if current is not None:
                cells.setdefault(current, []).append(
                    f'<rect x="{x0 + start * step:.1f}" y="{y:.1f}" '
                    f'width="{(c - start) * step:.1f}" height="{row_height:.1f}"/>')
            start, current = c, shade
    for shade, rects in cells.items():
        out.append(f'<g class="mark" fill="{shade}" data-cells="{len(rects)}">'
                   f'{"".join(rects)}</g>')
    first, last = (xs[0], xs[-1]) if xs else (0.0, 1.0)
    for value in [t for t in nice_ticks(last, 6) if first <= t <= last * 1.0001] or [first]:
        x = x0 + step / 2 + (x1 - x0 - step) * ((value - first) / (last - first)
                                                 if last > first else 0)
        out.append(f'<line class="axis" x1="{x:.1f}" x2="{x:.1f}" y1="{y0:.1f}" '
                   f'y2="{y0 + 4:.1f}"/>')
        out.append(_text(x, y0 + 16, f"{value:g}", "middle", "tick"))
    out.append(_text((x0 + x1) / 2, y0 + 34, x_label, "middle", "label"))
    out.append(_text(14, (y_top + y0) / 2, y_label, "middle", "label",
                     f' transform="rotate(-90 14 {(y_top + y0) / 2:.1f})"'))
    # colour key: 0% .. 100%, with the same steps the cells use
    key_x, key_h = x1 + 30, min(plot_height, 150.0)
    for i, shade in enumerate(reversed(VIRIDIS)):
        out.append(f'<rect x="{key_x}" y="{y_top + i * key_h / len(VIRIDIS):.1f}" width="14" '
                   f'height="{key_h / len(VIRIDIS) + 0.3:.1f}" fill="{shade}"/>')
    out.append(_text(key_x + 18, y_top + 9, "100% busy", "start", "tick"))
    out.append(_text(key_x + 18, y_top + key_h, "0% (idle)", "start", "tick"))
    return _frame(chart_id, title, "".join(out), height)


def bar_chart(chart_id: str, title: str, categories: list[str], groups: list[Bars],
              x_label: str, x_fmt: Formatter, capacities: list | None = None,
              x_max: float | None = None) -> str:
    """Horizontal grouped bars per category, a value label at each bar's end; `capacities`
    draws an outlined track behind the bars (a GPU's memory, for instance)."""
    values = [v for g in groups for v in g.values if v is not None]
    values += [c for c in capacities or [] if c is not None]
    ticks = nice_ticks(x_max if x_max is not None else (max(values) if values else 1.0))
    top = ticks[-1] or 1.0
    bar_h = 14.0
    row_h = bar_h * len(groups) + 10
    height = int(MARGIN_TOP + 12 + row_h * len(categories) + MARGIN_BOTTOM + 8)
    x0, x1 = 150, WIDTH - MARGIN_RIGHT
    y_top = MARGIN_TOP + 12
    y0 = y_top + row_h * len(categories)

    def sx(value):
        return x0 + (x1 - x0) * min(value, top) / top

    out = []
    for value in ticks:
        x = sx(value)
        out.append(f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{y_top}" y2="{y0:.1f}"/>')
        out.append(_text(x, y0 + 16, x_fmt(value), "middle", "tick"))
    out.append(_text((x0 + x1) / 2, y0 + 34, x_label, "middle", "label"))
    for index, name in enumerate(categories):
        y = y_top + index * row_h + 5
        out.append(_text(x0 - 6, y + row_h / 2, _clip(name, 22), "end", "tick"))
        if capacities and capacities[index] is not None:
            out.append(f'<rect class="capacity mark" data-series="capacity" x="{x0}" '
                       f'y="{y - 2:.1f}" width="{sx(capacities[index]) - x0:.1f}" '
                       f'height="{bar_h * len(groups) + 4:.1f}" fill="none" stroke="#000" '
                       f'stroke-dasharray="4 2"/>')
        for g_index, group in enumerate(groups):
            value = group.values[index]
            if value is None:
                out.append(_text(x0 + 4, y + g_index * bar_h + bar_h - 3, "n/a", "start", "tick"))
                continue
            width = max(0.0, sx(value) - x0)
            out.append(f'<rect class="mark" data-series="{escape(group.name)}" x="{x0}" '
                       f'y="{y + g_index * bar_h:.1f}" width="{max(width, 1.0):.1f}" '
                       f'height="{bar_h - 2:.1f}" fill="{fill(group.style)}" '
                       f'stroke="{colour(group.style)}"/>')
            label = group.labels[index] if index < len(group.labels) else x_fmt(value)
            out.append(_text(x0 + width + 4, y + g_index * bar_h + bar_h - 4, label, "start",
                             "value"))
    out.append(f'<line class="axis" x1="{x0}" x2="{x0}" y1="{y_top}" y2="{y0:.1f}"/>')
    # The legend sits above the plot, where no bar or value label can reach it.
    legend, lx = [], x0
    keys = [(fill(g.style), colour(g.style), "", g.name) for g in groups]
    if capacities:
        keys.append(("none", "#000", ' stroke-dasharray="4 2"', "capacity"))
    for paint, stroke, dash, name in keys:
        legend.append(f'<rect x="{lx}" y="3" width="12" height="12" fill="{paint}" '
                      f'stroke="{stroke}"{dash}/>')
        legend.append(_text(lx + 16, 13, name, "start", "tick"))
        lx += 30 + 6.5 * len(name)
    return _frame(chart_id, title, "".join(out + legend), height, axis_max=top)


def _clip(text: str, length: int) -> str:
    return text if len(text) <= length else text[:length - 1] + "…"
