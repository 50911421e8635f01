"""W&B, Comet and TensorBoard trackers on the tiny BERT, all three in one run: their offline files hold the same
metric history as metrics.jsonl, the live change and the model; a tracker that raises on every call leaves the run
finished with one error line in run.log. Control case: the metrics.jsonl history is non-empty and differs per step,
so an empty or shifted tracker history fails."""

from __future__ import annotations

import pytest

from nb_finetune import finetune
from nb_finetune.core.events import EvalEnded, Logged, StepEnded
from nb_finetune.core.runs import RunDir

from .offline_files import comet_history, comet_messages, tensorboard_history, wandb_history


def jsonl_history(run_dir) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list] = {}
    for e in RunDir(run_dir).read_events():
        if isinstance(e, Logged):
            out.setdefault("loss", []).append((e.step, e.loss))
            out.setdefault("lr", []).append((e.step, e.lr))
        elif isinstance(e, EvalEnded):
            for k, v in e.metrics.items():
                out.setdefault(k, []).append((e.step, v))
    return out


def same(got, want):
    got, want = sorted(got), sorted(want)
    assert [s for s, _ in got] == [s for s, _ in want]
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)


class SetAt:
    def __init__(self, step, **values):
        self.step, self.values, self.run = step, values, None

    def on_event(self, e):
        if isinstance(e, StepEnded) and e.step == self.step:
            self.run.set(**self.values)


def test_wandb_comet_tensorboard_offline_files(tiny_config, monkeypatch):
    pytest.importorskip("wandb")
    pytest.importorskip("comet_ml")
    pytest.importorskip("tensorboard")
    for var in ("WANDB_API_KEY", "WANDB_MODE", "COMET_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    setter = SetAt(2, lr=5e-4)
    cfg = {**tiny_config, "max_steps": 4, "eval_every": 2, "track": ["wandb", "comet", "tensorboard"]}
    run = finetune(cfg, callbacks=[setter], start=False)
    setter.run = run
    run.start().wait(timeout=180)
    assert run.status == "finished", run.error
    assert "tracker_errors" not in run.run_dir.status(), run.run_dir.status()
    want = jsonl_history(run.dir)
    assert len(want["loss"]) == 4 and len(want["eval_loss"]) == 2

    wb, artifacts = wandb_history(run.dir)
    cm = comet_history(run.dir)
    tb = tensorboard_history(run.dir)
    for key, hist in want.items():
        same(wb[key], hist)
        same(cm[key], hist)
        same(tb[key.replace("eval_", "eval/") if key.startswith("eval_") else f"train/{key}"], hist)

    assert [a.type for a in artifacts] == ["model"]
    assert {f.path for f in artifacts[0].manifest.contents} >= {"model.safetensors", "config.yaml", "state.json"}
    msgs = comet_messages(run.dir)
    params = {
        m["payload"]["param"]["paramName"]: m["payload"]["param"]["paramValue"]
        for m in msgs
        if m["type"] == "parameter_msg"
    }
    assert params["lr"] == "0.001" and params["max_steps"] == "4"
    others = {m["payload"]["key"]: m["payload"]["value"] for m in msgs if m["type"] == "log_other"}
    assert others["state"] == "finished"
    assert any(k.startswith("live_change_2_set") for k in others), others
    uploads = {m["payload"]["additional_params"]["fileName"] for m in msgs if m["type"] == "file_upload"}
    assert {"tracked-model/model.safetensors", "tracked-model/config.yaml"} <= uploads, uploads
    assert not any("optimizer" in u for u in uploads)


class Raising:
    def __init__(self, cfg, run_dir):
        self.name = "mlflow"
        self.loggers = ()

    def on_event(self, e):
        raise ConnectionError("tracking server down\nsecond line")


def test_tracker_raising_on_every_call_never_stops_training(tiny_config, monkeypatch):
    pytest.importorskip("mlflow")
    from nb_finetune.core.track import mlflow_tracker

    monkeypatch.setattr(mlflow_tracker, "MlflowTracker", Raising)
    run = finetune({**tiny_config, "max_steps": 4, "eval_every": 2, "track": "mlflow"}, wait=True)
    assert run.status == "finished" and run.step == 4, run.error
    lines = [ln for ln in (run.dir / "run.log").read_text().splitlines() if "tracker" in ln]
    assert len(lines) == 1, lines
    assert "mlflow" in lines[0] and "tracking server down" in lines[0]
    assert run.run_dir.status()["tracker_errors"] == {"mlflow": "ConnectionError: tracking server down"}
    from nb_finetune.core.events import ControlApplied

    shown = [e for e in run.run_dir.read_events() if isinstance(e, ControlApplied) and e.source == "tracker"]
    assert len(shown) == 1 and not shown[0].ok and "tracking server down" in shown[0].message


def test_missing_extra_named_in_one_line(tiny_config, monkeypatch):
    import importlib.util

    from nb_finetune.errors import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else real(n, *a))
    with pytest.raises(ConfigError, match=r"track: wandb needs the wandb extra: pip install 'nb_finetune\[wandb\]'"):
        finetune({**tiny_config, "track": ["tensorboard", "wandb"]})
    with pytest.raises(ConfigError, match="unknown tracker 'neptune'"):
        finetune({**tiny_config, "track": "neptune"})
