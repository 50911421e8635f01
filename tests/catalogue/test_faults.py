"""Faults -> nothing lost: NaN losses, a full disk during a checkpoint, damaged checkpoints, a Drive-like file
system, two processes racing for one run name, memory released when a run ends."""

from __future__ import annotations

import errno
import fcntl
import gc
import os
import weakref
from pathlib import Path

import pytest

from nb_finetune import finetune
from nb_finetune.core.runs import RunDir, append_command, read_json
from nb_finetune.core.tasks.text_classification import TextClassification
from nb_finetune.core.train.checkpoints import verify_checkpoint
from nb_finetune.errors import CheckpointError, FinetuneWarning


def _nan_at(monkeypatch, bad_calls: set[int]):
    """The task's loss turns NaN on these forward calls (1-based; one call per step with grad_accum 1)."""
    calls = {"n": 0}
    real = TextClassification.forward

    def forward(self, model, batch):
        loss, out = real(self, model, batch)
        if model.training:
            calls["n"] += 1
            if calls["n"] in bad_calls:
                loss = loss * float("nan")
        return loss, out

    monkeypatch.setattr(TextClassification, "forward", forward)
    return calls


def _weights(path: Path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_nan_loss_stops_with_the_last_good_checkpoint_then_resumes(tiny_config, monkeypatch):
    """NaN at step 5: the run stops naming step 5 and its batch, no update was applied from step 5 on (the model in
    memory equals checkpoint step-4), nothing was saved past it, and a resume from last finishes.
    Control: the same run with on_nonfinite: skip trains to the end and counts the skipped step."""
    cfg = {**tiny_config, "name": "nan", "max_steps": 10, "save_every": 2, "log_every": 4}
    cfg["data"] = {**cfg["data"], "eval_split": 0.0}
    _nan_at(monkeypatch, {5})
    run = finetune(cfg, wait=True)
    assert (run.status, run.reason) == ("failed", "error")
    assert "step 5 (epoch 0, micro-batch 4)" in run.error and "step-000004" in run.error, run.error
    assert [c.name for c in run.checkpoints][-1] == "step-000004"
    saved = _weights(run.checkpoints[-1])
    assert all((p.detach() == saved[n]).all() for n, p in run.model.named_parameters() if n in saved)
    st = read_json(run.dir / "status.json")
    assert st["state"] == "failed" and "NaN or Inf at step 5" in st["error"]

    monkeypatch.undo()
    resumed = finetune({**cfg, "resume_from": "last"}, wait=True)
    assert (resumed.status, resumed.step) == ("finished", 10) and resumed.dir == run.dir

    _nan_at(monkeypatch, {5})
    skip = finetune({**cfg, "name": "nan-skip", "on_nonfinite": "skip"}, wait=True)
    assert (skip.status, skip.step) == ("finished", 10)
    assert read_json(skip.dir / "status.json")["nonfinite_steps"] == 1
    import torch

    assert all(torch.isfinite(p).all() for p in skip.model.parameters())


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tiny_config, monkeypatch):
    """ENOSPC while writing step-4: the run fails saying so, step-2 stays whole and loadable, no partial directory
    is left. Control: step-2 itself was written through the same (patched) writer."""
    import safetensors.torch as st

    real = st.save_file

    def save_file(tensors, filename, *a, **kw):
        if "step-000004" in str(filename):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, filename, *a, **kw)

    monkeypatch.setattr(st, "save_file", save_file)
    run = finetune({**tiny_config, "name": "full", "max_steps": 6, "save_every": 2}, wait=True)
    assert run.status == "failed"
    assert "step-000004 could not be written" in run.error and "No space left on device (ENOSPC)" in run.error
    assert "step-000002 is intact" in run.error
    ck = run.dir / "checkpoints"
    assert sorted(p.name for p in ck.iterdir() if p.is_dir()) == ["step-000002"]
    assert verify_checkpoint(ck / "step-000002") is None
    assert read_json(run.dir / "status.json")["state"] == "failed"


def _two_checkpoints(tiny_config, name="ck"):
    cfg = {**tiny_config, "name": name, "max_steps": 4, "save_every": 2, "save_total_limit": None}
    run = finetune(cfg, wait=True)
    assert [c.name for c in run.checkpoints] == ["step-000002", "step-000004"]
    return cfg, run


def test_a_damaged_checkpoint_is_detected_and_resume_falls_back(tiny_config):
    """A flipped byte in step-4's weights: resume_from last warns and resumes from step-2.
    Control: before the damage both checkpoints verify."""
    cfg, run = _two_checkpoints(tiny_config)
    last = run.checkpoints[-1]
    assert verify_checkpoint(last) is None and verify_checkpoint(run.checkpoints[0]) is None
    f = last / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))
    assert "checksum" in verify_checkpoint(last)
    with pytest.warns(FinetuneWarning, match=r"step-000004 is damaged .*checksum.*resuming from step-000002"):
        resumed = finetune({**cfg, "resume_from": "last", "max_steps": 6})
    resumed.wait()
    assert resumed.status == "finished" and resumed._started.start_step == 2


def test_truncated_missing_and_unreadable_checkpoints_are_named(tiny_config):
    """Each kind of damage has its reason; every checkpoint damaged is one CheckpointError naming them."""
    cfg, run = _two_checkpoints(tiny_config, "dmg")
    a, b = run.checkpoints
    with open(b / "optimizer.safetensors", "r+b") as fh:
        fh.truncate(100)
    assert "truncated" in verify_checkpoint(b)
    (a / "rng.safetensors").unlink()
    assert "rng.safetensors is missing" in verify_checkpoint(a)
    with pytest.raises(CheckpointError, match="no checkpoint of run 'dmg' is whole"):
        finetune({**cfg, "resume_from": "last"})
    (b / "state.json").write_text("{not json")
    assert "cannot be read" in verify_checkpoint(b)


def test_a_drive_like_file_system_without_rename_or_flock(tiny_config, monkeypatch, tmp_path):
    """os.replace raises EXDEV (and EPERM) under the output directory and flock raises ENOSYS: training, checkpoints,
    commands and resume still work, and every checkpoint verifies. Control: the patches do fire."""
    runs = str(tmp_path / "runs")
    real_replace = os.replace
    fired = {"replace": 0, "flock": 0}

    def replace(src, dst, *a, **kw):
        if str(src).startswith(runs) or str(dst).startswith(runs):
            fired["replace"] += 1
            raise OSError(errno.EXDEV if fired["replace"] % 2 else errno.EPERM, "Invalid cross-device link")
        return real_replace(src, dst, *a, **kw)

    def flock(*a, **kw):
        fired["flock"] += 1
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(fcntl, "flock", flock)
    cfg = {**tiny_config, "name": "drive", "max_steps": 4, "save_every": 2, "save_total_limit": None}
    run = finetune(cfg, wait=True)
    assert run.status == "finished" and fired["replace"] > 0
    assert [verify_checkpoint(c) for c in run.checkpoints] == [None, None]
    assert not [p for p in (run.dir / "checkpoints").iterdir() if p.name.startswith(".")]
    assert append_command(run.dir, "pause") == 1 and append_command(run.dir, "resume") == 2 and fired["flock"] == 2
    resumed = finetune({**cfg, "resume_from": "last", "max_steps": 6}, wait=True)
    assert resumed.status == "finished" and resumed.step == 6


def _claim(args):
    out_dir, name, start = args
    import time

    while time.time() < start:
        pass
    return str(RunDir.create(out_dir, name).path)


def test_two_processes_racing_for_a_new_name_get_two_directories(tmp_path):
    """Two processes create the same 30 new names at the same instant: every name gives NAME and NAME-2.
    Control: the paths returned are compared, not just counted."""
    import multiprocessing as mp
    import time

    names = [f"race{i}" for i in range(30)]
    start = time.time() + 1.0
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        a = pool.map_async(_claim_all, [(str(tmp_path), names, start)] * 2)
        got = a.get(timeout=120)
    for i, name in enumerate(names):
        assert {got[0][i], got[1][i]} == {str(tmp_path / name), str(tmp_path / f"{name}-2")}, (got[0][i], got[1][i])


def _claim_all(args):
    out_dir, names, start = args
    return [_claim((out_dir, n, start)) for n in names]


def test_model_and_optimizer_are_collectable_after_a_run_fails_or_ends(tiny_config, monkeypatch):
    """Nothing but the Run keeps the model; nothing keeps the optimizer (a failed run's traceback included).
    On a GPU, memory allocated goes back to what it was. Control: while the Run lives, the model is alive."""
    import torch

    from nb_finetune.core.train import loop

    opts = []
    real = loop.build_optimizer

    def build(*a, **kw):
        o = real(*a, **kw)
        opts.append(weakref.ref(o))
        return o

    monkeypatch.setattr(loop, "build_optimizer", build)
    before = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
    _nan_at(monkeypatch, {2})
    failed = finetune({**tiny_config, "name": "gc-fail", "max_steps": 4, "log_every": 1}, wait=True)
    ok = finetune({**tiny_config, "name": "gc-ok", "max_steps": 2}, wait=True)
    assert failed.status == "failed" and ok.status == "finished"
    models = [weakref.ref(failed.model), weakref.ref(ok.model)]
    gc.collect()
    assert all(r() is None for r in opts), "an optimizer outlived its run"
    assert all(r() is not None for r in models)
    from nb_finetune import api

    with api._RUNS_LOCK:
        api._RUNS.clear()
    del failed, ok
    gc.collect()
    assert all(r() is None for r in models), "a model outlived its Run"
    if torch.cuda.is_available():
        assert torch.cuda.memory_allocated() <= before


def test_metrics_jsonl_with_a_corrupted_line_still_reads(tiny_config):
    """A torn or garbled line in metrics.jsonl (a crash mid-write, a hand edit) is skipped, the rest reads."""
    run = finetune({**tiny_config, "name": "torn", "max_steps": 3}, wait=True)
    path = run.dir / "metrics.jsonl"
    good = run.run_dir.read_metrics()
    text = path.read_text()
    path.write_text(text[:40] + "\x00garbage{" + "\n" + text + '{"event": "log", "step": ')
    assert len(run.run_dir.read_metrics()) == len(good)


def test_time_based_checkpoints_bound_what_a_disconnect_loses(tiny_config, monkeypatch):
    """`save_every: 10min` checkpoints whenever ten minutes of (faked) wall clock have passed since the last one.
    Control: with `save_every: 600min` the same clock gives only the final checkpoint."""
    import time as real_time
    import types

    from nb_finetune.core.train import loop

    clock = {"t": 0.0}

    def monotonic():
        clock["t"] += 4 * 60.0  # every call of the loop's clock: four minutes later
        return clock["t"]

    fake = types.SimpleNamespace(
        monotonic=monotonic, perf_counter=real_time.perf_counter, process_time=real_time.process_time
    )
    monkeypatch.setattr(loop, "time", fake)
    cfg = {**tiny_config, "max_steps": 6, "save_total_limit": None}
    cfg["data"] = {**cfg["data"], "eval_split": 0.0}
    timed = finetune({**cfg, "name": "timed", "save_every": "10min"}, wait=True)
    saved = [e for e in timed.run_dir.read_events() if e.kind == "CheckpointSaved"]
    assert timed.status == "finished"
    assert [e.reason for e in saved].count("interval") >= 2, [(e.step, e.reason) for e in saved]
    rare = finetune({**cfg, "name": "rare", "save_every": "600min"}, wait=True)
    assert [e.reason for e in rare.run_dir.read_events() if e.kind == "CheckpointSaved"] == ["final"]


def test_partial_checkpoints_of_dead_writers_are_removed(tiny_config):
    """A `.step-N.tmp-PID` left by a process killed mid-write goes when the run (resumed) writes its next checkpoint;
    the partial of a live process (here: our parent) stays. Neither is ever listed as a checkpoint."""
    cfg = {**tiny_config, "name": "stale", "max_steps": 2, "save_every": 1}
    run = finetune(cfg, wait=True)
    ck = run.dir / "checkpoints"
    dead, live = ck / ".step-000003.tmp-999999999", ck / f".step-000003.tmp-{os.getppid()}"
    for d in (dead, live):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"half")
    assert [c.name for c in run.run_dir.checkpoints()] == ["step-000001", "step-000002"]
    resumed = finetune({**cfg, "resume_from": "last", "max_steps": 3}, wait=True)
    assert resumed.status == "finished" and not dead.exists() and live.is_dir()


def test_skipped_steps_show_in_the_panel_and_the_cli_progress(tiny_config, monkeypatch):
    """`on_nonfinite: skip` with NaN at steps 2 and 3: the panel's status line (rebuilt from metrics.jsonl) and the
    CLI's progress line both say 2 steps were skipped. Control: step 1's line says nothing of it."""
    import io
    import types

    pytest.importorskip("ipywidgets")
    from nb_finetune.cli import TextProgress
    from nb_finetune.ui.panel import Panel
    from nb_finetune.ui.state import PanelState

    _nan_at(monkeypatch, {2, 3})
    out = io.StringIO()
    cfg = {**tiny_config, "name": "skips", "max_steps": 4, "on_nonfinite": "skip", "log_every": 1}
    run = finetune(cfg, wait=True, callbacks=[TextProgress(out)])
    assert run.status == "finished"
    st = PanelState.from_events(run.run_dir.read_events(), "skips", read_json(run.dir / "status.json"))
    line = Panel._status_html(types.SimpleNamespace(state=st), st.snapshot())
    assert "2 NaN/Inf steps skipped" in line
    steps = [ln for ln in out.getvalue().splitlines() if ln.startswith("step ")]
    assert "skipped" not in steps[0] and steps[-1].endswith("2 NaN/Inf steps skipped"), steps
