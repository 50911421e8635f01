"""MLflow tracker on the tiny BERT: the run in the sqlite store under output_dir with the resolved config as params,
the metric history equal to metrics.jsonl step by step, a tag per live change, the model and the status.
Control case: without `track` no mlflow.db is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nb_finetune import finetune
from nb_finetune.core.events import ControlApplied, EvalEnded, Logged, StepEnded
from nb_finetune.core.runs import RunDir

pytest.importorskip("mlflow")


class SetAt:
    """Changes the lr live at a step (one ControlApplied for the tracker to tag)."""

    def __init__(self, step, **values):
        self.step, self.values, self.run = step, values, None

    def on_event(self, e):
        if isinstance(e, StepEnded) and e.step == self.step:
            self.run.set(**self.values)


def metrics_history(run_dir) -> dict[str, list[tuple[int, float]]]:
    """metric -> [(step, value)] as metrics.jsonl holds them (the one codec)."""
    out: dict[str, list] = {}
    for e in RunDir(run_dir).read_events():
        if isinstance(e, Logged):
            out.setdefault("loss", []).append((e.step, e.loss))
        elif isinstance(e, EvalEnded):
            for k, v in e.metrics.items():
                out.setdefault(k, []).append((e.step, v))
    return out


def test_mlflow_run_params_history_tags_model(tiny_config, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from mlflow import MlflowClient

    setter = SetAt(3, lr=5e-4)
    cfg = {**tiny_config, "max_steps": 6, "eval_every": 3, "track": "mlflow"}
    run = finetune(cfg, callbacks=[setter], start=False)
    setter.run = run
    run.start().wait(timeout=120)
    assert run.status == "finished", run.error
    db = Path(tiny_config["output_dir"]) / "mlflow.db"
    assert db.is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{db.resolve()}")
    exp = client.get_experiment_by_name("nb_finetune")
    (mr,) = client.search_runs([exp.experiment_id])
    assert mr.info.status == "FINISHED" and mr.data.tags["nb_finetune.state"] == "finished"
    assert mr.data.params["lr"] == "0.001" and mr.data.params["max_steps"] == "6"
    assert mr.data.params["batch_size"] == "16"

    want = metrics_history(run.dir)
    assert set(want) >= {"loss", "eval_loss", "eval_accuracy"}
    for key, hist in want.items():
        got = sorted((m.step, m.value) for m in client.get_metric_history(mr.info.run_id, key))
        assert [s for s, _ in got] == [s for s, _ in sorted(hist)], key
        assert [v for _, v in got] == pytest.approx([v for _, v in sorted(hist)], rel=1e-6), key

    changes = [e for e in run.run_dir.read_events() if isinstance(e, ControlApplied)]
    tags = {k: json.loads(v) for k, v in mr.data.tags.items() if k.startswith("live.")}
    assert len(tags) == len(changes) == 1
    (tag,) = tags.values()
    assert tag["args"] == {"lr": 5e-4} and tag["step"] == changes[0].step and tag["ok"]

    models = client.search_logged_models([exp.experiment_id])
    assert len(models) == 1 and models[0].source_run_id == mr.info.run_id
    files = {Path(f.path).name for f in client.list_logged_model_artifacts(models[0].model_id)}
    assert "model.safetensors" in files, files


def test_no_track_no_store(tiny_config):
    run = finetune({**tiny_config, "max_steps": 2}, wait=True)
    assert run.status == "finished"
    assert not (Path(tiny_config["output_dir"]) / "mlflow.db").exists()
