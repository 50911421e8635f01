"""The metrics.jsonl codec: every event round-trips through a JSON line; records of older versions still decode."""

from __future__ import annotations

import json
import math

import pytest

from nb_finetune.core import records
from nb_finetune.core.events import (
    CheckpointSaved,
    ControlApplied,
    EvalEnded,
    Logged,
    RunFinished,
    RunStarted,
    StepEnded,
)
from nb_finetune.core.runs import RegistryCallback, RunDir

EXTRAS = {
    "confusion": {"kind": "matrix", "title": "Confusion matrix", "rows": ["neg", "pos"], "cols": ["neg", "pos"],
                  "values": [[40, 2], [5, 53]]},
    "per_type": {"kind": "bars", "title": "F1 per entity type", "labels": ["PER", "LOC"], "values": [0.91, 0.5]},
}  # fmt: skip

EVENTS = [
    RunStarted(
        name="r",
        run_dir="/tmp/r",
        total_steps=30,
        steps_per_epoch=10,
        num_train=80,
        num_eval=20,
        device="cpu",
        precision="fp32",
        params_total=1000,
        params_trainable=600,
        layers=[{"group": "embeddings", "kind": "embeddings", "params": 400, "trainable": False}],
        start_step=3,
        cache="off (no frozen block)",
        task="token-classification",
        task_title="token classification",
        task_detail=["task: token-classification (auto: tags in 'ner_tags')", "labels (3): O, B-PER, I-PER"],
        throughput_unit="images",
        time=100.0,
    ),
    StepEnded(step=4, epoch=0.4, total_steps=30, samples=32, tokens=512, elapsed=1.5, lr=1e-4, time=101.0),
    Logged(
        step=4,
        epoch=0.4,
        loss=0.75,
        lr=1e-4,
        grad_norm=None,
        samples_per_s=20.0,
        tokens_per_s=320.0,
        nonfinite_steps=1,
        losses=[0.8, 0.75],
        memory_mb=12.5,
        tflops=0.01,
        mfu=None,
        padding=0.2,
        group_lrs={"blocks.1": 5e-5, "head": 1e-4},
        time=102.0,
    ),
    EvalEnded(step=10, epoch=1.0, metrics={"eval_loss": 0.4, "eval_f1": 0.8}, is_best=True, extras=EXTRAS, time=103.0),
    EvalEnded(step=20, epoch=2.0, metrics={"eval_mse": 2.5}, time=104.0),
    CheckpointSaved(step=10, path="/tmp/r/checkpoints/step-000010", reason="best", time=105.0),
    ControlApplied(step=11, command="set", args={"lr": 1e-5}, seq=2, source="file", ok=False, message="no", time=6.0),
    RunFinished(state="stopped", reason="user", step=12, error=None, best_metric=0.4, time=107.0),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: e.kind)
def test_every_event_round_trips_through_a_json_line(event):
    line = records.dumps(records.encode(event))
    back = records.decode(json.loads(line))
    assert back == event
    assert type(back) is type(event)


def test_the_on_disk_format_is_the_one_every_version_wrote():
    log = records.encode(EVENTS[2])
    assert log["event"] == "log" and log["loss"] == 0.75 and log["losses"] == [0.8, 0.75]
    ev = records.encode(EVENTS[3])
    assert ev["event"] == "eval" and ev["eval_f1"] == 0.8 and ev["is_best"] is True  # metrics flat
    assert ev["extras"]["confusion"]["values"] == [[40, 2], [5, 53]]
    assert "extras" not in records.encode(EVENTS[4])  # no empty key on every line
    assert records.dumps(ev).startswith('{"event": "eval"')
    assert records.EVAL_NEEDLE in records.dumps(ev).encode()  # the server's scan finds it
    assert records.encode(EVENTS[0])["event"] == "RunStarted"


def test_records_of_an_older_version_decode():
    old_start = {  # before tasks: no task fields, no cache, no start_step
        "event": "RunStarted", "time": 1.0, "name": "old", "run_dir": "/x", "total_steps": 10, "steps_per_epoch": 5,
        "num_train": 40, "num_eval": 10, "device": "cpu", "precision": "fp32", "params_total": 10,
        "params_trainable": 10, "layers": [],
    }  # fmt: skip
    e = records.decode(old_start)
    assert isinstance(e, RunStarted) and e.task == "text-classification" and e.task_detail == []
    assert e.throughput_unit == "tokens" and e.start_step == 0
    old_log = {"event": "log", "time": 2.0, "step": 3, "epoch": 0.5, "loss": 0.7, "lr": 1e-4, "grad_norm": 1.5,
               "samples_per_s": 10.0, "tokens_per_s": 100.0, "losses": [0.7]}  # fmt: skip
    e = records.decode(old_log)
    assert isinstance(e, Logged) and e.step == 3 and e.grad_norm == 1.5 and e.group_lrs == {} and e.padding is None
    e = records.decode({"event": "eval", "time": 3.0, "step": 4, "epoch": 1.0, "eval_loss": 0.5, "eval_accuracy": 0.75,
                        "is_best": False})  # fmt: skip
    assert isinstance(e, EvalEnded) and e.metrics == {"eval_loss": 0.5, "eval_accuracy": 0.75} and e.extras == {}


def test_decoding_is_lenient_with_partial_records_and_strict_with_garbage():
    assert records.decode({"event": "eval", "eval_loss": 0.5}).metrics == {"eval_loss": 0.5}  # no step: 0
    assert records.decode({"event": "RunStarted", "time": 200}).time == 200  # a hand-written marker
    log = records.decode({"event": "log", "step": "7"})
    assert log.step == 7 and math.isnan(log.loss)  # a log without a loss: unknown, not 0
    assert records.decode({"event": "log", "step": "seven"}) is None
    assert records.decode({"event": "log", "step": 1, "losses": "x"}) is None
    assert (
        records.decode({"event": "nope"}) is None and records.decode(["log"]) is None and records.decode(None) is None
    )
    assert records.decode({"event": "log", "step": 1, "future_field": 1}).step == 1  # a newer version's key
    # NaN written by json.dumps comes back as NaN
    back = records.decode(json.loads(records.dumps(records.encode(Logged(1, 0.1, math.nan, 0.0, None, 1.0, 1.0)))))
    assert math.isnan(back.loss)
    # an Event.to_dict() record (metrics nested) decodes too
    assert records.decode(EVENTS[3].to_dict()) == EVENTS[3]


def test_registry_writes_through_the_codec_and_reads_back_events(tmp_path):
    rd = RunDir.create(tmp_path, "codec")
    cb = RegistryCallback(rd)
    for e in EVENTS:
        cb.on_event(e)
    with open(rd.path / "metrics.jsonl", "a") as f:
        f.write('{"event": "log", "step": 99, "lo')  # a writer mid-line
    assert rd.read_events() == [e for e in EVENTS if not isinstance(e, StepEnded)]
    assert records.read_events(tmp_path / "missing.jsonl") == []
    st = rd.status()
    assert st["state"] == "stopped" and st["reason"] == "user" and st["last_checkpoint"].endswith("step-000010")
    assert st["metrics"] == {"eval_mse": 2.5}
