"""The panel in a real kernel, on the current stack and the Colab-pinned one: it appears, its widgets speak the
ipywidgets comm protocol, and a Stop click sent as a frontend sends it stops a run that trains in the background."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel


def _status(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def test_stop_button_click_stops_a_background_run(kernel, tmp_path, tiny_setup):
    r = kernel.execute(tiny_setup())
    assert r.reply["status"] == "ok", r.text
    r = kernel.execute("%%finetune big\nmodel: {{model_dir}}\ndata: {{df}}\nmax_steps: 1000000\nlog_every: 2\n")
    assert r.reply["status"] == "ok", r.text
    # the panel: a VBox with the header, controls and buttons, and BokehJS loaded inline before it
    html = [m["content"]["data"].get("text/html", "") for m in r.displays]
    assert any("Bokeh" in h for h in html), "BokehJS is loaded in the cell"
    assert any("application/vnd.jupyter.widget-view+json" in m["content"]["data"] for m in r.displays)
    (stop,) = kernel.find_widgets("ButtonModel", description="Stop")
    assert kernel.find_widgets("ButtonModel", description="Pause")
    assert kernel.find_widgets("FloatLogSliderModel", description="learning rate")
    status = tmp_path / "runs" / "big" / "status.json"
    end = time.monotonic() + 120
    while _status(status).get("state") != "training" or (_status(status).get("step") or 0) < 3:
        assert time.monotonic() < end, "the run did not start training"
        kernel.drain(0.2)
    kernel.click_button(stop)  # what the browser sends when Stop is clicked; no cell is running
    end = time.monotonic() + 90
    while _status(status).get("state") not in ("stopped", "finished", "failed"):
        assert time.monotonic() < end, f"Stop click not honoured: {_status(status)}"
        kernel.drain(0.2)
    st = _status(status)
    assert (st["state"], st["reason"]) == ("stopped", "user")
    assert st["step"] < 1_000_000
    assert any((tmp_path / "runs" / "big" / "checkpoints").glob("step-*/model.safetensors")), "checkpoint first"
    # the header widget shows the stopped state (the writer re-renders it after the run ends)
    end = time.monotonic() + 30
    while not any("stopped · user" in str(st.get("value", "")) for st in kernel.widgets.values()):
        assert time.monotonic() < end, "the panel's header never showed the stopped state"
        kernel.drain(0.2)


def test_lr_slider_message_changes_the_running_lr(kernel, tmp_path, tiny_setup):
    r = kernel.execute(tiny_setup())
    assert r.reply["status"] == "ok", r.text
    r = kernel.execute(
        "%%finetune lrrun\nmodel: {{model_dir}}\ndata: {{df}}\nmax_steps: 1000000\nlog_every: 2\n"
        "scheduler: constant\nwarmup: 0\nlr: 0.001\n"
    )
    assert r.reply["status"] == "ok", r.text
    (lr,) = kernel.find_widgets("FloatLogSliderModel", description="learning rate")
    metrics = tmp_path / "runs" / "lrrun" / "metrics.jsonl"
    status = tmp_path / "runs" / "lrrun" / "status.json"
    end = time.monotonic() + 120
    while (_status(status).get("step") or 0) < 3:
        assert time.monotonic() < end
        kernel.drain(0.2)
    kernel.send_widget_update(lr, {"value": 0.0002})

    def applied() -> bool:
        recs = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
        sets = [x for x in recs if x.get("event") == "ControlApplied" and x.get("command") == "set"]
        return bool(sets) and any(x.get("event") == "log" and x["step"] > sets[-1]["step"] for x in recs)

    end = time.monotonic() + 60
    while not applied():
        assert time.monotonic() < end, "the lr change did not reach the run"
        kernel.drain(0.2)
    recs = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    change = [x for x in recs if x.get("event") == "ControlApplied"][-1]
    assert change["ok"] and abs(change["args"]["lr"] - 0.0002) < 1e-12
    after = [x for x in recs if x.get("event") == "log" and x["step"] > change["step"]]
    assert abs(after[0]["lr"] - 0.0002) < 1e-12  # what the optimizer's param groups used
    r = kernel.execute("lrrun.abort(); lrrun.wait(60); print(lrrun.status)")
    assert "stopped" in r.text
