"""A live change reads "from -> to": the acknowledgement (`ControlApplied.previous`) carries the value before the
change, metrics.jsonl keeps it (older records without it still read), and the panel's change log and the plots'
hover say "lr 1e-4 → 5e-5, by sidebar, step 40"."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("bokeh")

from nb_finetune import finetune  # noqa: E402
from nb_finetune.core import records  # noqa: E402
from nb_finetune.core.events import ControlApplied, RunStarted  # noqa: E402
from nb_finetune.ui.plots import PlotSet  # noqa: E402
from nb_finetune.ui.state import PanelState, group_span  # noqa: E402

LAYERS = [
    {"group": "embeddings", "kind": "embeddings", "params": 100, "trainable": True},
    *({"group": f"blocks.{i}", "kind": "block", "params": 50, "trainable": True} for i in range(4)),
    {"group": "head", "kind": "head", "params": 10, "trainable": True},
]


def _started() -> RunStarted:
    return RunStarted("c", "/r", 100, 10, 80, 20, "cpu", "fp32", 310, 310, [dict(x) for x in LAYERS])


def test_a_change_says_from_to_by_whom_and_when():
    """Control: an old record (no `previous`) says only the new value; before this change every label was "lr=5e-5"
    and the hover split it over three lines."""
    st = PanelState("c")
    st.on_event(_started())
    st.on_event(
        ControlApplied(step=40, command="set", args={"lr": 5e-5}, seq=1, source="file:server", previous={"lr": 1e-4})
    )
    st.on_event(ControlApplied(step=41, command="set", args={"weight_decay": 0.1}, seq=2, source="panel"))
    changes = st.snapshot()["changes"]
    assert [c["label"] for c in changes] == ["lr 1e-4 → 5e-5", "weight_decay → 0.1"]
    plots = PlotSet()
    plots.apply(st.take())
    assert plots.marker_src.data["text"] == [
        "lr 1e-4 → 5e-5, by sidebar, step 40",
        "weight_decay → 0.1, by panel, step 41",
    ]
    assert plots.lr_marker_src.data["text"] == plots.marker_src.data["text"]


def test_a_freeze_says_which_groups_were_frozen_before_and_after():
    st = PanelState("f")
    st.on_event(_started())
    st.on_event(
        ControlApplied(
            step=5, command="freeze", args={"spec": ["blocks.0-2"]}, seq=1, source="magic", previous={"spec": []}
        )
    )
    # an old record: the panel knows what was frozen before from its own layer map
    st.on_event(ControlApplied(step=9, command="freeze", args={"spec": ["embeddings"]}, seq=2, source="api"))
    # gradual unfreezing: its spec is the sorted frozen set, shown in layer-map order
    st.on_event(
        ControlApplied(
            step=12, command="freeze", args={"spec": []}, seq=0, source="schedule", previous={"spec": ["embeddings"]}
        )
    )
    assert [c["label"] for c in st.snapshot()["changes"]] == [
        "frozen none → blocks.0–2",
        "frozen blocks.0–2 → embeddings",
        "unfreeze embeddings → none",
    ]
    assert (
        group_span(["embeddings", "blocks.0", "blocks.1", "blocks.3", "head"])
        == "embeddings, blocks.0–1, blocks.3, head"
    )


def test_records_keep_the_value_before_and_old_records_still_read():
    e = ControlApplied(step=3, command="set", args={"lr": 5e-5}, seq=1, source="panel", previous={"lr": 1e-4})
    rec = records.encode(e)
    assert rec["previous"] == {"lr": 1e-4}
    assert records.decode(records.loads(records.dumps(rec))).previous == {"lr": 1e-4}
    old = {k: v for k, v in rec.items() if k != "previous"}  # written before the field existed
    back = records.decode(old)
    assert isinstance(back, ControlApplied) and back.previous == {} and back.args == {"lr": 5e-5}


def _changes(run) -> list[dict]:
    return [r for r in run.run_dir.read_metrics() if r.get("event") == "ControlApplied" and r.get("source") == "api"]


def test_a_real_run_acknowledges_each_change_with_the_value_before(tiny_config):
    """The loop's acknowledgement, as metrics.jsonl records it; the refused value keeps its `previous` too."""
    run = finetune({**tiny_config, "name": "fromto", "max_steps": 100_000, "scheduler": "constant", "warmup": 0})
    try:
        t0 = time.monotonic()
        while run.step < 2 and time.monotonic() - t0 < 60:
            time.sleep(0.05)
        run.set(lr=5e-4)
        run.freeze(["embeddings"])
        run.set(max_steps=1)  # below the current step: refused
        while len(_changes(run)) < 3 and time.monotonic() - t0 < 60:
            time.sleep(0.05)
    finally:
        run.abort()
        run.wait(60)
    lr, freeze, refused = _changes(run)[:3]
    assert lr["args"] == {"lr": 5e-4} and lr["previous"] == {"lr": 1e-3} and lr["ok"]
    assert freeze["args"] == {"spec": ["embeddings"]} and freeze["previous"] == {"spec": []} and freeze["ok"]
    assert not refused["ok"] and refused["previous"] == {"max_steps": 100_000}
    st = PanelState.from_records(run.run_dir.read_metrics(), "fromto")
    labels = [c["label"] for c in st.snapshot()["changes"]]
    assert "lr 1e-3 → 5e-4" in labels and "frozen none → embeddings" in labels


def test_the_cli_and_the_text_renderer_say_from_to_and_who():
    """Control: both printed "set applied at step 40" (no values, no source) before, and an applied set then
    repeated its values after the label (": lr=5e-05")."""
    import io

    from nb_finetune.cli import TextProgress
    from nb_finetune.ui.progress import ProgressView

    changes = [
        # the loop's acknowledgement of a set echoes the new values ("lr=5e-05"): the label says them already
        ControlApplied(
            step=40, command="set", args={"lr": 5e-5}, seq=1, source="panel", message="lr=5e-05", previous={"lr": 1e-4}
        ),
        ControlApplied(
            step=41, command="freeze", args={"spec": ["embeddings"]}, seq=2, source="file:cli", previous={"spec": []}
        ),
        ControlApplied(
            step=42,
            command="set",
            args={"max_steps": 1},
            seq=3,
            source="magic",
            ok=False,
            message="max_steps 1 is below the current step 42",
            previous={"max_steps": 500},
        ),
    ]
    out = io.StringIO()
    cli = TextProgress(out)
    view = ProgressView("c")
    notes = []
    for e in changes:
        cli.on_event(e)
        view.on_event(e)
        notes.append(view.text().splitlines()[-1])
    assert out.getvalue().splitlines() == [
        "lr 1e-4 → 5e-5 (panel) applied at step 40",
        "frozen none → embeddings (CLI) applied at step 41",
        "max_steps 500 → 1 (magic) refused at step 42: max_steps 1 is below the current step 42",
    ]
    assert notes == out.getvalue().splitlines()
    st = PanelState("c")
    for e in changes:
        st.on_event(e)
    log = st.snapshot()["changes"]  # the panel's change log: the refusal keeps its reason, the set adds nothing
    assert [c["message"] for c in log] == ["", "", "max_steps 1 is below the current step 42"]
