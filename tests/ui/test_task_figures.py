"""What the task asks the panel to draw (EvalEnded.extras), its title and units: state, Bokeh figures, the SVG.

These feed events by hand (no training), so they check the panel's side of the contract on their own.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("bokeh")

from nb_finetune.core import records  # noqa: E402
from nb_finetune.core.events import ControlApplied, EvalEnded, Logged, RunFinished, RunStarted  # noqa: E402
from nb_finetune.ui.plots import PlotSet, is_score  # noqa: E402
from nb_finetune.ui.state import PanelState, main_metrics  # noqa: E402
from nb_finetune.ui.svg import run_svg  # noqa: E402

LABELS = ["PER", "LOC", "ORG"]


def matrix(values):
    return {"kind": "matrix", "title": "Confusion matrix", "rows": ["neg", "pos"], "cols": ["neg", "pos"],
            "values": values, "y_label": "true", "x_label": "predicted"}  # fmt: skip


def bars(values):
    return {"kind": "bars", "title": "F1 per entity type", "labels": LABELS, "values": values}


def started(**kw) -> RunStarted:
    return RunStarted(
        **{
            "name": "ner",
            "run_dir": "/tmp/ner",
            "total_steps": 20,
            "steps_per_epoch": 10,
            "num_train": 80,
            "num_eval": 20,
            "device": "cpu",
            "precision": "fp32",
            "params_total": 100,
            "params_trainable": 100,
            "layers": [],
            "task": "token-classification",
            "task_title": "token classification",
            "task_detail": ["task: token-classification (auto: tag lists in 'ner_tags')", "labels (7): O, B-PER"],
            "throughput_unit": "images",
            **kw,
        }
    )


def evaluated(step: int, f1: float, extras: dict) -> EvalEnded:
    metrics = {"eval_loss": 2.5 - step / 10, "eval_f1": f1, "eval_mse": 3.0, "eval_exact_match": 0.5}
    metrics |= {f"eval_{lb}_f1": f1 for lb in LABELS}
    return EvalEnded(step=step, epoch=step / 10, metrics=metrics, extras=extras)


def events():
    return [
        started(),
        Logged(5, 0.5, 1.2, 1e-3, None, 10.0, 80.0, losses=[1.3, 1.2, 1.1, 1.2, 1.2]),
        evaluated(5, 0.4, {"confusion": matrix([[3, 1], [2, 4]]), "per_type": bars([0.4, 0.5, 0.1])}),
        Logged(10, 1.0, 0.9, 1e-3, None, 10.0, 80.0, losses=[1.0, 0.9, 0.9, 0.9, 0.9]),
        evaluated(10, 0.7, {"confusion": matrix([[5, 0], [1, 9]]), "per_type": bars([0.8, 0.7, 0.6])}),
    ]


# ------------------------------------------------------------------ state
def test_state_takes_the_task_title_detail_unit_and_the_latest_extras():
    st = PanelState("ner")
    assert st.task == ""  # no default claiming a task the run may not have
    for e in events():
        st.on_event(e)
    assert st.task == "token classification" and st.task_detail[0].startswith("task: token-classification")
    assert st.throughput_unit == "images"
    assert st.extras["confusion"]["values"] == [[5, 0], [1, 9]] and st.extras["per_type"]["values"][0] == 0.8
    pts = st.take()
    assert pts.extras["per_type"]["values"] == [0.8, 0.7, 0.6] and pts.throughput_unit == "images"
    # the per-type metrics go to the bars only: the eval plot gets the run's own metrics
    assert [sorted(r) for r in pts.evals] == [["eval_exact_match", "eval_f1", "eval_loss", "eval_mse", "step"]] * 2
    assert "eval_PER_f1" in st.metrics  # still there for whoever wants every number
    assert not st.take()  # taken once


def test_main_metrics_leaves_per_label_names_to_the_bars():
    m = {"eval_f1": 1.0, "eval_PER_f1": 1.0, "eval_f1_sports": 1.0, "eval_person": 1.0}
    assert main_metrics(m, {}) == m
    labels = {"b": {"kind": "bars", "labels": ["PER", "sports"], "values": [1, 1]}}
    assert main_metrics(m, labels) == {"eval_f1": 1.0, "eval_person": 1.0}
    assert main_metrics(m, {"m": matrix([[1]])}) == m  # a matrix's labels do not hide metrics


def test_show_rebuilds_the_extras_from_metrics_jsonl_records():
    recs = [records.encode(e) for e in events()]
    recs = [records.loads(records.dumps(r)) for r in recs]  # as read back from the file
    st = PanelState.from_records(recs, "ner", {"state": "finished", "reason": "completed"})
    assert st.state == "finished" and st.task == "token classification"
    assert st.take().extras["confusion"]["values"] == [[5, 0], [1, 9]]


def test_state_machine_drives_the_panel_state():
    st = PanelState("x")
    for e in [started(), ControlApplied(3, "pause", {}, 1), ControlApplied(3, "resume", {}, 2)]:
        st.on_event(e)
    assert st.state == "training"
    st.on_event(ControlApplied(4, "stop", {}, 3))
    assert st.state == "stopping"
    st.on_event(ControlApplied(4, "resume", {}, 4))
    assert st.state == "stopping"
    st.on_event(RunFinished(state="stopped", reason="user", step=4))
    assert st.state == "stopped" and st.done


# ------------------------------------------------------------------ Bokeh
def test_plots_build_a_heatmap_and_bars_and_update_them_at_each_eval():
    st = PanelState("ner")
    plots = PlotSet()
    evs = events()
    for e in evs[:3]:
        st.on_event(e)
    plots.apply(st.take())
    kind, heat, heat_src = plots.extra_figs["confusion"]
    assert kind == "matrix" and heat.title.text == "Confusion matrix"
    assert list(heat.x_range.factors) == ["neg", "pos"]
    assert list(heat.y_range.factors) == ["pos", "neg"]  # the first row on top
    cells = dict(zip(zip(heat_src.data["y"], heat_src.data["x"]), heat_src.data["text"]))
    assert cells == {("neg", "neg"): "3", ("neg", "pos"): "1", ("pos", "neg"): "2", ("pos", "pos"): "4"}
    assert heat_src.data["color"][3] != heat_src.data["color"][1]  # the largest count is the darkest
    assert heat.xaxis.axis_label == "predicted" and heat.yaxis.axis_label == "true"
    kind, bar_fig, bar_src = plots.extra_figs["per_type"]
    assert kind == "bars" and bar_src.data["label"] == LABELS and bar_src.data["value"] == [0.4, 0.5, 0.1]
    assert plots.extras_row in plots.root.children and list(plots.extras_row.children) == [heat, bar_fig]
    assert heat_src in plots.sources()  # the display transport sends their columns too
    structure = plots.structure
    for e in evs[3:]:
        st.on_event(e)
    plots.apply(st.take())
    assert plots.extra_figs["confusion"][1] is heat and len(plots.extras_row.children) == 2  # updated, not added
    assert heat_src.data["text"] == ["5", "0", "1", "9"] and bar_src.data["value"] == [0.8, 0.7, 0.6]
    assert plots.structure == structure  # same shape: new values only, no re-serialisation
    # arbitrary metric names: scores on the 0-1 axis, losses and errors on the second one; no per-type lines
    assert plots.eval_metrics == ["eval_loss", "eval_exact_match", "eval_f1", "eval_mse"]
    assert plots.err_axis.visible
    err = {r.glyph.y for r in plots.eval.extra_y_ranges["err"].renderers}
    assert err == {"eval_loss", "eval_mse"} and {r.glyph.y for r in plots.eval.y_range.renderers} == {
        "eval_exact_match",
        "eval_f1",
    }
    assert ("images/s", "@tokens_per_s{0,0}") in plots.speed_hover.tooltips
    assert plots.series()["extras"]["per_type"]["values"] == [0.8, 0.7, 0.6]


def test_a_matrix_that_changes_shape_and_unknown_kinds():
    plots = PlotSet()
    plots.set_extras({"confusion": matrix([[1, 2], [3, 4]]), "later": {"kind": "generations", "items": []}})
    assert set(plots.extra_figs) == {"confusion"}  # an unknown kind is skipped, not an error
    bigger = {
        "kind": "matrix",
        "title": "3 classes",
        "rows": list("abc"),
        "cols": list("abc"),
        "values": [[1] * 3] * 3,
    }
    plots.set_extras({"confusion": bigger})
    _, fig, src = plots.extra_figs["confusion"]
    assert list(fig.x_range.factors) == ["a", "b", "c"] and len(src.data["x"]) == 9 and fig.title.text == "3 classes"
    ragged = {"kind": "matrix", "rows": ["a", "b"], "cols": ["a", "b"], "values": [[1], "x"]}
    plots.set_extras({"confusion": ragged})  # a malformed entry draws what it can
    assert src.data["text"] == ["1", "", "", ""]


def test_only_errors_stay_on_one_axis():
    st, plots = PanelState("reg"), PlotSet()
    st.on_event(EvalEnded(step=1, epoch=0.1, metrics={"eval_loss": 4.0, "eval_mse": 4.2, "eval_mae": 1.7}))
    plots.apply(st.take())
    assert not plots.err_axis.visible and list(plots.eval.y_range.renderers) == []  # the left axis covers them
    assert is_score("eval_accuracy", [0.2, 1.0]) and not is_score("eval_loss", [0.3]) and not is_score("eval_x", [3])


# ------------------------------------------------------------------ the panel and its final snapshot
def test_panel_header_status_and_final_svg_show_the_task(tiny_config, displays):
    from nb_finetune import finetune
    from nb_finetune.ui.panel import Panel

    run = finetune({**tiny_config, "name": "figs"}, start=False)  # pre-flight only; events are fed by hand
    panel = Panel(run, renderer="static")
    assert "text classification" in panel.header.value  # before RunStarted: the run's own task
    for e in events():
        panel.on_event(e)
    panel.pump()  # the plots (first apply); the text waits for its throttle:
    panel._render_text(force=True)
    assert "token classification" in panel.header.value
    assert "auto: tag lists in &#x27;ner_tags&#x27;" in panel.header.value  # task_detail in the tooltip
    assert "80 images/s" in panel.status.value and "tokens/s" not in panel.status.value
    assert "f1 0.7000" in panel.status.value and "mse 3.0000" in panel.status.value
    assert "PER_f1" not in panel.status.value
    assert set(panel.plots.extra_figs) == {"confusion", "per_type"}
    panel.on_event(RunFinished(state="finished", reason="completed", step=10))
    panel.pump(final=True)
    svg = displays.outputs[-1]["image/svg+xml"]
    ET.fromstring(svg)
    assert "Confusion matrix" in svg and "F1 per entity type" in svg and ">ORG</text>" in svg and ">9</text>" in svg
    run.abort()


def test_svg_draws_a_matrix_and_bars_below_the_curves():
    base = {"loss": {"step": [1, 2], "loss": [1.0, 0.5], "smooth": [1.0, 0.7]}}
    plain = run_svg(base)
    svg = run_svg(
        {**base, "extras": {"m": matrix([[7, 1], [0, 12]]), "b": bars([0.9, 0.25, -0.1]), "x": {"kind": "other"}}},
        title="t",
        state="finished",
    )
    root = ET.fromstring(svg)
    assert int(root.get("height")) > int(ET.fromstring(plain).get("height"))
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert {"7", "12", "neg", "pos", "PER", "LOC", "ORG", "0.9", "0.25"} <= set(texts)
    assert "Confusion matrix" in texts and "F1 per entity type" in texts
    big = {"kind": "matrix", "title": "many", "rows": [str(i) for i in range(40)], "cols": [str(i) for i in range(40)],
           "values": [[i * j for j in range(40)] for i in range(40)]}  # fmt: skip
    many = run_svg({"extras": {"m": big}})
    ET.fromstring(many)
    assert many.count("<rect") >= 1600 and ">1521</text>" not in many  # colours only when cells are tiny


def test_a_long_matrix_title_wraps_to_the_figure_width_and_eval_axes_tick_round():
    """Control: the text classifier's title "Confusion matrix (rows: true, columns: predicted)" stood on one
    line of a 220-pixel figure (BokehJS cut it after "rows: tr"); the eval loss axis of a tiny run ranged over
    0.6930..0.6934 (ticks 0.693, 0.6931, ..., 0.6934)."""
    from nb_finetune.ui.plots import TITLE_PX_PER_CHAR
    from nb_finetune.ui.state import Points

    plots = PlotSet()
    title = "Confusion matrix (rows: true, columns: predicted)"
    assert len(title) * TITLE_PX_PER_CHAR > 220  # the control: it does not fit on one line
    plots.apply(Points(extras={"confusion": {**matrix([[3, 1], [2, 4]]), "title": title}}))
    _, heat, _ = plots.extra_figs["confusion"]
    lines = heat.title.text.split("\n")
    assert lines[0] == "Confusion matrix" and " ".join(lines[1:]) == "rows: true, columns: predicted"
    assert all(len(ln) * TITLE_PX_PER_CHAR <= heat.width - 16 for ln in lines)
    svg = run_svg(plots.series(), title="t", state="finished")
    assert ">Confusion matrix</text>" in svg and ">rows: true, columns: predicted</text>" in svg
    ET.fromstring(svg)

    rows = [{"step": s, "eval_loss": 0.69345 - s * 3.1e-6, "eval_accuracy": 0.5 + s / 400} for s in (30, 60, 90)]
    plots.apply(Points(evals=rows))
    err = plots.eval.extra_y_ranges["err"]
    assert err.min_interval == pytest.approx(0.02 * 0.69345 - 0.02 * 3.1e-6 * 30)  # a 0.014 span: 0.69, 0.695, 0.7
    assert plots.eval.y_range.min_interval == pytest.approx(0.02 * (0.5 + 90 / 400))
    assert plots.err_axis.ticker.desired_num_ticks == 4
