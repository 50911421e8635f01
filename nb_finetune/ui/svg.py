"""A static SVG of a run's curves, drawn in Python (no plotting library, no JavaScript).

It is the part of a run's final output that shows everywhere: GitHub, nbviewer, untrusted notebooks, a
reopened notebook without the kernel. Series are thinned to at most `MAX_POINTS` points per line. The task's
figures of the last evaluation (`EvalEnded.extras`: a confusion matrix, F1 per entity type) follow the curves,
two per row; its tables (a causal LM's generations) come last, across the whole width.
"""

from __future__ import annotations

import html
import math

from .state import lr_legend

__all__ = ["run_svg", "fmt_cell", "cell_colour", "nice_ticks", "tick_labels", "title_lines", "FROZEN"]

MAX_POINTS = 400
FROZEN = "#9aa5ad"  # a frozen layer group, in the layer map and the learning-rate plot (live and here)
_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
_STATE_COLOURS = {"finished": "#2e7d32", "stopped": "#ef6c00", "failed": "#c62828"}


def _finite(xs, ys):
    pts = [
        (float(x), float(y))
        for x, y in zip(xs, ys)
        if isinstance(y, (int, float)) and math.isfinite(y) and isinstance(x, (int, float))
    ]
    if len(pts) > MAX_POINTS:
        stride = len(pts) / MAX_POINTS
        pts = [pts[int(i * stride)] for i in range(MAX_POINTS)] + [pts[-1]]
    return pts


def nice_ticks(lo: float, hi: float, n: int = 5) -> tuple[float, float, list[float]]:
    """Round tick values (1, 2, 2.5, 5 x 10^k apart) covering [lo, hi]: (axis start, axis end, ticks)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return 0.0, 1.0, [0.0, 1.0]
    if hi <= lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(1, n - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = round(math.floor(lo / step + 1e-9) * step, 12)
    end = round(math.ceil(hi / step - 1e-9) * step, 12)
    ticks = [round(start + i * step, 12) for i in range(int(round((end - start) / step)) + 1)]
    return start, end, ticks


def _fmt(v: float) -> str:
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1e5 or a < 1e-3:
        mant, exp = f"{v:.2e}".split("e")
        return f"{mant.rstrip('0').rstrip('.')}e{int(exp)}"
    if float(v).is_integer():
        return f"{int(v):,}"
    return f"{v:.4g}"


def tick_labels(ticks: list[float]) -> list[str]:
    """An axis' tick labels in one notation: all scientific when one needs it ("4e-4, 6e-4, 8e-4, 1e-3", never
    "8e-4, 0.001"), else as `_fmt` writes them."""
    if not any(v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3) for v in ticks):
        return [_fmt(v) for v in ticks]
    out = []
    for v in ticks:
        if v == 0:
            out.append("0")
            continue
        mant, exp = f"{v:.2e}".split("e")
        out.append(f"{mant.rstrip('0').rstrip('.')}e{int(exp)}")
    return out


def _panel(x0, y0, w, h, title, lines, markers=(), y_label="", notes=()):
    """One chart: `lines` = [(label, colour, [(x, y)], width, opacity)], markers = [(x, y, label)], `notes`: legend
    entries without a line of their own [(label, colour)], drawn dotted (the frozen groups of the lr plot)."""
    out = [f'<g transform="translate({x0},{y0})">']
    out.append(f'<text x="{w / 2}" y="14" text-anchor="middle" font-size="12" fill="#333">{html.escape(title)}</text>')
    left, top, right, bottom = 52, 24, 10, 30
    pw, ph = w - left - right, h - top - bottom
    pts = [p for _, _, ps, _, _ in lines for p in ps] + [(m[0], m[1]) for m in markers]
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ddd"/>')
    if not pts:
        out.append(
            f'<text x="{left + pw / 2}" y="{top + ph / 2}" text-anchor="middle" font-size="11" fill="#999">no data</text>'
        )
        out.append("</g>")
        return out
    # the step axis starts and ends where the data does, the value axis at round values around it
    xmin, xmax = min(p[0] for p in pts), max(p[0] for p in pts)
    if xmax <= xmin:
        xmin, xmax = xmin - 1, xmax + 1
    ymin, ymax, yticks = nice_ticks(min(p[1] for p in pts), max(p[1] for p in pts))
    xticks = [x for x in nice_ticks(xmin, xmax, 6)[2] if xmin <= x <= xmax]

    def sx(x):
        return left + (x - xmin) / (xmax - xmin) * pw

    def sy(y):
        return top + ph - (y - ymin) / (ymax - ymin) * ph

    for yv, label in zip(yticks, tick_labels(yticks)):  # grid and tick labels
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(yv):.1f}" y2="{sy(yv):.1f}" stroke="#eee"/>')
        out.append(
            f'<text x="{left - 4}" y="{sy(yv) + 3:.1f}" text-anchor="end" font-size="9" fill="#666">{label}</text>'
        )
    for xv in xticks:
        out.append(
            f'<text x="{sx(xv):.1f}" y="{top + ph + 12}" text-anchor="middle" font-size="9" fill="#666">'
            f"{_fmt(xv)}</text>"
        )
    out.append(
        f'<text x="{left + pw / 2}" y="{h - 4}" text-anchor="middle" font-size="9" fill="#666">step</text>'
        f'<text x="10" y="{top + ph / 2}" font-size="9" fill="#666" text-anchor="middle" '
        f'transform="rotate(-90 10 {top + ph / 2})">{html.escape(y_label)}</text>'
    )
    legend = [(label, colour, False) for label, colour, ps, _, _ in lines if ps and label]
    legend += [(label, colour, True) for label, colour in notes]
    for _label, colour, ps, width, opacity in lines:
        if not ps:
            continue
        d = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in ps)
        if len(ps) == 1:
            out.append(f'<circle cx="{sx(ps[0][0]):.1f}" cy="{sy(ps[0][1]):.1f}" r="3" fill="{colour}"/>')
        else:
            out.append(
                f'<polyline points="{d}" fill="none" stroke="{colour}" stroke-width="{width}" '
                f'stroke-opacity="{opacity}" stroke-linejoin="round"/>'
            )
    out += _legend(legend, left + 6, top + 6, left + pw)
    for x, y, label in markers:
        cx, cy = sx(x), sy(y)
        out.append(
            f'<path d="M{cx - 5:.1f},{cy - 12:.1f} L{cx + 5:.1f},{cy - 12:.1f} L{cx:.1f},{cy - 3:.1f} Z" '
            f'fill="#ef6c00"><title>{html.escape(label)}</title></path>'
        )
    out.append("</g>")
    return out


def _legend(entries, x0: float, y0: float, right: float) -> list[str]:
    """Legend entries [(label, colour, dotted)] in rows from (x0, y0), a new row where the next would pass `right`;
    on a light backing, so a line under it does not cross the text."""
    placed, x, y = [], x0, y0
    for label, colour, dotted in entries:
        width = 20 + 6 * len(label)
        if x > x0 and x + width > right:
            x, y = x0, y + 12
        placed.append((x, y, label, colour, dotted))
        x += width
    if not placed:
        return []
    wide = max(px + 20 + 6 * len(label) for px, _, label, _, _ in placed)
    out = [
        f'<rect x="{x0 - 3}" y="{y0 - 4}" width="{min(wide, right) - x0 + 3}" height="{y - y0 + 12}" fill="#fafafa" '
        f'fill-opacity="0.85" rx="2"/>'
    ]
    for x, y, label, colour, dotted in placed:
        if dotted:
            out.append(
                f'<line x1="{x}" x2="{x + 10}" y1="{y + 1.5}" y2="{y + 1.5}" stroke="{colour}" stroke-width="2" '
                f'stroke-dasharray="2,2"/>'
            )
        else:
            out.append(f'<rect x="{x}" y="{y}" width="10" height="3" fill="{colour}"/>')
        out.append(f'<text x="{x + 13}" y="{y + 4}" font-size="9" fill="#444">{html.escape(label)}</text>')
    return out


def title_lines(title: str, chars: int) -> list[str]:
    """A figure title as lines of at most `chars` characters, cut at words: a parenthesised explanation goes to its
    own lines ("Confusion matrix", "rows: true, columns: predicted"), so a narrow figure never cuts its title."""
    title = " ".join(str(title).split())
    head, sep, rest = title.partition(" (")
    parts = [head, rest[:-1] if rest.endswith(")") else rest] if sep else [title]
    lines: list[str] = []
    for part in parts:
        line = ""
        for word in part.split(" "):
            if line and len(line) + 1 + len(word) > chars:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        if line:
            lines.append(line)
    return lines or [""]


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def fmt_cell(v) -> str:
    """A matrix cell or bar value as text: counts as integers, rates with two digits."""
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        return ""
    return str(int(v)) if float(v).is_integer() else f"{v:.2g}"


def cell_colour(frac: float) -> str:
    """A matrix cell's colour: white-blue for 0, dark blue for the largest value."""
    frac = min(1.0, max(0.0, frac)) if math.isfinite(frac) else 0.0
    r, g, b = (round(lo + (hi - lo) * frac) for lo, hi in zip((247, 251, 255), (8, 81, 156)))
    return f"#{r:02x}{g:02x}{b:02x}"


def _num(v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return math.nan
    return float(v)


def _matrix(x0, y0, w, h, entry) -> list[str]:
    """A heatmap with the counts as text: rows top-down, columns left-right."""
    rows = [str(r) for r in entry.get("rows") or []]
    cols = [str(c) for c in entry.get("cols") or []]
    values = entry.get("values") or []
    out = [f'<g transform="translate({x0},{y0})">']
    head, *sub = title_lines(str(entry.get("title") or ""), int(w / 6.5))
    out.append(f'<text x="{w / 2}" y="14" text-anchor="middle" font-size="12" fill="#333">{html.escape(head)}</text>')
    for i, line in enumerate(sub):  # the explanation, smaller, under the title
        out.append(
            f'<text x="{w / 2}" y="{26 + 11 * i}" text-anchor="middle" font-size="9" fill="#666">'
            f"{html.escape(line)}</text>"
        )
    if not rows or not cols:
        out.append("</g>")
        return out
    y_label, x_label = str(entry.get("y_label") or ""), str(entry.get("x_label") or "")
    left = min(100, 12 + 6 * max(len(r) for r in rows)) + (14 if y_label else 0)
    top, bottom = 24 + 11 * len(sub), 46 + (12 if x_label else 0)
    cell = max(2.0, min((w - left - 10) / len(cols), (h - top - bottom) / len(rows), 40.0))
    grid = [
        [_num(line[j]) if isinstance(line, list) and j < len(line) else math.nan for j in range(len(cols))]
        for line in (values[i] if i < len(values) else [] for i in range(len(rows)))
    ]
    peak = max((v for line in grid for v in line if math.isfinite(v)), default=0.0) or 1.0
    text = cell >= 14 and len(rows) * len(cols) <= 400
    for i, r in enumerate(rows):
        y = top + i * cell
        out.append(
            f'<text x="{left - 4}" y="{y + cell / 2 + 3:.1f}" text-anchor="end" font-size="9" fill="#555">'
            f"{html.escape(_short(r, 16))}</text>"
        )
        for j, v in enumerate(grid[i]):
            frac = v / peak if math.isfinite(v) else 0.0
            x = left + j * cell
            out.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{cell:.1f}" height="{cell:.1f}" fill="{cell_colour(frac)}" '
                f'stroke="white"><title>{html.escape(r)} / {html.escape(cols[j])}: '
                f"{fmt_cell(v) or '-'}</title></rect>"
            )
            if text and math.isfinite(v):
                out.append(
                    f'<text x="{x + cell / 2:.1f}" y="{y + cell / 2 + 3:.1f}" text-anchor="middle" font-size="9" '
                    f'fill="{"white" if frac > 0.55 else "#333"}">{fmt_cell(v)}</text>'
                )
    base = top + len(rows) * cell + 10
    for j, c in enumerate(cols):
        cx = left + (j + 0.5) * cell
        out.append(
            f'<text x="{cx:.1f}" y="{base:.1f}" font-size="9" fill="#555" text-anchor="end" '
            f'transform="rotate(-40 {cx:.1f} {base:.1f})">{html.escape(_short(c, 12))}</text>'
        )
    mid_x, mid_y = left + len(cols) * cell / 2, top + len(rows) * cell / 2
    if x_label:
        out.append(
            f'<text x="{mid_x:.1f}" y="{base + 40:.1f}" text-anchor="middle" font-size="9" fill="#666">'
            f"{html.escape(x_label)}</text>"
        )
    if y_label:
        out.append(
            f'<text x="8" y="{mid_y:.1f}" text-anchor="middle" font-size="9" fill="#666" '
            f'transform="rotate(-90 8 {mid_y:.1f})">{html.escape(y_label)}</text>'
        )
    out.append("</g>")
    return out


def _bars(x0, y0, w, h, entry) -> list[str]:
    """Horizontal bars from 0, one per label, the value written at the bar's end."""
    labels = [str(x) for x in entry.get("labels") or []]
    values = [_num(v) for v in entry.get("values") or []][: len(labels)]
    out = [f'<g transform="translate({x0},{y0})">']
    out.append(
        f'<text x="{w / 2}" y="14" text-anchor="middle" font-size="12" fill="#333">'
        f"{html.escape(str(entry.get('title') or ''))}</text>"
    )
    if not labels:
        out.append("</g>")
        return out
    left = min(120, 12 + 6 * max(len(x) for x in labels))
    top, right = 24, 40
    bar = max(2.0, min(18.0, (h - top - 10) / len(labels)))
    finite = [abs(v) for v in values if math.isfinite(v)]
    peak = max(finite, default=0.0) or 1.0
    out.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + bar * len(labels)}" stroke="#999"/>')
    for i, label in enumerate(labels):
        v = values[i] if i < len(values) else math.nan
        y = top + i * bar
        length = (w - left - right) * (max(v, 0.0) / peak if math.isfinite(v) else 0.0)
        out.append(
            f'<text x="{left - 4}" y="{y + bar / 2 + 3:.1f}" text-anchor="end" font-size="9" fill="#555">'
            f"{html.escape(_short(label, 20))}</text>"
            f'<rect x="{left}" y="{y + bar * 0.12:.1f}" width="{length:.1f}" height="{bar * 0.76:.1f}" fill="#1565c0">'
            f"<title>{html.escape(label)}: {_fmt(v) if math.isfinite(v) else '-'}</title></rect>"
        )
        if math.isfinite(v) and bar >= 8:
            out.append(
                f'<text x="{left + length + 3:.1f}" y="{y + bar / 2 + 3:.1f}" font-size="9" fill="#333">'
                f"{_fmt(v)}</text>"
            )
    out.append("</g>")
    return out


TABLE_ROWS = 12  # rows of a task's table in the snapshot (the HTML summary shows more)


def _table_height(entry) -> int:
    return 24 + 16 * (1 + min(TABLE_ROWS, len(entry.get("rows") or []))) + 8


def _table(x0, y0, w, entry) -> list[str]:
    """A task's "table" entry (generations: prompt / first / latest) as rows of text, one column per field; a cell
    too long for its column is cut with "…" and keeps its whole text as the hover title."""
    cols = [str(c) for c in entry.get("columns") or []]
    rows = [r for r in entry.get("rows") or [] if isinstance(r, (list, tuple))][:TABLE_ROWS]
    out = [f'<g transform="translate({x0},{y0})">']
    out.append(f'<text x="8" y="14" font-size="12" fill="#333">{html.escape(str(entry.get("title") or ""))}</text>')
    if not cols:
        out.append("</g>")
        return out
    left, top = 8, 24
    col_w = (w - 2 * left) / len(cols)
    chars = max(4, int(col_w / 5.6))  # 9px sans-serif: about 5.6px a character
    out.append(f'<line x1="{left}" x2="{w - left}" y1="{top + 8}" y2="{top + 8}" stroke="#ddd"/>')
    for j, c in enumerate(cols):
        out.append(
            f'<text x="{left + j * col_w:.1f}" y="{top + 4}" font-size="9" font-weight="bold" fill="#444">'
            f"{html.escape(_short(c, chars))}</text>"
        )
    for i, r in enumerate(rows):
        y = top + 4 + 16 * (i + 1)
        for j in range(len(cols)):
            text = " ".join(str(r[j] if j < len(r) else "").split())  # one line: line breaks read as spaces
            out.append(
                f'<text x="{left + j * col_w:.1f}" y="{y}" font-size="9" fill="#333">'
                f"<title>{html.escape(text)}</title>{html.escape(_short(text, chars))}</text>"
            )
    out.append("</g>")
    return out


def _extras_height(entry) -> int:
    if entry.get("kind") == "matrix":
        n = max(len(entry.get("rows") or []), len(entry.get("cols") or []), 1)
        sub = len(title_lines(str(entry.get("title") or ""), int(460 / 6.5))) - 1
        return int(min(420, max(160, 90 + 28 * n))) + 11 * sub
    return int(min(420, max(100, 40 + 18 * len(entry.get("labels") or []))))


def run_svg(series: dict[str, dict[str, list]], *, title: str = "", state: str = "", note: str = "") -> str:
    """Loss, eval metrics, learning rate and throughput as one SVG (2 x 2 charts), then the task's figures."""
    w, h = 460, 220
    loss, ev, lr, speed = (series.get(k, {}) for k in ("loss", "eval", "lr", "speed"))
    mk = series.get("markers", {})
    markers = list(zip(mk.get("step", []), mk.get("y", []), mk.get("label", [])))
    eval_lines = [
        (k.removeprefix("eval_"), _COLOURS[i % len(_COLOURS)], _finite(ev.get("step", []), ev[k]), 2, 1)
        for i, k in enumerate(sorted(k for k in ev if k.startswith("eval_")))
    ]
    # as the live plot: groups frozen at the end greyed and named so, one dotted entry listing the frozen groups
    layers = series.get("layers", {})
    frozen = [g for g, st in zip(layers.get("group", []), layers.get("state", [])) if st == "frozen"]
    groups = [k[2:] for k in lr if k.startswith("g:")]
    base, names, frozen_note = lr_legend(groups, frozen)
    lr_lines = [(base, _COLOURS[0], _finite(lr.get("step", []), lr.get("lr", [])), 2, 1)] + [
        (
            names[g],
            FROZEN if g in frozen else _COLOURS[(i + 1) % len(_COLOURS)],
            _finite(lr["step"], lr[f"g:{g}"]),
            1,
            1,
        )
        for i, g in enumerate(groups)
    ]
    head = 26 if (title or state) else 0
    extras = [
        x for x in (series.get("extras") or {}).values() if isinstance(x, dict) and x.get("kind") in ("matrix", "bars")
    ]
    rows = [extras[i : i + 2] for i in range(0, len(extras), 2)]
    row_heights = [max(_extras_height(x) for x in r) for r in rows]
    tables = [x for x in (series.get("extras") or {}).values() if isinstance(x, dict) and x.get("kind") == "table"]
    total = 2 * h + head + sum(row_heights) + sum(_table_height(t) for t in tables)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * w}" height="{total}" '
        f'viewBox="0 0 {2 * w} {total}" font-family="sans-serif">',
        f'<rect width="{2 * w}" height="{total}" fill="white"/>',
    ]
    if head:
        colour = _STATE_COLOURS.get(state, "#1565c0")
        parts.append(
            f'<text x="8" y="18" font-size="13" fill="#222">{html.escape(title)}</text>'
            f'<text x="{2 * w - 8}" y="18" font-size="12" text-anchor="end" fill="{colour}" font-weight="bold">'
            f"{html.escape(state + (' — ' + note if note else ''))}</text>"
        )
    loss_steps = loss.get("step", [])
    parts += _panel(
        0,
        head,
        w,
        h,
        "Training loss",
        [
            ("raw", "#90caf9", _finite(loss_steps, loss.get("loss", [])), 1, 0.8),
            ("smoothed", "#1565c0", _finite(loss_steps, loss.get("smooth", [])), 2, 1),
        ],
        markers,
        "loss",
    )
    parts += _panel(w, head, w, h, "Evaluation", eval_lines, (), "metric")
    notes = [(frozen_note, FROZEN)] if frozen_note else []
    parts += _panel(0, head + h, w, h, "Learning rate", lr_lines, (), "lr", notes)
    parts += _panel(
        w,
        head + h,
        w,
        h,
        "Throughput",
        [("samples/s", "#1565c0", _finite(speed.get("step", []), speed.get("samples_per_s", [])), 2, 1)],
        (),
        "samples/s",
    )
    y = head + 2 * h
    for r, rh in zip(rows, row_heights):
        for i, entry in enumerate(r):
            draw = _matrix if entry["kind"] == "matrix" else _bars
            parts += draw(i * w, y, w, rh, entry)
        y += rh
    for entry in tables:  # the full width: a causal LM's generations read across
        parts += _table(0, y, 2 * w, entry)
        y += _table_height(entry)
    parts.append("</svg>")
    return "".join(parts)
