"""The run's Bokeh figures, fed only with new points (`ColumnDataSource.stream` with `rollover`).

One writer: `PlotSet.apply()` is called by the panel's pump with what `PanelState.take()` returned, under
`PlotSet.lock`, which jupyter_bokeh's browser-side write-backs take too (see transport.py). The training thread
never gets here.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from bokeh.layouts import column, gridplot, row
from bokeh.models import (
    ColumnDataSource,
    DataRange1d,
    FactorRange,
    HoverTool,
    Label,
    LinearAxis,
    NumeralTickFormatter,
    PrintfTickFormatter,
    Range1d,
)
from bokeh.palettes import Category10_10
from bokeh.plotting import figure

from .state import Points
from .svg import cell_colour, fmt_cell

__all__ = ["PlotSet", "FROZEN", "TRAINABLE", "is_score", "matrix_cells"]

TRAINABLE = "#2e7d32"
FROZEN = "#b0bec5"
RAW = "#90caf9"
SMOOTH = "#1565c0"
MARKER = "#ef6c00"
ROLLOVER = 20_000  # points kept per series in the live plots
MAX_EVAL_LINES = 10  # lines in the evaluation plot (per-label metrics go to the task's bars, see state.main_metrics)
MATRIX_TEXT_CELLS = 400  # a matrix with more cells shows colours only (the counts are in the hover)
_TOOLS = "pan,wheel_zoom,box_zoom,reset,save"


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


def bar_rows(entry: dict[str, Any]) -> dict[str, list]:
    labels = [str(x) for x in entry.get("labels") or []]
    values = [_f(v) for v in entry.get("values") or []]
    values = (values + [math.nan] * len(labels))[: len(labels)]
    return {"label": labels, "value": values, "text": [fmt_cell(v) for v in values]}


def _fig(title: str, *, width: int, height: int, y_label: str = "", **kw):
    f = figure(
        title=title,
        width=width,
        height=height,
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
    f.xaxis.axis_label_text_font_size = f.yaxis.axis_label_text_font_size = "9pt"
    f.xaxis.axis_label_text_font_style = f.yaxis.axis_label_text_font_style = "normal"
    f.xaxis.major_label_text_font_size = f.yaxis.major_label_text_font_size = "8pt"
    f.grid.grid_line_alpha = 0.4
    f.outline_line_color = None
    f.min_border_right = 10
    return f


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
        self.marker_src = ColumnDataSource({"step": [], "y": [], "label": [], "source": []}, name="nbft-markers")
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
            HoverTool(renderers=[mk], tooltips=[("step", "@step"), ("change", "@label"), ("by", "@source")]),
        )
        raw.level = "underlay"
        self.loss.legend.location = "top_right"
        self.loss.legend.label_text_font_size = "8pt"
        self.loss.legend.click_policy = "hide"
        self.loss.legend.background_fill_alpha = 0.6
        # ---- eval
        self.eval_src = ColumnDataSource({"step": []}, name="nbft-eval")
        self.eval = _fig("Evaluation", width=w, height=h, x_range=self.loss.x_range, y_label="metric")
        self.eval_metrics: list[str] = []
        self._score_lines: list = []  # renderers on the 0-1 axis / on the losses-and-errors axis
        self._error_lines: list = []
        self.eval.extra_y_ranges = {"err": DataRange1d()}
        self.err_axis = LinearAxis(y_range_name="err", axis_label="loss / error", visible=False)  # once both kinds
        self.eval.add_layout(self.err_axis, "right")
        self.eval_hover = HoverTool(tooltips=[("step", "@step")], mode="vline")
        self.eval.add_tools(self.eval_hover)
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
        self.lr = _fig("Learning rate", width=w, height=h, x_range=self.loss.x_range, y_label="lr")
        self.lr.yaxis.formatter = PrintfTickFormatter(format="%.1e")
        base = self.lr.line("step", "lr", source=self.lr_src, color=SMOOTH, line_width=2, legend_label="base")
        self.lr.add_tools(
            HoverTool(renderers=[base], tooltips=[("step", "@step"), ("lr", "@lr{0.000e0}")], mode="vline")
        )
        self.lr.legend.label_text_font_size = "8pt"
        self.lr.legend.location = "top_right"
        self.lr.legend.click_policy = "hide"
        self.lr_groups: list[str] = []
        self.lr_marker_src = ColumnDataSource({"step": [], "y": [], "label": [], "source": []})
        lm = self.lr.scatter("step", "y", source=self.lr_marker_src, marker="inverted_triangle", size=11, color=MARKER)
        self.lr.add_tools(HoverTool(renderers=[lm], tooltips=[("step", "@step"), ("change", "@label")]))
        # ---- throughput + memory
        self.speed_src = ColumnDataSource({"step": [], "samples_per_s": [], "tokens_per_s": [], "memory_mb": []})
        self.speed = _fig("Throughput", width=w, height=h, x_range=self.loss.x_range, y_label="samples/s")
        sp = self.speed.line("step", "samples_per_s", source=self.speed_src, color=SMOOTH, line_width=2)
        self.throughput_unit = "tokens"
        self.speed.extra_y_ranges = {"mem": Range1d(start=0, end=1)}
        self.mem_axis = LinearAxis(y_range_name="mem", axis_label="memory MB", visible=False)  # once known
        self.speed.add_layout(self.mem_axis, "right")
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
        self._mem_max = 0.0
        # ---- layer map
        self.layer_src = ColumnDataSource(
            {"group": [], "params": [], "state": [], "color": [], "label": []}, name="nbft-layers"
        )
        self.layers = figure(
            title="Layer map",
            width=300,
            height=220,
            y_range=[],
            tools="hover",
            tooltips=[("group", "@group"), ("parameters", "@label"), ("", "@state")],
            toolbar_location=None,
            x_axis_label="parameters",
        )
        self.layers.hbar(y="group", right="params", height=0.8, color="color", source=self.layer_src)
        self.layers.title.text_font_size = "11pt"
        self.layers.title.text_font_style = "normal"
        self.layers.xaxis.formatter = NumeralTickFormatter(format="0.0a")
        self.layers.xaxis.major_label_text_font_size = self.layers.yaxis.major_label_text_font_size = "8pt"
        self.layers.ygrid.grid_line_color = None
        self.layers.outline_line_color = None
        self.layers.x_range.start = 0
        self.grid = gridplot([[self.loss, self.eval], [self.lr, self.speed]], toolbar_location=None, merge_tools=False)
        self.root = column(self.grid)
        # ---- what the task asks to draw (EvalEnded.extras): one figure per entry, below the grid once one comes
        self.extras: dict[str, dict[str, Any]] = {}  # the latest entries drawn, by name
        self.extra_figs: dict[str, tuple[str, Any, ColumnDataSource]] = {}  # name -> (kind, figure, source)
        self.extras_row = row()

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
                self.loss_src.stream(_columns(pts.loss, ("step", "loss", "smooth")), rollover=ROLLOVER)
            if pts.evals:
                self._stream_evals(pts.evals)
            if pts.lr:
                self._stream_lr(pts.lr)
            if pts.speed:
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
                colour = Category10_10[len(self.eval_metrics) % 10]
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
                self.eval_metrics.append(n)
                self.eval_hover.tooltips = [*self.eval_hover.tooltips, (label, f"@{n}{{0.0000}}")]
            # each axis ranges over its own lines (a DataRange1d without renderers would range over all of them)
            both = bool(self._score_lines and self._error_lines)
            self.eval.y_range.renderers = list(self._score_lines) if both else []
            self.eval.extra_y_ranges["err"].renderers = list(self._error_lines)
            self.err_axis.visible = both
            self.structure += 1
            self.eval.legend.label_text_font_size = "8pt"
            self.eval.legend.location = "bottom_right"
            self.eval.legend.click_policy = "hide"
        cols = {"step": [r["step"] for r in rows]}
        for n in self.eval_metrics:
            cols[n] = [float(r.get(n, math.nan)) for r in rows]
        self.eval_src.stream(cols, rollover=ROLLOVER)

    def _stream_lr(self, rows: list[dict[str, Any]]) -> None:
        groups = [g for r in rows for g in (r.get("group_lrs") or {})]
        new = [g for g in dict.fromkeys(groups) if g not in self.lr_groups]
        if new and len(set(self.lr_groups) | set(new)) > 1:  # one group only: the base line says it all
            n_old = len(self.lr_src.data["step"])
            data = dict(self.lr_src.data)
            for g in new:
                data[f"g:{g}"] = [math.nan] * n_old
            self.lr_src.data = data
            self.structure += 1
            for g in new:
                colour = Category10_10[(len(self.lr_groups) + 1) % 10]
                self.lr.line("step", f"g:{g}", source=self.lr_src, color=colour, line_width=1, legend_label=g)
                self.lr_groups.append(g)
        cols = {"step": [r["step"] for r in rows], "lr": [r["lr"] for r in rows]}
        for g in self.lr_groups:
            cols[f"g:{g}"] = [float((r.get("group_lrs") or {}).get(g, math.nan)) for r in rows]
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
        }
        self.marker_src.stream(cols, rollover=ROLLOVER)
        lr_cols = dict(cols, y=[at(lr_steps, lrs, m["step"]) for m in markers])
        self.lr_marker_src.stream(lr_cols, rollover=ROLLOVER)

    def set_layers(self, layers: list[dict[str, Any]]) -> None:
        """Redraw the layer map: bars bottom-up from the embeddings to the head, coloured frozen / trainable."""
        with self.lock:
            names = [x["group"] for x in layers]
            self.structure += 1
            self.layers.y_range.factors = names
            self.layers.height = max(160, min(520, 60 + 16 * len(names)))
            self.layer_src.data = {
                "group": names,
                "params": [x["params"] for x in layers],
                "state": ["trainable" if x["trainable"] else "frozen" for x in layers],
                "color": [TRAINABLE if x["trainable"] else FROZEN for x in layers],
                "label": [f"{x['params']:,}" for x in layers],
            }

    # ------------------------------------------------------------------ the task's figures
    def set_extras(self, extras: dict[str, dict[str, Any]]) -> None:
        """Draw the latest evaluation's task figures: a heatmap with counts for a "matrix" entry (a confusion
        matrix), horizontal bars for a "bars" entry (entity F1 per type). Entries of an unknown kind are skipped."""
        with self.lock:
            for name, entry in extras.items():
                kind = entry.get("kind") if isinstance(entry, dict) else None
                if kind == "table":  # generations of a causal LM: prompt / first / latest
                    self._draw_table(name, entry)
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

    def _draw_table(self, name: str, entry: dict[str, Any]) -> None:
        """A "table" extras entry ({columns: [...], rows: [[...], ...]}) as a small Bokeh DataTable, updated in place."""
        from bokeh.models import DataTable, Div, TableColumn

        cols = [str(c) for c in entry.get("columns") or []]
        rows = entry.get("rows") or []
        data = {f"c{i}": [str(r[i]) if i < len(r) else "" for r in rows] for i in range(len(cols))}
        have = self.extra_figs.get(name)
        if have is not None and have[0] == "table" and list(have[2].data) == list(data):
            have[2].data = data
            return
        src = ColumnDataSource(data, name=f"nbft-x-{name}")
        table = DataTable(
            source=src,
            columns=[TableColumn(field=f"c{i}", title=c) for i, c in enumerate(cols)],
            width=680,
            height=min(60 + 28 * max(1, len(rows)), 260),
            index_position=None,
        )
        box = column(Div(text=str(entry.get("title") or name)), table)
        old = self.extra_figs.get(name)
        self.extra_figs[name] = ("table", box, src)
        children = [c for c in self.extras_row.children if old is None or c is not old[1]]
        self.extras_row.children = [*children, box]
        if self.extras_row not in self.root.children:
            self.root.children = [*self.root.children, self.extras_row]
        self.structure += 1

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
                width=340,
                height=220,
                tools="hover,save",
                tooltips=[("", "@label"), ("value", "@text")],
                toolbar_location=None,
            )
            fig.hbar(y="label", right="value", left=0, height=0.75, color=SMOOTH, source=src)
            fig.text(
                "value", "label", text="text", source=src, x_offset=3, text_baseline="middle", text_font_size="8pt"
            )
            fig.ygrid.grid_line_color = None
        fig.xaxis.axis_label = entry.get("x_label") or ""
        fig.yaxis.axis_label = entry.get("y_label") or ""
        fig.title.text_font_size = "11pt"
        fig.title.text_font_style = "normal"
        fig.axis.major_label_text_font_size = "8pt"
        fig.outline_line_color = None
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
        title = str(entry.get("title") or fig.title.text)
        if fig.title.text != title:
            fig.title.text = title

    def _draw_bars(self, fig, src: ColumnDataSource, entry: dict[str, Any]) -> None:
        data = bar_rows(entry)
        if list(fig.y_range.factors) != data["label"][::-1]:
            fig.y_range.factors = data["label"][::-1]  # the first label on top
            fig.height = max(140, min(520, 70 + 20 * len(data["label"])))
            self.structure += 1
        finite = [v for v in data["value"] if math.isfinite(v)]
        start = 0 if all(v >= 0 for v in finite) else None  # bars grow from 0; negative values (r2) need room
        if fig.x_range.start != start:
            fig.x_range.start = start
        src.data = data
        title = str(entry.get("title") or fig.title.text)
        if fig.title.text != title:
            fig.title.text = title

    def sources(self) -> list[ColumnDataSource]:
        return [
            self.loss_src,
            self.marker_src,
            self.eval_src,
            self.lr_src,
            self.lr_marker_src,
            self.speed_src,
            self.layer_src,
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
