"""The panel in-process: real runs on a tiny model, widget messages as a frontend sends them, streamed plots."""

from __future__ import annotations

import html
import math
import time
import xml.etree.ElementTree as ET

import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("bokeh")

from nb_finetune import finetune  # noqa: E402
from nb_finetune.ui.panel import Panel  # noqa: E402
from nb_finetune.ui.state import PanelState, Points  # noqa: E402
from nb_finetune.ui.svg import run_svg  # noqa: E402
from nb_finetune.ui.transport import AutoTransport, DisplayTransport, StaticTransport, make_transport  # noqa: E402


# ------------------------------------------------------------------ what a frontend sends
def frontend_sets(widget, value) -> None:
    """The comm message a frontend sends when the user moves a slider / edits a field (ipywidgets 7.7 and 8)."""
    widget._handle_msg(
        {"content": {"data": {"method": "update", "state": {"value": value}, "buffer_paths": []}}, "buffers": []}
    )


def frontend_clicks(button) -> None:
    button._handle_msg({"content": {"data": {"method": "custom", "content": {"event": "click"}}}, "buffers": []})


def until(cond, timeout: float = 60.0, what: str = "condition"):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def attach(run, **kw) -> Panel:
    panel = Panel(run, **kw)
    run.subscribe(panel)
    return panel


def shown(run, renderer: str = "static", **kw) -> Panel:
    """A panel displayed for `run`, which then starts; its writer thread follows the run."""
    panel = attach(run, renderer=renderer, refresh_seconds=0.05, **kw)
    panel.display()
    run.start()
    panel.follow()
    return panel


@pytest.fixture
def long_run(tiny_config):
    run = finetune(
        {**tiny_config, "name": "panel", "max_steps": 1_000_000, "scheduler": "constant", "warmup": 0},
        start=False,
    )
    yield run
    run.abort()
    run._done.wait(30)


# ------------------------------------------------------------------ a whole run
def test_panel_streams_a_real_run_and_leaves_a_final_bundle(tiny_config, displays):
    run = finetune({**tiny_config, "name": "streamed", "max_steps": 24, "eval_every": 8}, start=False)
    panel = attach(run, renderer="widget", refresh_seconds=0.05)
    panel.display()
    run.start()
    t = panel.follow()
    run.wait()
    t.join(10)
    assert run.status == "finished"
    s = panel.plots.series()
    assert s["loss"]["step"] == list(range(1, 25))  # every optimizer step, streamed once each
    assert all(math.isfinite(v) for v in s["loss"]["loss"])
    assert s["eval"]["step"] == [8, 16, 24] and "eval_accuracy" in s["eval"]
    assert s["lr"]["step"][-1] == 24 and s["speed"]["samples_per_s"][-1] > 0
    assert s["layers"]["group"][0] == "embeddings" and s["layers"]["group"][-1] == "head"
    # the task's own figure (text classification: a confusion matrix of the last evaluation), counts summing to n_eval
    (kind, fig, src), *_ = panel.plots.extra_figs.values()
    assert kind == "matrix" and sum(src.data["value"]) == run.task.num_eval
    assert "text classification" in panel.header.value and "tokens/s" in panel.status.value
    # the header and status tell the run's facts
    assert "streamed" in panel.header.value and "finished" in panel.header.value
    assert "step 24/24" in panel.status.value
    assert all(w.disabled for w in panel.controls)
    # the final output: Bokeh HTML over an SVG drawn in Python, also as image/svg+xml
    final = displays.outputs[-1]
    assert "image/svg+xml" in final and "<svg" in final["text/html"] and "embed_item" in final["text/html"]
    ET.fromstring(final["image/svg+xml"])  # well-formed
    assert (
        "finished" in final["image/svg+xml"] and html.escape(fig.title.text.split("\n")[0]) in final["image/svg+xml"]
    )
    # BokehJS is loaded inline (no CDN) before the plots
    assert any(
        "Bokeh" in o.get("text/html", "") and "cdn.bokeh.org" not in o.get("text/html", "")
        for o in displays.outputs[:3]
    )


def test_text_throttle_holds(tiny_config, displays):
    run = finetune({**tiny_config, "name": "throttled", "max_steps": 120, "log_every": 1}, start=False)
    panel = attach(run, renderer="static", refresh_seconds=0.01)
    panel.display()
    run.start()
    t0 = time.monotonic()
    t = panel.follow()
    run.wait()
    t.join(10)
    elapsed = time.monotonic() - t0
    # text re-renders at most every 0.5 s (+ the forced first and final ones), however fast events come
    assert panel.renders <= elapsed / 0.5 + 3, (panel.renders, elapsed)
    assert panel.plots.series()["loss"]["step"][-1] == 120


# ------------------------------------------------------------------ controls reach the engine
def test_lr_slider_changes_the_optimizer_at_the_next_step(long_run, displays):
    panel = shown(long_run)
    until(lambda: long_run.step > 3, what="training")
    frontend_sets(panel.hparams["lr"], 1e-4)
    until(lambda: any(x.startswith("lr ") for x in panel.plots.series()["markers"]["label"]), what="lr marker")
    assert panel.plots.series()["markers"]["source"][-1] == "panel"  # who changed it (not "api")
    assert panel.plots.series()["markers"]["label"][-1] == "lr 1e-3 → 1e-4"  # from -> to
    step_at_change = long_run.step
    until(lambda: long_run.step > step_at_change + 2)
    # the lr the optimizer used (StepEnded reads optimizer.param_groups) is the new one, scheduler constant
    until(lambda: panel.state.lr is not None and abs(panel.state.lr - 1e-4) < 1e-12, what="lr applied")
    hist = long_run.history
    assert abs(hist.dropna(subset=["lr"]).iloc[-1]["lr"] - 1e-4) < 1e-12
    # the change is recorded in metrics.jsonl
    recs = [r for r in long_run.run_dir.read_metrics() if r.get("event") == "ControlApplied"]
    assert any(r["command"] == "set" and r["args"].get("lr") == 1e-4 and r["ok"] for r in recs)


def test_freeze_slider_changes_trainable_parameters(long_run, displays):
    panel = shown(long_run)
    until(lambda: long_run.step > 2 and long_run.model is not None, what="training")
    assert all(p.requires_grad for p in long_run.model.parameters())
    frontend_sets(panel.train_emb, False)  # train embeddings off ...
    frontend_sets(panel.train_last, 1)  # ... and only the top block of 2
    until(lambda: not long_run.layer_map().set_index("group").loc["blocks.0", "trainable"], what="freeze")
    lm = long_run.layer_map().set_index("group")
    assert not lm.loc["embeddings", "trainable"] and lm.loc["blocks.1", "trainable"] and lm.loc["head", "trainable"]
    frozen_names = [n for n, p in long_run.model.named_parameters() if not p.requires_grad]
    assert frozen_names and all(".embeddings." in n or ".layer.0." in n for n in frozen_names)
    # the layer map plot follows
    until(lambda: panel.plots.series()["layers"]["state"][:2] == ["frozen", "frozen"], what="layer map redraw")
    assert panel.plots.series()["layers"]["state"][2:] == ["trainable", "trainable"]


def test_bad_value_is_refused_in_the_panel_and_the_run_goes_on(long_run, displays):
    panel = shown(long_run)
    until(lambda: long_run.step > 1)
    frontend_sets(panel.hparams["weight_decay"], -1.0)
    assert "weight_decay" in panel.note.value and "error-color" in panel.note.value  # shown in red, no exception
    s = long_run.step
    until(lambda: long_run.step > s + 3)
    assert long_run.status == "training"


def test_pause_resume_and_stop_buttons(long_run, displays):
    panel = shown(long_run)
    until(lambda: long_run.step > 1)
    frontend_clicks(panel.pause_btn)
    until(lambda: long_run.status == "paused", what="pause")
    until(lambda: panel.pause_btn.description == "Resume", what="button shows Resume")
    s = long_run.step
    time.sleep(0.3)
    assert long_run.step == s
    frontend_clicks(panel.pause_btn)
    until(lambda: long_run.step > s + 2, what="resume")
    frontend_clicks(panel.stop_btn)
    long_run.wait(60)
    panel._thread.join(10)  # the writer's final render
    assert (long_run.status, long_run.reason) == ("stopped", "user")
    assert long_run.checkpoints, "Stop writes a checkpoint first"
    assert "stopped" in panel.header.value
    # each acknowledgement names the panel (control: these buttons used to be recorded as "API")
    acks = {r["command"]: r.get("source") for r in long_run._run_dir.read_metrics() if r.get("command")}
    assert {k: acks.get(k) for k in ("pause", "resume", "stop")} == dict.fromkeys(("pause", "resume", "stop"), "panel")


def test_paused_start_takes_the_panel_settings(tiny_config, displays):
    run = finetune({**tiny_config, "name": "later", "max_steps": 6}, start=False)
    panel = attach(run, renderer="static", refresh_seconds=0.05)
    panel.display()
    assert not run.started and panel.start_btn.layout.display != "none"
    panel.pump()
    assert panel.plots.series()["layers"]["group"][-1] == "head"  # the planned map, before any training
    frontend_sets(panel.train_emb, False)
    frontend_sets(panel.train_last, 1)
    frontend_sets(panel.hparams["lr"], 3e-4)
    assert run.config.lr == pytest.approx(3e-4)
    assert sorted(run.config.freeze) == ["blocks.0", "embeddings"]
    frontend_clicks(panel.start_btn)
    assert run.started
    panel.follow()
    run.wait(60)
    assert run.status == "finished"
    lm = run.layer_map().set_index("group")
    assert not lm.loc["blocks.0", "trainable"] and lm.loc["blocks.1", "trainable"]


def test_wait_mode_shows_controls_disabled(tiny_config, displays):
    run = finetune({**tiny_config, "name": "waited", "max_steps": 3}, start=False)
    panel = attach(run, renderer="static", interactive=False)
    panel.display()
    assert all(w.disabled for w in panel.controls)
    assert "--wait" in panel.note.value
    run.start()
    run.wait(pump=panel.pump)
    panel.pump(final=True)
    assert run.status == "finished" and "finished" in panel.header.value


# ------------------------------------------------------------------ rebuilding and transports
def test_state_rebuilt_from_metrics_matches_the_live_one(tiny_config):
    run = finetune({**tiny_config, "name": "replay", "max_steps": 12, "eval_every": 4}, start=False)
    live = PanelState("replay")
    run.subscribe(live)
    run.start()
    run.wait(60)
    replay = PanelState.from_records(run.run_dir.read_metrics(), "replay", run.run_dir.status())
    a, b = live.take(), replay.take()
    assert [p["step"] for p in a.loss] == [p["step"] for p in b.loss] == list(range(1, 13))
    assert [p["smooth"] for p in a.loss] == pytest.approx([p["smooth"] for p in b.loss])
    assert [e["step"] for e in b.evals] == [4, 8, 12]
    assert replay.state == "finished" and [x["group"] for x in replay.layers] == [x["group"] for x in live.layers]
    assert b.extras == a.extras and b.extras  # the task's figures of the last evaluation, through the codec
    assert replay.task == live.task == run.task.title


def test_auto_transport_uses_the_widget_once_it_confirms(tiny_config, displays):
    from nb_finetune.ui.plots import PlotSet

    confirmed = AutoTransport(PlotSet(), confirm_timeout=0.2)
    confirmed.show()
    confirmed.model._sync_model(confirmed.model, {"event": "not-a-jsevent"}, [])  # any message from the view
    confirmed.refresh(True, time.monotonic() + 1)
    assert confirmed.mode == "widget"

    silent = AutoTransport(PlotSet(), confirm_timeout=0.2)
    silent.show()
    silent.refresh(True, time.monotonic())
    assert silent.mode == "pending"
    silent.refresh(True, time.monotonic() + 1)  # no view ever answered: the display handle takes over
    assert silent.mode == "display" and silent.model.layout.display == "none" and silent.renders == 1


def test_renderer_choice():
    from nb_finetune.ui.plots import PlotSet

    assert isinstance(make_transport("display", PlotSet()), DisplayTransport)
    assert isinstance(make_transport("static", PlotSet()), StaticTransport)
    with pytest.raises(ValueError, match="auto, widget, display, static"):
        make_transport("fancy", PlotSet())


def test_svg_snapshot_is_well_formed_and_marks_the_state():
    svg = run_svg(
        {
            "loss": {"step": [1, 2, 3], "loss": [1.0, 0.8, float("nan")], "smooth": [1.0, 0.9, 0.85]},
            "eval": {"step": [3], "eval_accuracy": [0.7]},
            "lr": {"step": [1, 2, 3], "lr": [1e-3, 1e-3, 5e-4]},
            "speed": {"step": [1, 2, 3], "samples_per_s": [10, 11, 12]},
            "markers": {"step": [2], "y": [0.9], "label": ["lr=0.0005"]},
        },
        title="r <1>",
        state="stopped",
        note="stopped by the user",
    )
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    assert svg.count("<polyline") >= 4 and "lr=0.0005" in svg and "r &lt;1&gt;" in svg and "stopped" in svg


def _points(a: int, b: int):
    from nb_finetune.ui.state import Points

    return Points(
        loss=[{"step": i, "loss": 1 / i, "smooth": math.nan if i == a else 0.5} for i in range(a, b)],
        speed=[{"step": b - 1, "samples_per_s": 10.0, "tokens_per_s": 100.0, "memory_mb": 100.0}],
    )


def test_display_transport_serialises_the_document_once_and_then_only_new_columns():
    import json
    import re

    from nb_finetune.ui.plots import PlotSet
    from nb_finetune.ui.transport import _source_data_refs

    plots = PlotSet()
    d = DisplayTransport(plots)
    plots.apply(_points(1, 10))
    d._bundle()
    plots.apply(_points(10, 300))
    html = d._bundle()["text/html"]
    assert d.serialisations == 1  # streaming points does not re-serialise the figures
    item = json.loads(re.search(r"var item=(\{.*?\});var n=0", html).group(1))
    cols = dict(_source_data_refs(item)[plots.loss_src.id]["entries"])
    assert cols["step"] == list(range(1, 300))
    assert cols["smooth"][0] is None and cols["smooth"][1] == 0.5  # NaN travels as null (valid JSON)
    plots.apply(
        Points(evals=[{"step": 5, "eval_loss": 0.4}])  # a new metric adds a line: the structure changed
    )
    d._bundle()
    assert d.serialisations == 1  # not at once: new lines are coalesced for a while ...
    d._serialised_at -= 60
    d._bundle()
    assert d.serialisations == 2  # ... then the figures are serialised again


def test_widget_ignores_the_browsers_echo_of_streamed_points(displays):
    from nb_finetune.ui.plots import PlotSet

    plots = PlotSet()
    t = AutoTransport(plots, confirm_timeout=5)
    plots.apply(_points(1, 4))
    echo = {
        "event": "jsevent",
        "kind": "ColumnsStreamed",
        "model": {"id": plots.loss_src.id},
        "data": {"type": "map", "entries": [["step", [1, 2, 3]], ["loss", [1, 0.5, 0.3]], ["smooth", [1, 1, 1]]]},
        "rollover": None,
    }
    t.model._sync_model(t.model, dict(echo), [])
    assert plots.series()["loss"]["step"] == [1, 2, 3]  # not appended twice
    assert t.confirmed and t.model.received["ColumnsStreamed:"] == 1


def _bundle_column(state: dict, name: str, column: str) -> list:
    """A column of the source named `name` in a BokehModel's serialised `render_bundle` (what a new view renders)."""
    import json

    from bokeh.core.json_encoder import serialize_json

    bundle = state["render_bundle"]
    doc = next(iter(json.loads(bundle if isinstance(bundle, str) else serialize_json(bundle))["docs_json"].values()))
    stack = [doc]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            if o.get("name") == "ColumnDataSource" and o.get("attributes", {}).get("name") == name:
                entries = dict(o["attributes"]["data"]["entries"])
                col = entries.get(column, [])
                return col if isinstance(col, list) else list(col.get("array", {}).get("data", []))
            stack.extend(o.values())
        elif isinstance(o, list):
            stack.extend(o)
    return []


def test_a_new_view_gets_every_point_streamed_before_it(displays):
    """A page reload (or Notebook 7 on the same kernel) asks for the widget's whole state: it must carry the points
    streamed so far (the control: jupyter_bokeh's own bundle, made when the widget was, has none), and the views are
    re-rendered once a little later for what streamed while the new page was building its view."""
    from nb_finetune.ui.plots import PlotSet
    from nb_finetune.ui.transport import CATCH_UP_S

    plots = PlotSet()
    t = AutoTransport(plots, confirm_timeout=5)
    plain = t.model._model_to_traits(plots.root)  # what jupyter_bokeh's widget would send a new view
    plots.apply(_points(1, 40))
    assert _bundle_column({"render_bundle": plain}, "nbft-loss", "step") == []
    assert t.model.state_requests == 0  # the first display's state is not a new view
    state = t.model.get_state()  # ipywidgets' answer to `request_states` (a reload) and `request_state`
    assert _bundle_column(state, "nbft-loss", "step") == list(range(1, 40))
    assert t.model.state_requests == 1
    sent = []
    t.model.observe(lambda ch: sent.append(ch), names="render_bundle")
    plots.apply(_points(40, 50))
    t0 = t.model.state_requested_at
    t.refresh(True, t0 + CATCH_UP_S[0] / 2)
    assert sent == []  # not yet
    t.refresh(True, t0 + CATCH_UP_S[0] + 0.1)
    assert len(sent) == 1 and _bundle_column(t.model.get_state("render_bundle"), "nbft-loss", "step")[-1] == 49
    t.refresh(True, t0 + CATCH_UP_S[-1] + 0.1)
    t.refresh(True, t0 + CATCH_UP_S[-1] + 60)
    assert len(sent) == len(CATCH_UP_S)  # a bounded number of re-renders per new view


def test_a_re_render_from_the_pump_sends_the_whole_state():
    """A page restoring its widgets takes the first update whose parent is its `request_state` as the model's whole
    state, and the pump's messages carry the kernel's current request as parent: a re-render sent as a
    `render_bundle`-only update gave that page a model without a module or name. Control: an update of another key
    stays that key alone, and a re-send is not counted as a new view."""
    from nb_finetune.ui.plots import PlotSet
    from nb_finetune.ui.transport import CATCH_UP_S

    plots = PlotSet()
    t = AutoTransport(plots, confirm_timeout=5)
    sent = []
    t.model._send = lambda msg, buffers=None: sent.append(msg)
    t.model.get_state()  # a new view asked
    plots.apply(_points(1, 20))
    t.refresh(True, t.model.state_requested_at + CATCH_UP_S[0] + 0.1)
    (update,) = [m for m in sent if m.get("method") == "update" and "render_bundle" in m["state"]]
    assert {"_model_name", "_model_module", "_model_module_version", "layout"} <= set(update["state"])
    assert _bundle_column(update["state"], "nbft-loss", "step")[-1] == 19
    assert t.model.state_requests == 1
    sent.clear()
    t.model.combine_events = not t.model.combine_events
    assert [set(m["state"]) for m in sent if m.get("method") == "update"] == [{"combine_events"}]


def test_changes_say_who_made_them():
    """Control: every change used to say "api" (the control file's own source overwrote the writer's)."""
    from nb_finetune.core.events import ControlApplied
    from nb_finetune.ui.state import source_label

    assert [source_label(s) for s in ("panel", "magic", "api", "file:server", "file:cli", "file:magic", "file")] == [
        "panel",
        "magic",
        "API",
        "sidebar",
        "CLI",
        "magic",
        "control file",
    ]
    st = PanelState("who")
    st.on_event(ControlApplied(step=3, command="set", args={"lr": 7.079457843841373e-05}, seq=1, source="file:cli"))
    (change,) = st.snapshot()["changes"]
    assert change["source"] == "CLI" and change["label"] == "lr → 7.08e-5"  # rounded for people


def test_a_slider_dragged_across_five_values_sends_one_change(long_run, displays):
    """A drag (or five arrow-key presses) reports each value it passes; only the last one reaches the run. Control:
    without the debounce every value was a command, five ControlApplied records."""
    panel = shown(long_run)
    until(lambda: long_run.step > 2, what="training")
    for v in (2e-4, 3e-4, 4e-4, 5e-4, 6e-4):
        frontend_sets(panel.hparams["lr"], v)
    until(lambda: any(c["label"].startswith("lr ") for c in panel.state.snapshot()["changes"]), what="the change")
    time.sleep(1.0)  # nothing else is on its way
    sets = [r for r in long_run.run_dir.read_metrics() if r.get("event") == "ControlApplied" and r["command"] == "set"]
    assert [r["args"] for r in sets] == [{"lr": 6e-4}]
    assert sets[0]["source"] == "panel"


def test_lr_groups_that_coincide_are_drawn_once():
    """Control: every group got its own line from the start, four lines on top of each other."""
    from nb_finetune.ui.plots import PlotSet

    plots = PlotSet()
    same = {"embeddings": 1e-3, "blocks.0": 1e-3, "head": 1e-3}
    plots.apply(Points(lr=[{"step": s, "lr": 1e-3, "group_lrs": same} for s in (1, 2)]))
    assert plots.lr_groups == [] and [i.label.value for i in plots.lr.legend[0].items] == ["all groups"]
    plots.apply(Points(lr=[{"step": 3, "lr": 1e-3, "group_lrs": {**same, "embeddings": 5e-4}}]))
    assert plots.lr_groups == ["embeddings"]  # split off where it differs, drawn only there
    assert plots.series()["lr"]["g:embeddings"][2:] == [5e-4] and math.isnan(plots.series()["lr"]["g:embeddings"][0])


def test_the_display_renderer_carries_the_state_line_above_the_live_plots(tiny_config, displays):
    """Without a widget manager (VS Code, Colab without widgets) the panel's box shows nothing: the display output
    has the run's header and status line, as HTML and as plain text. Control: it had only the plots and the text
    "(live plots: they need a frontend that runs JavaScript)"."""
    run = finetune({**tiny_config, "name": "shown_plain", "max_steps": 40, "log_every": 2}, start=False)
    panel = shown(run, renderer="display", plot_interval=0.05)
    run.wait(60)
    panel._thread.join(10)
    live = [
        c["data"]
        for c in displays.calls
        if c["update"] and "nb-finetune-display-status" in c["data"].get("text/html", "")
    ]
    assert live, "a live render with the state line"
    html_, text = live[-1]["text/html"], live[-1]["text/plain"]
    assert "shown_plain" in html_ and "train loss" in html_ and "step " in html_ and "nb-finetune-plots" in html_
    assert text.startswith("shown_plain: training · step ") and "train loss" in text
    assert html_.index("nb-finetune-display-status") < html_.index("nb-finetune-plots")  # above the plots
    final = displays.outputs[-1]
    assert "nb-finetune-summary" in final["text/html"]  # then the run's summary replaces it


def test_every_view_of_the_box_shows_the_final_summary_and_plots(tiny_config, displays):
    """A page reloaded mid-run (or opened after the run) renders the widgets' state, never the display update that
    carries the final output: the summary and the final plots must be widget state. Control: the summary lived only
    in the display update (a reloaded page kept "training" plots and no summary), and the display renderer (no
    widget views) keeps it there."""
    run = finetune({**tiny_config, "name": "every_view", "max_steps": 24, "eval_every": 8}, start=False)
    panel = shown(run, renderer="widget")
    run.wait(60)
    panel._thread.join(10)
    # what a new view gets: the box's children and their state
    assert panel.summary_view in panel.box.children and panel.summary_view.layout.display != "none"
    state = panel.summary_view.get_state()
    assert "nb-finetune-summary" in state["value"] and state["value"].count('class="nbft-eval-row') == 3
    assert "every_view" in state["value"] and "finished" in state["value"]
    plots = panel.transport.model
    assert plots in panel.box.children and plots.layout.display != "none"  # the final plots, in the box
    assert _bundle_column(plots.get_state(), "nbft-loss", "step") == list(range(1, 25))  # every point
    assert panel.done_class in panel.box._dom_classes
    # the display output, for saved notebooks, hides itself where this box renders (no second copy in the page)
    final = displays.outputs[-1]["text/html"]
    assert f"body:has(.{panel.done_class}) .nb-finetune-final.{panel.done_class}-copy" in final
    assert f"document.querySelector('.{panel.done_class}')" in final and "nb-finetune-summary" in final

    other = finetune({**tiny_config, "name": "plain_display", "max_steps": 6}, start=False)
    control = shown(other, renderer="display", plot_interval=0.05)
    other.wait(60)
    control._thread.join(10)
    assert control.summary_view.layout.display == "none" and control.done_class not in control.box._dom_classes
    assert (
        "nb-finetune-summary" in displays.outputs[-1]["text/html"]
        and "body:has(" not in displays.outputs[-1]["text/html"]
    )
