"""The engine on a tiny random BERT: learning, live controls, stop, freezing changes, precision switches."""

from __future__ import annotations

import time

import pytest

from nb_finetune import finetune
from nb_finetune.core.events import StepEnded


class OnStep:
    """Calls `fn(step)` on the training thread after each optimizer step."""

    def __init__(self, fn):
        self.fn = fn

    def on_event(self, e):
        if isinstance(e, StepEnded):
            self.fn(e.step)


def test_loss_decreases_and_run_finishes(tiny_config):
    run = finetune(tiny_config, epochs=8, lr=3e-3, warmup=0, eval_at_start=True)
    run.wait(timeout=120)
    assert run.status == "finished", run.error
    h = run.history
    losses = h["loss"].dropna().tolist()
    assert len(losses) == run.step
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first * 0.8, (first, last)
    evals = h.dropna(subset=["eval_accuracy"])
    assert evals["eval_accuracy"].iloc[-1] > evals["eval_accuracy"].iloc[0]
    assert run.checkpoints, "a finished run keeps a checkpoint"
    assert (run.dir / "metrics.jsonl").is_file() and (run.dir / "config.yaml").is_file()
    preds = run.predict(["a good great film", "a bad awful film"])
    assert [p["label"] for p in preds] == ["positive", "negative"]


def test_set_lr_reaches_param_groups_at_next_step(tiny_config):
    lrs = {}
    holder = {}

    def on_step(step):
        if step == 4:
            holder["run"].set(lr=5e-3)

    class Rec:
        def on_event(self, e):
            if isinstance(e, StepEnded):
                lrs[e.step] = e.lr
                on_step(e.step)

    cfg = {**tiny_config, "scheduler": "constant", "warmup": 0, "lr": 1e-4, "max_steps": 8}
    # the callback needs the Run: bind it before the worker reaches step 4 (it starts after pre-flight)
    run = finetune(cfg, callbacks=[Rec()], wait=False)
    holder["run"] = run
    run.wait(timeout=120)
    assert run.status == "finished", run.error
    assert lrs[4] == pytest.approx(1e-4) and lrs[5] == pytest.approx(5e-3) and lrs[8] == pytest.approx(5e-3)


def test_stop_on_endless_run_checkpoints_within_bounded_time(tiny_config):
    run = finetune(tiny_config, max_steps=1_000_000)
    t0 = time.monotonic()
    while run.step < 3:
        assert time.monotonic() - t0 < 60
        time.sleep(0.01)
    t_stop = time.monotonic()
    run.stop()
    run.wait(timeout=30)
    assert time.monotonic() - t_stop < 10
    assert (run.status, run.reason) == ("stopped", "user")
    assert 3 <= run.step < 1_000_000
    ck = run.checkpoints
    assert ck and ck[-1].name == f"step-{run.step:06d}"
    assert {p.name for p in ck[-1].iterdir()} >= {
        "model.safetensors",
        "optimizer.safetensors",
        "rng.safetensors",
        "state.json",
    }
    import json

    st = json.loads((run.dir / "status.json").read_text())
    assert st["state"] == "stopped" and st["reason"] == "user"


def test_freeze_change_mid_run_changes_trainable_set_and_keeps_state(tiny_config):
    from safetensors.torch import load_file

    snap = {}

    class Rec:
        def on_event(self, e):
            if isinstance(e, StepEnded) and e.step == 3:
                snap["run"].freeze("bottom 1")
            if e.kind == "ControlApplied" and e.command == "freeze":
                m = snap["run"].model
                snap["emb"] = m.bert.embeddings.word_embeddings.weight.detach().clone()
                snap["blk1"] = m.bert.encoder.layer[1].output.dense.weight.detach().clone()
                snap["msg"] = e.message

    run = finetune({**tiny_config, "max_steps": 8, "save_every": None}, callbacks=[Rec()])
    snap["run"] = run
    run.wait(timeout=120)
    assert run.status == "finished", run.error
    m = run.model
    lm = run.layer_map().set_index("group")
    assert not lm.loc["embeddings", "trainable"] and not lm.loc["blocks.0", "trainable"]
    assert lm.loc["blocks.1", "trainable"] and lm.loc["head", "trainable"]
    frozen_params = int(lm.loc[["embeddings", "blocks.0"], "params"].sum())
    total = int(lm["params"].sum())
    assert snap["msg"] == f"trainable {total - frozen_params:,} of {total:,}"
    assert m.bert.embeddings.word_embeddings.weight.requires_grad is False
    assert (m.bert.embeddings.word_embeddings.weight == snap["emb"]).all(), "frozen weights must not move"
    assert not (m.bert.encoder.layer[1].output.dense.weight == snap["blk1"]).all(), "training went on above"
    opt = load_file(str(run.checkpoints[-1] / "optimizer.safetensors"))
    assert not any(k.startswith("bert.embeddings.") for k in opt), "frozen parameters hold no optimizer state"
    # state of parameters that stayed trainable was carried over the optimizer rebuild: Adam's step count is 8
    assert float(opt["classifier.weight::step"]) == 8.0


@pytest.mark.parametrize("first, second", [("bf16", "fp32")])
def test_bf16_run_then_fp32_run_in_one_process(tiny_config, first, second):
    import json

    runs = []
    for i, prec in enumerate((first, second)):
        run = finetune({**tiny_config, "name": f"p{i}", "precision": prec, "max_steps": 3}, wait=True)
        assert run.status == "finished", run.error
        started = [r for r in run._run_dir.read_metrics() if r.get("event") == "RunStarted"][0]
        assert started["precision"] == prec
        runs.append(run)
    assert all(json.loads((r.dir / "status.json").read_text())["state"] == "finished" for r in runs)


@pytest.mark.slow
def test_compiled_training_matches_eager(tiny_config):
    """compile: true trains through torch.compile (inductor) and reaches the same losses; the first step's time,
    which includes compilation, is reported on its own."""
    cfg = {**tiny_config, "max_steps": 4, "dropout": 0.0, "precision": "fp32", "save_every": None}
    eager = finetune({**cfg, "name": "eager"}, wait=True)
    compiled = finetune({**cfg, "name": "compiled", "compile": True}, wait=True)
    assert compiled.status == "finished", compiled.error
    assert compiled.history["loss"].dropna().tolist() == pytest.approx(
        eager.history["loss"].dropna().tolist(), rel=1e-4, abs=1e-5
    )
    assert compiled.timings["first_step_s"] > eager.timings["first_step_s"]


def test_bad_command_from_the_control_file_is_refused_and_training_goes_on(tiny_config):
    """A command written by another process (CLI, server) is validated by the engine: refused, acknowledged, and
    the run carries on."""
    import json

    from nb_finetune.core.runs import append_command

    run = finetune({**tiny_config, "max_steps": 1_000_000})
    t0 = time.monotonic()
    while run.step < 2:
        assert time.monotonic() - t0 < 60
        time.sleep(0.01)
    append_command(run.dir, "set", lr="fast")
    append_command(run.dir, "set", batch_size=4)
    append_command(run.dir, "set", lr=3e-4)
    while json.loads((run.dir / "status.json").read_text()).get("last_command", 0) < 3:
        assert time.monotonic() - t0 < 60 and not run.done, run.error
        time.sleep(0.02)
    step_then = run.step
    while run.step < step_then + 2:
        time.sleep(0.01)
    run.stop()
    run.wait(timeout=60)
    assert (run.status, run.reason) == ("stopped", "user")
    applied = [r for r in run._run_dir.read_metrics() if r.get("event") == "ControlApplied" and r["command"] == "set"]
    assert [(r["seq"], r["ok"]) for r in applied] == [(1, False), (2, False), (3, True)]
    assert "lr='fast'" in applied[0]["message"] and "cannot change during a run" in applied[1]["message"]
