"""The run's Bokeh figures, fed only with new points (`ColumnDataSource.stream` with `rollover`).

One writer: `PlotSet.apply()` is called by the panel's pump with what `PanelState.take()` returned, under
`PlotSet.lock`, which jupyter_bokeh's browser-side write-backs take too (see transport.py). The training thread
never gets here.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from bokeh.core.properties import value
from bokeh.layouts import column, gridplot, row
from bokeh.models import (
    ColumnDataSource,
    CustomJSTickFormatter,
    DataRange1d,
    FactorRange,
    HoverTool,
    Label,
    LegendItem,
    LinearAxis,
    Range1d,
)
from bokeh.plotting import figure

from .state import Points, fmt_count, lr_legend
from .svg import FROZEN, cell_colour, fmt_cell, title_lines

# learning-rate ticks as people write them: "0", "5e-4", "1e-3", "2.5e-5" (not "0.0e+0", "1.0e-3")
LR_TICK_JS = """
if (tick === 0) { return "0"; }
const [m, e] = tick.toExponential().split("e");
const mant = String(parseFloat(Number(m).toPrecision(3)));
const exp = parseInt(e, 10);
return exp === 0 ? mant : mant + "e" + exp;
"""

__all__ = ["PlotSet", "FROZEN", "TRAINABLE", "is_score", "matrix_cells"]

# Okabe-Ito, a colour-blind-safe palette; every colour reads on JupyterLab's light and dark backgrounds
PALETTE = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#999999")
TRAINABLE = "#009e73"
RAW = "#56b4e9"
SMOOTH = "#0072b2"
MARKER = "#d55e00"
INK = "#808080"  # axis, tick and title text: mid grey reads on white and on JupyterLab's dark theme alike
ROLLOVER = 20_000  # points kept per series in the live plots
MAX_EVAL_LINES = 10  # lines in the evaluation plot (per-label metrics go to the task's bars, see state.main_metrics)
EVAL_MIN_SPAN = 0.02  # an evaluation axis spans at least this share of its largest value (see PlotSet._eval_spans)
MATRIX_TEXT_CELLS = 400  # a matrix with more cells shows colours only (the counts are in the hover)
_TOOLS = "pan,wheel_zoom,box_zoom,reset,save"
MIN_W, MAX_W = 300, 760  # a time plot's width range: two per row fill the output, never wider than reads well
LAYER_W = 300  # the layer map keeps one width (it sits between the freezing and hyperparameter columns)


def anchor(f):
    """Two invisible points at (0, 0) and (1, 1) the figure's auto ranges compute from until its first data.
    BokehJS cannot set a range that has no finite data: it logs "could not set initial ranges" and tries again at
    every repaint (126 times in one 150-step run). `PlotSet` empties the anchor when the figure's data comes, so
    it never stretches a range that has data."""
    src = ColumnDataSource({"x": [0.0, 1.0], "y": [0.0, 1.0]})
    r = f.scatter("x", "y", source=src, size=1, fill_alpha=0, line_alpha=0)
    r.level = "underlay"
    return src, r


def is_score(name: str, values) -> bool:
    """A metric drawn against the 0-1 axis (accuracy, F1, exact match); losses and errors on any scale (loss, mse,
    perplexity) get the second axis, as `Task.higher_is_better` treats every `*loss*` as lower-is-better."""
    vals = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return "loss" not in name and all(0.0 <= v <= 1.0 for v in vals)


def matrix_cells(entry: dict[str, Any]) -> dict[str, list]:
    """A matrix extras entry as one row per cell: x (column label), y (row label), value, text, colours."""
    rows = [str(r) for r in entry.get("rows") or []]
    cols = [str(c) for c in entry.get("cols") or []]
    values = entry.get("values") or []
    cells: dict[str, list] = {"x": [], "y": [], "value": [], "text": [], "color": [], "text_color": []}
    flat = [_f(v) for line in values for v in (line if isinstance(line, list) else [])]
    top = max((v for v in flat if math.isfinite(v)), default=0.0) or 1.0
    for i, r in enumerate(rows):
        line = values[i] if i < len(values) and isinstance(values[i], list) else []
        for j, c in enumerate(cols):
            v = _f(line[j]) if j < len(line) else math.nan
            frac = v / top if math.isfinite(v) else 0.0
            cells["x"].append(c)
            cells["y"].append(r)
            cells["value"].append(v)
            cells["text"].append(fmt_cell(v))
            cells["color"].append(cell_colour(frac))
            cells["text_color"].append("white" if frac > 0.55 else "#333333")
    return cells


def layer_bar(params) -> float:
    """A layer group's bar length in the layer map: the square root of its parameter count."""
    return math.sqrt(max(0.0, float(params or 0)))


def bar_rows(entry: dict[str, Any]) -> dict[str, list]:
    labels = [str(x) for x in entry.get("labels") or []]
    values = [_f(v) for v in entry.get("values") or []]
    values = (values + [math.nan] * len(labels))[: len(labels)]
    return {"label": labels, "value": values, "text": [fmt_cell(v) for v in values]}


def _fig(title: str, *, width: int, height: int, y_label: str = "", **kw):
    f = figure(
        title=title,
        width=width,  # the starting width; the figure stretches to its share of the output (MIN_W..MAX_W)
        height=height,
        sizing_mode="stretch_width",
        min_width=MIN_W,
        max_width=MAX_W,
        tools=_TOOLS,
        active_scroll=None,
        toolbar_location="right",
        x_axis_label="step",
        y_axis_label=y_label,
        **kw,
    )
    f.title.text_font_size = "11pt"
    f.title.text_font_style = "normal"
    f.toolbar.logo = None
    f.toolbar.autohide = True  # the tools show while the pointer is over the plot
    f.xaxis.axis_label_text_font_size = f.yaxis.axis_label_text_font_size = "9pt"
    f.xaxis.axis_label_text_font_style = f.yaxis.axis_label_text_font_style = "normal"
    f.xaxis.major_label_text_font_size = f.yaxis.major_label_text_font_size = "8pt"
    f.outline_line_color = None
    f.min_border_right = 10
    theme_neutral(f)
    return f


def theme_neutral(f) -> None:
    """Transparent backgrounds and mid-grey text: the figure takes the page's colour, JupyterLab's light or dark
    theme (or an exported page's white) without a Bokeh theme switch in the browser."""
    f.background_fill_color = None
    f.border_fill_color = None
    f.title.text_color = INK
    for ax in (*f.xaxis, *f.yaxis):
        ax.axis_label_text_color = ax.major_label_text_color = INK
        ax.axis_line_color = ax.major_tick_line_color = ax.minor_tick_line_color = INK
    f.grid.grid_line_color = INK
    f.grid.grid_line_alpha = 0.25


def legend_above(f) -> None:
    """The legend in one row above the data area (click an entry to hide its line)."""
    if not f.legend:
        return
    lg = f.legend[0]
    if lg not in f.above:
        f.add_layout(lg, "above")
    lg.orientation = "horizontal"
    lg.location = "top_left"
    lg.label_text_font_size = "8pt"
    lg.label_text_color = INK
    lg.background_fill_alpha = 0
    lg.border_line_color = None
    lg.click_policy = "hide"
    lg.spacing = 6
    lg.padding = 2
    lg.margin = 0
    lg.glyph_width = 14


class PlotSet:
    """Loss (raw + smoothed, control markers), eval metrics, learning rate per group, throughput + memory,
    and the layer map (frozen / trainable). The four time plots share their step axis: zoom one, all follow
    (and the browser syncs one x range back, not four)."""

    def __init__(self, width: int = 460, height: int = 230):
        self.lock = threading.RLock()
        self.applied = 0  # batches of points applied (tests and the UI-cost benchmark read it)
        self.structure = 0  # bumped when models are added or changed (not when points stream)
        w, h = width, height
        # ---- loss
        self.loss_src = ColumnDataSource({"step": [], "loss": [], "smooth": []}, name="nbft-loss")
        self.marker_src = ColumnDataSource(
            {"step": [], "y": [], "label": [], "source": [], "text": []}, name="nbft-markers"
        )
        self.loss = _fig("Training loss", width=w, height=h, y_label="loss")
        raw = self.loss.line("step", "loss", source=self.loss_src, color=RAW, line_width=1, legend_label="raw")
        sm = self.loss.line(
            "step", "smooth", source=self.loss_src, color=SMOOTH, line_width=2, legend_label="smoothed"
        )
        mk = self.loss.scatter(
            "step",
            "y",
            source=self.marker_src,
            marker="inverted_triangle",
            size=11,
            color=MARKER,
            legend_label="change",
        )
        self.loss.add_tools(
            HoverTool(
                renderers=[sm],
                tooltips=[("step", "@step"), ("loss", "@loss{0.0000}"), ("smoothed", "@smooth{0.0000}")],
                mode="vline",
            ),
            HoverTool(renderers=[mk], tooltips=[("", "@text")]),  # "lr 1e-4 → 5e-5, by sidebar, step 40"
        )
        raw.level = "underlay"
        legend_above(self.loss)
        # ranges before data (see `anchor`); the shared step axis ranges over the losses and the evaluations only
        self.anchors: dict[str, ColumnDataSource] = {}
        self.anchors["loss"], loss_anchor = anchor(self.loss)
        self.loss.x_range.renderers = [raw, sm, loss_anchor]
        # ---- eval
        self.eval_src = ColumnDataSource({"step": []}, name="nbft-eval")
        self.eval = _fig("Evaluation", width=w, height=h, x_range=self.loss.x_range, y_label="metric")
        self.eval_metrics: list[str] = []
        self._score_lines: list = []  # renderers on the 0-1 axis / on the losses-and-errors axis
        self._error_lines: list = []
        self._score_names: list[str] = []  # the metrics on each axis
        self._error_names: list[str] = []
        self.eval.extra_y_ranges = {"err": DataRange1d()}
        self.err_axis = LinearAxis(y_range_name="err", axis_label="loss / error", visible=False)  # once both kinds
        self.err_axis.ticker.desired_num_ticks = self.eval.yaxis[0].ticker.desired_num_ticks = 4  # fewer, rounder
        self.eval.add_layout(self.err_axis, "right")
        self.err_axis.axis_label_text_color = self.err_axis.major_label_text_color = INK
        self.err_axis.axis_line_color = self.err_axis.major_tick_line_color = INK
        self.eval_hover = HoverTool(renderers=[], tooltips=[("step", "@step")], mode="vline")  # the metric lines
        self.eval.add_tools(self.eval_hover)
        self.anchors["eval"], _ = anchor(self.eval)
        self.eval_waiting = Label(
            x=10,
            y=10,
            x_units="screen",
            y_units="screen",
            text="no evaluation yet",
            text_color="#999",
            text_font_size="10pt",
        )
        self.eval.add_layout(self.eval_waiting)
        # ---- learning rate
        self.lr_src = ColumnDataSource({"step": [], "lr": []}, name="nbft-lr")
        # learning rates are >= 0: the axis starts at 0 (a constant lr would otherwise get lr +- 1, negative rates)
        self.lr = _fig(
            "Learning rate", width=w, height=h, x_range=self.loss.x_range, y_range=DataRange1d(start=0), y_label="lr"
        )
        self.lr.yaxis.formatter = CustomJSTickFormatter(code=LR_TICK_JS)  # "0", "5e-4", "1e-3", "2.5e-5"
        self.lr.yaxis.visible = False  # until the first learning rate comes
        base = self.lr.line("step", "lr", source=self.lr_src, color=SMOOTH, line_width=2, legend_label="all groups")
        self.lr_base = base
        self.lr.add_tools(
            HoverTool(renderers=[base], tooltips=[("step", "@step"), ("lr", "@lr{0.000e0}")], mode="vline")
        )
        # a legend entry (no glyphs) naming the frozen groups: they get no learning rate while frozen
        # (one NaN point: BokehJS draws no legend glyph for a renderer without rows, and a NaN has no bounds)
        self.lr_frozen_line = self.lr.line(x=[math.nan], y=[math.nan], color=FROZEN, line_width=2, line_dash="dotted")
        self.lr_frozen_line.visible = False
        legend_above(self.lr)
        self.lr_groups: list[str] = []
        self.lr_lines: dict[str, Any] = {}  # group -> its line (drawn where its lr differs from the base)
        self.lr_colours: dict[str, str] = {}
        self.frozen: list[str] = []  # the layer groups frozen now, in layer-map order
        self.lr_marker_src = ColumnDataSource({"step": [], "y": [], "label": [], "source": [], "text": []})
        lm = self.lr.scatter("step", "y", source=self.lr_marker_src, marker="inverted_triangle", size=11, color=MARKER)
        self.lr.add_tools(HoverTool(renderers=[lm], tooltips=[("", "@text")]))
        self.anchors["lr"], _ = anchor(self.lr)
        # ---- throughput + memory
        self.speed_src = ColumnDataSource({"step": [], "samples_per_s": [], "tokens_per_s": [], "memory_mb": []})
        self.speed = _fig("Throughput", width=w, height=h, x_range=self.loss.x_range, y_label="samples/s")
        sp = self.speed.line("step", "samples_per_s", source=self.speed_src, color=SMOOTH, line_width=2)
        self.throughput_unit = "tokens"
        self.speed.extra_y_ranges = {"mem": Range1d(start=0, end=1)}
        self.mem_axis = LinearAxis(y_range_name="mem", axis_label="memory MB", visible=False)  # once known
        self.speed.add_layout(self.mem_axis, "right")
        self.mem_axis.axis_label_text_color = self.mem_axis.major_label_text_color = INK
        self.mem_axis.axis_line_color = self.mem_axis.major_tick_line_color = INK
        self.speed.line(
            "step",
            "memory_mb",
            source=self.speed_src,
            color=MARKER,
            line_width=1,
            line_dash="dashed",
            y_range_name="mem",
        )
        self.speed_hover = HoverTool(renderers=[sp], tooltips=self._speed_tooltips(), mode="vline")
        self.speed.add_tools(self.speed_hover)
        self.anchors["speed"], _ = anchor(self.speed)
        self._mem_max = 0.0
        # ---- layer map: bar lengths on a square-root scale, so a 1k-parameter head still shows next to 10M blocks;
        # each bar is labelled with its real count (the hover has it exactly)
        self.layer_src = ColumnDataSource(
            {"group": [], "params": [], "bar": [], "state": [], "color": [], "label": [], "short": []},
            name="nbft-layers",
        )
        self.layers = figure(
            title="Layer map",
            width=LAYER_W,
            height=220,
            y_range=[],
            x_range=Range1d(0, 1),  # set from the largest group (explicit: BokehJS needs no data to draw it)
            tools="hover",
            tooltips=[("group", "@group"), ("parameters", "@label"), ("", "@state")],
            toolbar_location=None,
            x_axis_label="parameters (√ scale)",
        )
        self.layers.hbar(y="group", right="bar", height=0.8, color="color", source=self.layer_src)
        self.layers.text(
            "bar",
            "group",
            text="short",
            source=self.layer_src,
            x_offset=3,
            text_baseline="middle",
            text_font_size="8pt",
            text_color=INK,
        )
        self.layers.title.text_font_size = "11pt"
        self.layers.title.text_font_style = "normal"
        self.layers.xaxis.axis_label_text_font_style = "normal"
        self.layers.xaxis.axis_label_text_font_size = "9pt"
        theme_neutral(self.layers)
        self.layers.xaxis.major_label_text_font_size = "0pt"  # a square-root axis has no readable ticks: the bars
        self.layers.xaxis.major_tick_line_color = self.layers.xaxis.minor_tick_line_color = None  # carry the counts
        self.layers.xgrid.grid_line_color = None
        self.layers.yaxis.major_label_text_font_size = "8pt"
        self.layers.ygrid.grid_line_color = None
        self.layers.outline_line_color = None
        # a live change: a dashed vertical rule at its step across every time plot (the triangles carry the tooltip)
        for f in (self.loss, self.eval, self.lr, self.speed):
            rule = f.vspan(x="step", source=self.marker_src, line_color=MARKER, line_dash="dashed", line_alpha=0.55)
            rule.level = "underlay"
        self.grid = gridplot(
            [[self.loss, self.eval], [self.lr, self.speed]],
            toolbar_location=None,
            merge_tools=False,
            sizing_mode="stretch_width",
        )
        self.root = column(self.grid, sizing_mode="stretch_width")
        # ---- what the task asks to draw (EvalEnded.extras): one figure per entry, below the grid once one comes
        self.extras: dict[str, dict[str, Any]] = {}  # the latest entries drawn, by name
        self.extra_figs: dict[str, tuple[str, Any, ColumnDataSource]] = {}  # name -> (kind, figure, source)
        self.extras_row = row(sizing_mode="stretch_width")

    def _speed_tooltips(self) -> list[tuple[str, str]]:
        tips = [("step", "@step"), ("samples/s", "@samples_per_s{0.0}")]
        if self.throughput_unit != "samples":
            tips.append((f"{self.throughput_unit}/s", "@tokens_per_s{0,0}"))
        return [*tips, ("memory MB", "@memory_mb{0,0}")]

    # ------------------------------------------------------------------ the one writer
    def apply(self, pts: Points, layers: list[dict[str, Any]] | None = None) -> bool:
        """Stream the new points (and redraw the layer map if it changed); returns whether anything changed."""
        if not pts:
            return False
        with self.lock:
            if pts.loss:
                self._drop_anchor("loss")
                self.loss_src.stream(_columns(pts.loss, ("step", "loss", "smooth")), rollover=ROLLOVER)
            if pts.evals:
                self._drop_anchor("eval")
                self._stream_evals(pts.evals)
            if pts.lr:
                self._drop_anchor("lr")
                self._stream_lr(pts.lr)
            if pts.speed:
                self._drop_anchor("speed")
                cols = _columns(pts.speed, ("step", "samples_per_s", "tokens_per_s", "memory_mb"))
                mem = [m for m in cols["memory_mb"] if isinstance(m, float) and math.isfinite(m)]
                if mem and max(mem) > self._mem_max:  # the axis grows in steps: a change re-serialises the plots
                    self._mem_max = max(mem) * 1.25
                    self.mem_axis.visible = True
                    self.structure += 1
                    self.speed.extra_y_ranges["mem"].end = self._mem_max
                self.speed_src.stream(cols, rollover=ROLLOVER)
            if pts.markers:
                self._stream_markers(pts.markers)
            if pts.layers_changed and layers is not None:
                self.set_layers(layers)
            if pts.extras is not None:
                self.set_extras(pts.extras)
            if pts.throughput_unit and pts.throughput_unit != self.throughput_unit:
                self.throughput_unit = pts.throughput_unit
                self.speed_hover.tooltips = self._speed_tooltips()
                self.structure += 1
            self.applied += 1
        return True

    def _drop_anchor(self, name: str) -> None:
        """The figure's first data came: its ranges compute from the data alone from now on."""
        src = self.anchors[name]
        if src.data["x"]:
            src.data = {"x": [], "y": []}

    def _stream_evals(self, rows: list[dict[str, Any]]) -> None:
        names = sorted({k for r in rows for k in r if k.startswith("eval_")}, key=lambda k: (k != "eval_loss", k))
        new = [n for n in names if n not in self.eval_metrics][: max(0, MAX_EVAL_LINES - len(self.eval_metrics))]
        if new:
            self.eval_waiting.visible = False
            n_old = len(self.eval_src.data["step"])
            data = dict(self.eval_src.data)
            for n in new:
                data[n] = [math.nan] * n_old
            self.eval_src.data = data
            for n in new:
                colour = PALETTE[len(self.eval_metrics) % len(PALETTE)]
                label = n.removeprefix("eval_")
                score = is_score(n, [r.get(n) for r in rows])
                axis = {} if score else {"y_range_name": "err"}
                line = self.eval.line(
                    "step", n, source=self.eval_src, color=colour, line_width=2, legend_label=label, **axis
                )
                dots = self.eval.scatter(
                    "step", n, source=self.eval_src, color=colour, size=6, legend_label=label, **axis
                )
                (self._score_lines if score else self._error_lines).extend([line, dots])
                (self._score_names if score else self._error_names).append(n)
                self.eval_metrics.append(n)
                self.eval_hover.tooltips = [*self.eval_hover.tooltips, (label, f"@{n}{{0.0000}}")]
                self.eval_hover.renderers = [*self.eval_hover.renderers, line]
                # the step axis covers an evaluation before the first loss (eval_at_start at step 0)
                self.loss.x_range.renderers = [*self.loss.x_range.renderers, dots]
            # each axis ranges over its own lines (a DataRange1d without renderers would range over all of them)
            both = bool(self._score_lines and self._error_lines)
            self.eval.y_range.renderers = list(self._score_lines) if both else []
            self.eval.extra_y_ranges["err"].renderers = list(self._error_lines)
            self.err_axis.visible = both
            self.structure += 1
            legend_above(self.eval)
        cols = {"step": [r["step"] for r in rows]}
        for n in self.eval_metrics:
            cols[n] = [float(r.get(n, math.nan)) for r in rows]
        self.eval_src.stream(cols, rollover=ROLLOVER)
        self._eval_spans()

    def _eval_spans(self) -> None:
        """Round ticks for people: each evaluation axis spans at least EVAL_MIN_SPAN of its largest value, so an eval
        loss that moves from 0.69345 to 0.69300 reads on ticks 0.69, 0.695, 0.7 (not 0.6930, 0.6931, ... 0.6934)."""
        both = bool(self._score_names and self._error_names)
        for rng, names in ((self.eval.extra_y_ranges["err"], self._error_names), (self.eval.y_range, None)):
            names = (
                names if names is not None else (self._score_names if both or self._score_names else self._error_names)
            )
            vals = [abs(v) for n in names for v in self.eval_src.data.get(n, []) if math.isfinite(v)]
            span = EVAL_MIN_SPAN * max(vals) if vals and max(vals) > 0 else None
            if span is not None and (rng.min_interval is None or abs(rng.min_interval - span) > 0.1 * span):
                rng.min_interval = span

    def _stream_lr(self, rows: list[dict[str, Any]]) -> None:
        """The base lr as one line ("all groups" while they coincide); a group gets its own line only from the
        first step its lr differs from the base (layer-wise decay, a group lr), drawn only where it differs."""

        def split(r, g):
            v = (r.get("group_lrs") or {}).get(g)
            base = r.get("lr")
            if not isinstance(v, (int, float)) or not isinstance(base, (int, float)):
                return math.nan
            return math.nan if abs(v - base) <= 1e-9 * max(abs(base), 1e-30) else float(v)

        if not self.lr.yaxis[0].visible:
            self.lr.yaxis.visible = True
            self.structure += 1
        groups = dict.fromkeys(g for r in rows for g in (r.get("group_lrs") or {}))
        new = [g for g in groups if g not in self.lr_groups and any(math.isfinite(split(r, g)) for r in rows)]
        if new:
            n_old = len(self.lr_src.data["step"])
            data = dict(self.lr_src.data)
            for g in new:
                data[f"g:{g}"] = [math.nan] * n_old
            self.lr_src.data = data
            self.structure += 1
            for g in new:
                colour = PALETTE[(len(self.lr_groups) + 1) % len(PALETTE)]
                self.lr_lines[g] = self.lr.line(
                    "step", f"g:{g}", source=self.lr_src, color=colour, line_width=1.5, legend_label=g
                )
                self.lr_colours[g] = colour
                self.lr_groups.append(g)
            legend_above(self.lr)
            self._lr_legend()
        cols = {"step": [r["step"] for r in rows], "lr": [r["lr"] for r in rows]}
        for g in self.lr_groups:
            cols[f"g:{g}"] = [split(r, g) for r in rows]
        self.lr_src.stream(cols, rollover=ROLLOVER)

    def _stream_markers(self, markers: list[dict[str, Any]]) -> None:
        steps, losses = self.loss_src.data["step"], self.loss_src.data["smooth"]
        lr_steps, lrs = self.lr_src.data["step"], self.lr_src.data["lr"]

        def at(xs, ys, step):
            for x, y in zip(reversed(list(xs)), reversed(list(ys))):
                if x <= step and isinstance(y, (int, float)) and math.isfinite(y):
                    return y
            return next((y for y in ys if isinstance(y, (int, float)) and math.isfinite(y)), 0.0)

        cols = {
            "step": [m["step"] for m in markers],
            "y": [at(steps, losses, m["step"]) for m in markers],
            "label": [m["label"] for m in markers],
            "source": [m.get("source", "") for m in markers],
            # one readable line for the hover: what changed, from -> to, by whom, when
            "text": [
                ", ".join(x for x in (m["label"], f"by {m.get('source') or '?'}", f"step {m['step']}"))
                for m in markers
            ],
        }
        self.marker_src.stream(cols, rollover=ROLLOVER)
        lr_cols = dict(cols, y=[at(lr_steps, lrs, m["step"]) for m in markers])
        self.lr_marker_src.stream(lr_cols, rollover=ROLLOVER)

    def set_layers(self, layers: list[dict[str, Any]]) -> None:
        """Redraw the layer map: bars bottom-up from the embeddings to the head, coloured frozen / trainable, their
        lengths on a square-root scale; the learning-rate plot greys the groups frozen now."""
        with self.lock:
            names = [x["group"] for x in layers]
            self.structure += 1
            self.layers.y_range.factors = names
            self.layers.height = max(160, min(520, 60 + 16 * len(names)))
            bars = [layer_bar(x["params"]) for x in layers]
            self.layers.x_range.end = max(bars, default=0.0) * 1.3 or 1.0  # room for the count after the bar
            self.layer_src.data = {
                "group": names,
                "params": [x["params"] for x in layers],
                "bar": bars,
                "state": ["trainable" if x["trainable"] else "frozen" for x in layers],
                "color": [TRAINABLE if x["trainable"] else FROZEN for x in layers],
                "label": [f"{x['params']:,}" for x in layers],
                "short": [fmt_count(x["params"]) for x in layers],
            }
            self.frozen = [x["group"] for x in layers if not x["trainable"]]
            self._lr_legend()

    def _lr_legend(self) -> None:
        """The learning-rate legend as the groups stand now (`state.lr_legend`): a frozen group's own line greyed,
        the base line named for what it stands for, and one grey entry listing the frozen groups (they get no lr)."""
        lg = self.lr.legend[0]
        frozen = set(self.frozen)
        base, names, note = lr_legend(self.lr_groups, self.frozen)
        for g, line in self.lr_lines.items():
            colour = FROZEN if g in frozen else self.lr_colours[g]
            if line.glyph.line_color != colour:
                line.glyph.line_color = colour
            for item in lg.items:
                if line in item.renderers and item.label != value(names[g]):
                    item.label = value(names[g])
        items = [i for i in lg.items if self.lr_frozen_line not in i.renderers]
        if items and items[0].label != value(base):
            items[0].label = value(base)
        if note:
            items.append(LegendItem(label=value(note), renderers=[self.lr_frozen_line]))
        self.lr_frozen_line.visible = bool(note)
        if [i.label for i in items] != [i.label for i in lg.items]:
            lg.items = items

    # ------------------------------------------------------------------ the task's figures
    def set_extras(self, extras: dict[str, dict[str, Any]]) -> None:
        """Draw the latest evaluation's task figures: a heatmap with counts for a "matrix" entry (a confusion
        matrix), horizontal bars for a "bars" entry (entity F1 per type). Entries of an unknown kind are skipped."""
        with self.lock:
            for name, entry in extras.items():
                kind = entry.get("kind") if isinstance(entry, dict) else None
                if kind == "table":  # generations of a causal LM: HTML beside the plots (panel.py), no Bokeh model
                    self.extras[name] = json_copy(entry)
                    continue
                if kind not in ("matrix", "bars"):
                    continue
                have = self.extra_figs.get(name)
                if have is None or have[0] != kind:
                    self._add_extra_figure(name, kind, entry)
                _, fig, src = self.extra_figs[name]
                if kind == "matrix":
                    self._draw_matrix(fig, src, entry)
                else:
                    self._draw_bars(fig, src, entry)
                self.extras[name] = json_copy(entry)

    def _add_extra_figure(self, name: str, kind: str, entry: dict[str, Any]) -> None:
        title = str(entry.get("title") or name)
        if kind == "matrix":
            src = ColumnDataSource(
                {"x": [], "y": [], "value": [], "text": [], "color": [], "text_color": []}, name=f"nbft-x-{name}"
            )
            fig = figure(
                title=title,
                x_range=FactorRange(),
                y_range=FactorRange(),
                width=340,
                height=300,
                tools="hover,save",
                tooltips=[
                    (entry.get("y_label") or "row", "@y"),
                    (entry.get("x_label") or "column", "@x"),
                    ("", "@text"),
                ],
                toolbar_location=None,
                x_axis_location="above",
            )
            fig.rect("x", "y", 1, 1, source=src, fill_color="color", line_color="white")
            fig.text(
                "x",
                "y",
                text="text",
                source=src,
                text_align="center",
                text_baseline="middle",
                text_color="text_color",
                text_font_size="8pt",
            )
            fig.xaxis.major_label_orientation = 0.9
            fig.grid.grid_line_color = None
            fig.axis.axis_line_color = None
            fig.axis.major_tick_line_color = None
        else:
            src = ColumnDataSource({"label": [], "value": [], "text": []}, name=f"nbft-x-{name}")
            fig = figure(
                title=title,
                y_range=FactorRange(),
                x_range=Range1d(0, 1),  # set from the values (explicit: no range left for BokehJS to guess)
                width=340,
                height=220,
                tools="hover,save",
                tooltips=[("", "@label"), ("value", "@text")],
                toolbar_location=None,
            )
            fig.hbar(y="label", right="value", left=0, height=0.75, color=SMOOTH, source=src)
            fig.text(
                "value",
                "label",
                text="text",
                source=src,
                x_offset=3,
                text_baseline="middle",
                text_font_size="8pt",
                text_color=INK,
            )
            fig.ygrid.grid_line_color = None
        fig.xaxis.axis_label = entry.get("x_label") or ""
        fig.yaxis.axis_label = entry.get("y_label") or ""
        fig.title.text_font_size = "11pt"
        fig.title.text_font_style = "normal"
        fig.title.text_line_height = 1.3
        fig.axis.major_label_text_font_size = "8pt"
        fig.outline_line_color = None
        theme_neutral(fig)
        if kind == "matrix":
            fig.grid.grid_line_color = None
        old = self.extra_figs.get(name)
        self.extra_figs[name] = (kind, fig, src)
        children = [c for c in self.extras_row.children if old is None or c is not old[1]]
        self.extras_row.children = [*children, fig]
        if self.extras_row not in self.root.children:
            self.root.children = [*self.root.children, self.extras_row]
        self.structure += 1

    def _draw_matrix(self, fig, src: ColumnDataSource, entry: dict[str, Any]) -> None:
        cells = matrix_cells(entry)
        rows = list(dict.fromkeys(cells["y"]))
        cols = list(dict.fromkeys(cells["x"]))
        if len(cells["x"]) > MATRIX_TEXT_CELLS:
            cells["text"] = [""] * len(cells["x"])
        if list(fig.x_range.factors) != cols or list(fig.y_range.factors) != rows[::-1]:
            fig.x_range.factors = cols
            fig.y_range.factors = rows[::-1]  # the first row on top
            cell = max(12, min(36, 300 // max(1, len(cols), len(rows))))
            fig.width = max(220, 90 + cell * len(cols))
            fig.height = max(180, 90 + cell * len(rows))
            self.structure += 1
        src.data = cells
        _fit_title(fig, str(entry.get("title") or fig.title.text))

    def _draw_bars(self, fig, src: ColumnDataSource, entry: dict[str, Any]) -> None:
        data = bar_rows(entry)
        if list(fig.y_range.factors) != data["label"][::-1]:
            fig.y_range.factors = data["label"][::-1]  # the first label on top
            fig.height = max(140, min(520, 70 + 20 * len(data["label"])))
            self.structure += 1
        finite = [v for v in data["value"] if math.isfinite(v)]
        lo, hi = min([0.0, *finite]), max([0.0, *finite])  # bars grow from 0; negative values (r2) need room
        hi = hi or (0.0 if lo else 1.0)
        start, end = lo - 0.05 * (hi - lo) if lo < 0 else 0.0, hi + 0.2 * (hi - lo)  # the value text after the bar
        if (fig.x_range.start, fig.x_range.end) != (start, end):
            fig.x_range.update(start=start, end=end)
        src.data = data
        _fit_title(fig, str(entry.get("title") or fig.title.text))

    def sources(self) -> list[ColumnDataSource]:
        return [
            self.loss_src,
            self.marker_src,
            self.eval_src,
            self.lr_src,
            self.lr_marker_src,
            self.speed_src,
            self.layer_src,
            *self.anchors.values(),
            *(src for _, _, src in self.extra_figs.values()),
        ]

    # ------------------------------------------------------------------ snapshots
    def series(self) -> dict[str, dict[str, list]]:
        """Copies of every source's columns (for the SVG snapshot and tests)."""
        with self.lock:
            return {
                "loss": {k: list(v) for k, v in self.loss_src.data.items()},
                "eval": {k: list(v) for k, v in self.eval_src.data.items()},
                "lr": {k: list(v) for k, v in self.lr_src.data.items()},
                "speed": {k: list(v) for k, v in self.speed_src.data.items()},
                "markers": {k: list(v) for k, v in self.marker_src.data.items()},
                "layers": {k: list(v) for k, v in self.layer_src.data.items()},
                "extras": json_copy(self.extras),
            }


TITLE_PX_PER_CHAR = 7.5  # an 11pt sans-serif title: about this many pixels a character


def _fit_title(fig, title: str) -> None:
    """The title in lines that fit the figure's width (BokehJS cuts a long one at the figure's edge): a task's
    "Confusion matrix (rows: true, columns: predicted)" on a 220-pixel matrix reads as two lines."""
    text = "\n".join(title_lines(title, max(12, int((fig.width - 16) / TITLE_PX_PER_CHAR))))
    if fig.title.text != text:
        fig.title.text = text


def json_copy(value: Any) -> Any:
    """A deep copy of JSON-like data (dicts, lists, scalars)."""
    if isinstance(value, dict):
        return {k: json_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_copy(v) for v in value]
    return value


def _columns(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, list]:
    return {k: [_f(r.get(k)) if k != "step" else r[k] for r in rows] for k in keys}


def _f(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan
