"""Plots of the experiment tools: the LR range test, run comparison and the sweep view. Each figure is a Bokeh
figure (interactive where BokehJS runs) with a static SVG drawn in Python beside it (GitHub, untrusted notebooks)."""

from __future__ import annotations

import html
import json
import math
import uuid
from typing import Any

from bokeh.models import ColumnDataSource, HoverTool, Label, Span
from bokeh.plotting import figure

__all__ = ["lr_find_figure", "show_lr_find", "lines_svg", "bundle", "display_figure", "COLOURS"]

COLOURS = ["#1565c0", "#c62828", "#2e7d32", "#ef6c00", "#6a1b9a", "#00838f", "#ad1457", "#4e342e", "#546e7a"]


def _style(f) -> None:
    f.toolbar.logo = None
    f.title.text_font_size = "11pt"
    f.title.text_font_style = "normal"
    f.grid.grid_line_alpha = 0.4
    f.outline_line_color = None


# --------------------------------------------------------------------------------------------- LR finder
def lr_find_figure(result, *, width: int = 620, height: int = 320):
    """Loss against lr (log axis): raw and smoothed, the suggestions as vertical lines."""
    n = len(result.smoothed)
    f = figure(
        title=f"LR range test ({result.stopped}): lr {result.suggestion:.2e}"
        if result.suggestion
        else "LR range test",
        x_axis_type="log",
        width=width,
        height=height,
        x_axis_label="learning rate",
        y_axis_label="loss",
        tools="pan,wheel_zoom,box_zoom,reset,save",
    )
    _style(f)
    raw = ColumnDataSource({"lr": result.lrs[:n], "loss": result.losses[:n]}, name="raw")
    smooth = ColumnDataSource({"lr": result.lrs[:n], "loss": result.smoothed}, name="smoothed")
    f.line("lr", "loss", source=raw, color="#90caf9", line_width=1, legend_label="loss")
    f.line("lr", "loss", source=smooth, color=COLOURS[0], line_width=2, legend_label="smoothed")
    for name, value, colour in (("valley", result.valley, COLOURS[2]), ("steepest", result.steepest, COLOURS[3])):
        if value:
            f.add_layout(Span(location=value, dimension="height", line_color=colour, line_dash="dashed", line_width=2))
            f.add_layout(
                Label(
                    x=value,
                    y=height - 90,
                    y_units="screen",
                    text=f"{name} {value:.1e}",
                    text_color=colour,
                    text_font_size="9pt",
                    x_offset=4,
                )
            )
    if result.smoothed:
        lo, hi = min(result.smoothed), max(result.smoothed[0], min(result.smoothed) * 1.5)
        f.y_range.start, f.y_range.end = lo - 0.05 * (hi - lo), hi + 0.25 * (hi - lo)
    f.add_tools(HoverTool(tooltips=[("lr", "@lr{0.00e0}"), ("loss", "@loss{0.0000}")]))
    f.legend.location = "bottom_left"
    return f


def lr_find_svg(result) -> str:
    n = len(result.smoothed)
    marks = [(v, name) for name, v in (("valley", result.valley), ("steepest", result.steepest)) if v]
    return lines_svg(
        "LR range test" + (f": lr {result.suggestion:.2e}" if result.suggestion else ""),
        [
            ("loss", result.lrs[:n], result.losses[:n], "#90caf9"),
            ("smoothed", result.lrs[:n], result.smoothed, COLOURS[0]),
        ],
        log_x=True,
        vlines=marks,
        x_label="learning rate",
    )


def show_lr_find(result) -> None:
    """Display the range test's plot and its suggestions in the notebook."""
    display_figure(lr_find_figure(result), lr_find_svg(result), str(result))


# --------------------------------------------------------------------------------------------- output
def bundle(fig, svg: str, text: str) -> dict[str, str]:
    """A display bundle: BokehJS inline + the figure (the SVG shows until BokehJS has drawn it), and the SVG."""
    from bokeh.embed import json_item

    from .transport import bokehjs_bundle

    eid = f"nbft-x-{uuid.uuid4().hex[:12]}"
    item = json.dumps(json_item(fig, eid))
    body = (
        bokehjs_bundle()["text/html"]
        + f'<div id="{eid}"></div><div id="{eid}-static">{svg}</div>'
        + "<script>(function(){var item="
        + item
        + ";var n=0;function go(){if(window.Bokeh&&window.Bokeh.embed&&window.Bokeh.embed.embed_item){"
        + f"var s=document.getElementById('{eid}-static');if(s)s.style.display='none';"
        + "window.Bokeh.embed.embed_item(item);}else if(n++<40){setTimeout(go,100);}}go();})();</script>"
    )
    return {"text/html": body, "image/svg+xml": svg, "text/plain": text}


def display_figure(fig, svg: str, text: str) -> None:
    from IPython.display import display

    display(bundle(fig, svg, text), raw=True)


# --------------------------------------------------------------------------------------------- static SVG
def _fmt(v: float) -> str:
    a = abs(v)
    if a and (a < 1e-3 or a >= 1e5):
        return f"{v:.0e}"
    return f"{v:.3g}"


def lines_svg(
    title: str,
    series: list[tuple[str, list, list, str]],
    *,
    log_x: bool = False,
    vlines: list[tuple[float, str]] = (),
    x_label: str = "step",
    width: int = 620,
    height: int = 300,
) -> str:
    """Lines (label, xs, ys, colour) on one chart; non-finite points are gaps; `vlines` are marked x values."""
    tx = (lambda x: math.log10(x)) if log_x else (lambda x: x)
    pts = [[(tx(x), y) for x, y in zip(xs, ys) if _finite(x, y) and (not log_x or x > 0)] for _, xs, ys, _ in series]
    allx = [p[0] for s in pts for p in s] + [tx(v) for v, _ in vlines if not log_x or v > 0]
    ally = [p[1] for s in pts for p in s]
    x0, x1 = (min(allx), max(allx)) if allx else (0.0, 1.0)
    y0, y1 = (min(ally), max(ally)) if ally else (0.0, 1.0)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    left, right, top, bottom = 56, 12, 28, 34
    pw, ph = width - left - right, height - top - bottom

    def sx(x):
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y):
        return top + ph - (y - y0) / (y1 - y0) * ph

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="16" font-size="12">{html.escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#ccc"/>',
    ]
    for i in range(5):
        yv = y0 + (y1 - y0) * i / 4
        out.append(f'<text x="{left - 4}" y="{sy(yv) + 3:.1f}" font-size="9" text-anchor="end">{_fmt(yv)}</text>')
        xv = x0 + (x1 - x0) * i / 4
        label = _fmt(10**xv) if log_x else _fmt(xv)
        out.append(f'<text x="{sx(xv):.1f}" y="{top + ph + 12}" font-size="9" text-anchor="middle">{label}</text>')
    out.append(
        f'<text x="{left + pw / 2}" y="{height - 6}" font-size="10" text-anchor="middle">{html.escape(x_label)}</text>'
    )
    for (_label, _, _, colour), s in zip(series, pts):
        if len(s) >= 2:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s)
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.6"/>')
        elif s:
            out.append(f'<circle cx="{sx(s[0][0]):.1f}" cy="{sy(s[0][1]):.1f}" r="2.5" fill="{colour}"/>')
    for v, label in vlines:
        if log_x and v <= 0:
            continue
        x = sx(tx(v))
        out.append(
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}" stroke="#888" stroke-dasharray="4 3"/>'
        )
        out.append(f'<text x="{x + 3:.1f}" y="{top + 10}" font-size="9" fill="#555">{html.escape(label)}</text>')
    ly = top + 12
    for label, _, _, colour in series[:12]:
        out.append(
            f'<text x="{left + pw - 4}" y="{ly}" font-size="9" text-anchor="end" fill="{colour}">'
            f"{html.escape(str(label))}</text>"
        )
        ly += 11
    out.append("</svg>")
    return "".join(out)


def _finite(x: Any, y: Any) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (x, y))


# --------------------------------------------------------------------------------------------- comparison
def compare_figure(runs, metric: str, *, width: int = 480, height: int = 300):
    """Loss (left) and `metric` (right) of every run, one colour per run, live changes as markers on the loss."""
    from bokeh.layouts import row

    loss = figure(
        title="Training loss",
        width=width,
        height=height,
        x_axis_label="step",
        y_axis_label="loss",
        tools="pan,wheel_zoom,box_zoom,reset,save",
    )
    ev = figure(
        title=metric,
        width=width,
        height=height,
        x_axis_label="step",
        y_axis_label=metric,
        tools="pan,wheel_zoom,box_zoom,reset,save",
        x_range=loss.x_range,
    )
    for f in (loss, ev):
        _style(f)
    for i, r in enumerate(runs):
        colour = COLOURS[i % len(COLOURS)]
        src = ColumnDataSource({"step": list(r.loss[0]), "value": list(r.loss[1])}, name=f"loss:{r.name}")
        loss.line("step", "value", source=src, color=colour, line_width=1.6, legend_label=r.name)
        xs, ys = r.evals.get(metric, ([], []))
        esrc = ColumnDataSource({"step": list(xs), "value": list(ys)}, name=f"eval:{r.name}")
        ev.line("step", "value", source=esrc, color=colour, line_width=2, legend_label=r.name)
        ev.scatter("step", "value", source=esrc, color=colour, size=5)
        if r.changes:
            at = dict(zip(*r.loss))
            marks = ColumnDataSource(
                {
                    "step": [c["step"] for c in r.changes],
                    "value": [at.get(c["step"], r.loss[1][-1] if r.loss[1] else 0.0) for c in r.changes],
                    "label": [c["label"] for c in r.changes],
                },
                name=f"changes:{r.name}",
            )
            loss.scatter("step", "value", source=marks, color=colour, size=10, marker="triangle")
    loss.add_tools(HoverTool(tooltips=[("step", "@step"), ("value", "@value{0.0000}"), ("change", "@label")]))
    ev.add_tools(HoverTool(tooltips=[("step", "@step"), (metric, "@value{0.0000}")]))
    for f in (loss, ev):
        f.legend.location = "top_right"
        f.legend.click_policy = "hide"
    return row(loss, ev)


def compare_svg(runs, metric: str) -> str:
    loss = [(r.name, r.loss[0], r.loss[1], COLOURS[i % len(COLOURS)]) for i, r in enumerate(runs)]
    ev = [(r.name, *r.evals.get(metric, ([], [])), COLOURS[i % len(COLOURS)]) for i, r in enumerate(runs)]
    marks = [(c["step"], c["label"]) for r in runs for c in r.changes]
    left = lines_svg("Training loss", loss, vlines=marks, width=480)
    right = lines_svg(metric, ev, width=480)
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" width="960" height="300">'
        f'<g>{left}</g><g transform="translate(480,0)">{right}</g></svg>'
    )
