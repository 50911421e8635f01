"""The panel's figures as BokehJS first draws them: every range has finite bounds before any data (no "could not set
initial ranges" warning), the learning-rate plot (no axis before data, never a negative rate, frozen groups greyed
as freezing changes), widths that follow the output, and a layer map whose small groups stay visible."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("bokeh")

from bokeh.layouts import column  # noqa: E402
from bokeh.models import ColumnDataSource, DataRange1d, FactorRange, GlyphRenderer, Plot, Range1d  # noqa: E402
from bokeh.plotting import figure  # noqa: E402

from nb_finetune.ui.plots import FROZEN, PlotSet  # noqa: E402
from nb_finetune.ui.state import Points  # noqa: E402

_X_FIELDS = ("x", "left", "right", "x0", "x1")
_Y_FIELDS = ("y", "top", "bottom", "y0", "y1")


def _values(renderer: GlyphRenderer, dim: int) -> list[float]:
    """The numbers a renderer's glyph puts on one dimension (its data columns, or constant values)."""
    glyph, data = renderer.glyph, renderer.data_source.data
    if not any(len(v) for v in data.values()):
        return []  # no rows: no bounds, whatever constants the glyph has (an hbar's `left=0`)
    out: list[float] = []
    for name in _X_FIELDS if dim == 0 else _Y_FIELDS:
        if name not in glyph.properties():
            continue
        spec = getattr(glyph, name)
        field = spec if isinstance(spec, str) else getattr(spec, "field", None)
        vals = data.get(field, []) if field is not None else [spec]
        out += [float(v) for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    return out


def _set(v) -> bool:
    return isinstance(v, (int, float)) and not math.isnan(v)


def initial_range_problems(root) -> list[str]:
    """What BokehJS's `compute_initial` would find unset at the first render: a DataRange1d computes its bounds from
    the finite data of its renderers (its `renderers`, or every renderer of the plots using it), an explicit `start` /
    `end` taking a side; with no data and no explicit side, start + end is NaN and BokehJS warns "could not set initial
    ranges" at every repaint. A Range1d needs finite start and end, a FactorRange its factors."""
    problems = []
    plots = [root] if isinstance(root, Plot) else list(root.select({"type": Plot}))
    for p in plots:
        ranges = [("x", 0, p.x_range), ("y", 1, p.y_range)]
        ranges += [(f"x:{k}", 0, r) for k, r in p.extra_x_ranges.items()]
        ranges += [(f"y:{k}", 1, r) for k, r in p.extra_y_ranges.items()]
        for where, dim, rng in ranges:
            name = f"{p.title.text if p.title else '?'} {where}"
            if isinstance(rng, Range1d):
                if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (rng.start, rng.end)):
                    problems.append(f"{name}: Range1d({rng.start}, {rng.end})")
            elif isinstance(rng, FactorRange):
                continue  # finite even without factors: BokehJS spans 0 .. len(factors) + padding
            elif isinstance(rng, DataRange1d):
                users = [
                    q
                    for q in plots
                    if rng in (q.x_range, q.y_range, *q.extra_x_ranges.values(), *q.extra_y_ranges.values())
                ]
                renderers = list(rng.renderers) or [
                    r for q in users for r in q.renderers if isinstance(r, GlyphRenderer)
                ]
                vals = [v for r in renderers if r.visible or not rng.only_visible for v in _values(r, dim)]
                # an explicit side counts as BokehJS reads it (`isNaN(start) ? null : start`); Bokeh's default is NaN
                lo = rng.start if _set(rng.start) else min(vals, default=math.inf)
                hi = rng.end if _set(rng.end) else max(vals, default=-math.inf)
                if not (math.isfinite(lo) and math.isfinite(hi)):
                    problems.append(f"{name}: DataRange1d with no finite data")
    return problems


def test_the_checker_finds_a_figure_with_no_data():
    """The control case: a default figure with an empty source is what BokehJS warned about."""
    f = figure(title="empty")
    f.line("x", "y", source=ColumnDataSource({"x": [], "y": []}))
    assert initial_range_problems(column(f)) == [
        "empty x: DataRange1d with no finite data",
        "empty y: DataRange1d with no finite data",
    ]
    f2 = figure(title="data")
    f2.line("x", "y", source=ColumnDataSource({"x": [1, 2], "y": [3.0, math.nan]}))
    assert initial_range_problems(column(f2)) == []


def test_every_figure_has_range_bounds_before_data_and_after_it():
    plots = PlotSet()
    roots = [plots.root, plots.layers]
    assert [p for r in roots for p in initial_range_problems(r)] == []  # before any data, no layer map yet
    assert plots.layers.x_range.start == 0 and plots.layers.x_range.end > 0
    plots.set_layers([{"group": "embeddings", "kind": "embeddings", "params": 1000, "trainable": True}])
    plots.apply(Points(loss=[{"step": 1, "loss": 2.0, "smooth": 2.0}]))  # the loss only: eval, lr, speed still empty
    assert [p for r in roots for p in initial_range_problems(r)] == []
    # the loss figure's placeholder is gone once its data came: the ranges compute from the data alone
    assert plots.anchors["loss"].data["x"] == [] and plots.anchors["eval"].data["x"] == [0.0, 1.0]
    plots.apply(Points(evals=[{"step": 0, "eval_loss": 1.5, "eval_accuracy": 0.5}], lr=[_lr(1, 1e-3)]))
    plots.set_extras({"f1": {"kind": "bars", "title": "F1", "labels": ["PER", "LOC"], "values": [math.nan, math.nan]}})
    assert plots.anchors["eval"].data["x"] == [] and plots.anchors["lr"].data["x"] == []
    assert [p for r in roots for p in initial_range_problems(r)] == []  # bars whose values are all NaN included
    # the step axis covers the loss and the evaluations (step 0 before the first loss), not the placeholders
    assert plots.anchors["speed"].data["x"] and all(
        r.data_source is not plots.anchors["speed"] for r in plots.loss.x_range.renderers
    )


def _lr(step, lr, **groups):
    return {"step": step, "lr": lr, "group_lrs": {"embeddings": lr, "blocks.0": lr, "head": lr, **groups}}


def test_lr_plot_has_no_axis_before_data_and_never_a_negative_rate():
    """Control: a constant lr on a default DataRange1d spans lr - 1 .. lr + 1 (default_span), negative rates."""
    plots = PlotSet()
    assert not plots.lr.yaxis[0].visible
    assert plots.lr.y_range.start == 0  # the axis starts at 0 whatever the data
    plots.apply(Points(lr=[_lr(s, 1e-3) for s in (1, 2, 3)]))
    assert plots.lr.yaxis[0].visible


def _layers(frozen=()):
    groups = [("embeddings", "embeddings", 4_000_000), ("blocks.0", "block", 800_000), ("blocks.1", "block", 800_000)]
    groups.append(("head", "head", 1_000))
    return [{"group": g, "kind": k, "params": n, "trainable": g not in frozen} for g, k, n in groups]


def test_frozen_groups_are_greyed_in_the_lr_plot_as_freezing_changes():
    """Control: before the change the legend kept "all groups" and each group's own colour when it was frozen."""
    plots = PlotSet()
    plots.set_layers(_layers())
    decay = {"blocks.0": 5e-4}
    plots.apply(Points(lr=[_lr(1, 1e-3, **decay), _lr(2, 1e-3, **decay)]))
    line = plots.lr_lines["blocks.0"]
    colour = line.glyph.line_color
    assert colour != FROZEN

    def labels():
        return [i.label.value for i in plots.lr.legend[0].items]

    assert labels() == ["other groups", "blocks.0"]
    plots.set_layers(_layers(frozen=("embeddings", "blocks.0")))  # what a freeze command redraws
    assert line.glyph.line_color == FROZEN
    assert labels() == ["other groups", "blocks.0 (frozen)", "frozen, no lr: embeddings, blocks.0"]
    assert plots.lr_frozen_line.visible
    plots.set_layers(_layers())  # unfrozen again: its colour and name come back, the frozen entry goes
    assert line.glyph.line_color == colour and labels() == ["other groups", "blocks.0"]
    assert not plots.lr_frozen_line.visible
    # without a group of its own, the base line names what it stands for
    other = PlotSet()
    other.set_layers(_layers(frozen=("embeddings",)))
    assert [i.label.value for i in other.lr.legend[0].items] == ["trainable groups", "frozen, no lr: embeddings"]


def test_time_plots_follow_the_output_width_and_the_layer_map_keeps_small_groups_visible():
    """Control: fixed 460-pixel figures (a wide output kept them narrow); bar lengths proportional to the count
    drew a 1k-parameter head at 1/4000 of the embeddings' bar, under a pixel."""
    plots = PlotSet()
    for f in (plots.loss, plots.eval, plots.lr, plots.speed):
        assert f.sizing_mode == "stretch_width" and 200 <= f.min_width < f.max_width <= 800
    assert plots.grid.sizing_mode == "stretch_width" and plots.root.sizing_mode == "stretch_width"
    plots.set_layers(_layers())
    data = plots.layer_src.data
    bars = dict(zip(data["group"], data["bar"]))
    assert bars["head"] / bars["embeddings"] == pytest.approx(math.sqrt(1_000 / 4_000_000))
    assert bars["head"] / plots.layers.x_range.end * plots.layers.width > 2  # a few pixels at least
    assert dict(zip(data["group"], data["short"])) == {
        "embeddings": "4.0M",
        "blocks.0": "800.0k",
        "blocks.1": "800.0k",
        "head": "1.0k",
    }
    assert dict(zip(data["group"], data["label"]))["head"] == "1,000"  # the hover's exact count


def test_the_svg_snapshot_greys_the_groups_frozen_at_the_end_as_the_live_plot_does():
    """Control: the snapshot drew every group line in its own colour under "base", frozen or not."""
    import xml.etree.ElementTree as ET

    from nb_finetune.ui.svg import run_svg

    def lr_chart(frozen):
        plots = PlotSet()
        plots.set_layers(_layers(frozen=frozen))
        plots.apply(Points(lr=[_lr(s, 1e-3, **{"blocks.0": 5e-4}) for s in (1, 2, 3)]))
        root = ET.fromstring(run_svg(plots.series(), title="t", state="finished"))
        charts = [g for g in root.iter("{http://www.w3.org/2000/svg}g") if g.find("{*}text").text == "Learning rate"]
        (chart,) = charts
        texts = [t.text for t in chart.iter("{http://www.w3.org/2000/svg}text")]
        strokes = [p.get("stroke") for p in chart.iter("{http://www.w3.org/2000/svg}polyline")]
        return (
            texts,
            strokes,
            [ln.get("stroke") for ln in chart.iter("{http://www.w3.org/2000/svg}line") if ln.get("stroke-dasharray")],
        )

    texts, strokes, dotted = lr_chart(frozen=("embeddings", "blocks.0"))
    assert "other groups" in texts and "blocks.0 (frozen)" in texts
    assert "frozen, no lr: embeddings, blocks.0" in texts and dotted == [FROZEN]
    assert strokes[1] == FROZEN  # the frozen group's own line
    texts, strokes, dotted = lr_chart(frozen=())  # the control case: nothing frozen, nothing grey
    assert "blocks.0" in texts and not any("frozen" in t for t in texts if t) and dotted == []
    assert FROZEN not in strokes


def test_learning_rate_ticks_read_as_people_write_them():
    """The lr axis's own JavaScript formatter, run in node as BokehJS runs it (a function of `tick`). Control: the
    printf format it replaced gave "0.0e+0", "1.0e-3", "5.0e-4"."""
    import shutil
    import subprocess

    from bokeh.models import CustomJSTickFormatter

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    ps = PlotSet()
    fmt = ps.lr.yaxis[0].formatter
    assert isinstance(fmt, CustomJSTickFormatter)
    ticks = [0, 1e-3, 5e-4, 2.5e-5, 1.2345e-4, 3.0, 0.02]
    script = f"const f = new Function('tick', {fmt.code!r}); console.log({ticks!r}.map(t => f(t)).join(' '));"
    out = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=30, check=True).stdout
    assert out.split() == ["0", "1e-3", "5e-4", "2.5e-5", "1.23e-4", "3", "2e-2"]
