"""Run registry: directories, control file across processes, the per-user index, atomic checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from nb_finetune.core import runs
from nb_finetune.errors import FinetuneError, RunStateError


def test_versioned_directories_and_names(tmp_path):
    a = runs.RunDir.create(tmp_path, "exp")
    a.write_status(state="finished")
    b = runs.RunDir.create(tmp_path, "exp")
    c = runs.RunDir.create(tmp_path, "exp")
    assert [a.name, b.name, c.name] == ["exp", "exp-2", "exp-3"]
    assert runs.RunDir.create(tmp_path, "exp", reuse=True).path == a.path
    for bad in ("../evil", "/abs", "a/b", "", ".hidden"):
        with pytest.raises(FinetuneError, match="not valid"):
            runs.RunDir.create(tmp_path, bad)


def test_live_run_directory_cannot_be_reused(tmp_path):
    a = runs.RunDir.create(tmp_path, "live")
    a.write_status(state="training", pid=os.getpid())
    with pytest.raises(RunStateError, match="still training"):
        runs.RunDir.create(tmp_path, "live", overwrite=True)


def test_control_file_numbers_commands_across_processes(tmp_path):
    rd = runs.RunDir.create(tmp_path, "ctl")
    code = (
        "import sys; from nb_finetune.core.runs import append_command\n"
        "for i in range(20): append_command(sys.argv[1], 'set', source='p', lr=i * 1e-5)"
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(rd.path)], env=env) for _ in range(3)]
    assert all(p.wait(timeout=60) == 0 for p in procs)
    reader = runs.ControlFileReader(rd.path)
    recs = reader.poll()
    assert sorted(r["seq"] for r in recs) == list(range(1, 61))
    assert reader.poll() == []  # nothing new
    runs.append_command(rd.path, "stop")
    assert [r["cmd"] for r in reader.poll()] == ["stop"]


def test_reader_ignores_a_half_written_line(tmp_path):
    rd = runs.RunDir.create(tmp_path, "half")
    with open(rd.path / "control.jsonl", "w") as f:
        f.write(json.dumps({"seq": 1, "cmd": "pause", "args": {}}) + "\n" + '{"seq": 2, "cmd": "res')
    reader = runs.ControlFileReader(rd.path)
    assert [r["seq"] for r in reader.poll()] == [1]
    with open(rd.path / "control.jsonl", "a") as f:
        f.write('ume", "args": {}}\n')
    assert [r["cmd"] for r in reader.poll()] == ["resume"]


def test_index_lists_runs_and_marks_dead_ones(tmp_path):
    live = runs.RunDir.create(tmp_path, "alive")
    live.write_status(state="training", pid=os.getpid())
    live.register()
    dead = runs.RunDir.create(tmp_path, "gone")
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    dead.write_status(state="training", pid=p.pid, heartbeat=0)
    dead.register()
    st = json.loads((dead.path / "status.json").read_text())
    st["heartbeat"] = 0
    (dead.path / "status.json").write_text(json.dumps(st))
    listed = {r["name"]: r for r in runs.list_runs()}
    assert listed["alive"]["state"] == "training" and listed["alive"]["alive"]
    assert listed["gone"]["state"] == "dead" and not listed["gone"]["alive"]
    assert "gone" not in {r["name"] for r in runs.list_runs(include_dead=False)}


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch, tiny_model_dir):
    """A crash while writing leaves the previous checkpoint intact and no half checkpoint visible."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from nb_finetune.core.config import FinetuneConfig
    from nb_finetune.core.train import checkpoints

    rd = runs.RunDir.create(tmp_path, "atomic")
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    opt = torch.optim.AdamW(
        [{"params": list(model.parameters()), "param_names": [n for n, _ in model.named_parameters()]}]
    )
    cfg = FinetuneConfig.from_dict({"model": "x"})
    state = {"step": 1, "epoch": 0, "batch": 1}
    checkpoints.save_checkpoint(rd, model, opt, state, checkpoints.rng_state(), cfg)
    real = checkpoints.json.dumps

    def boom(*a, **k):
        if k.get("indent") == 1:
            raise OSError("disk full")
        return real(*a, **k)

    monkeypatch.setattr(checkpoints.json, "dumps", boom)
    with pytest.raises(OSError):
        checkpoints.save_checkpoint(rd, model, opt, {**state, "step": 2}, checkpoints.rng_state(), cfg)
    assert [c.name for c in rd.checkpoints()] == ["step-000001"]
    assert sorted(p.name for p in rd.checkpoints_dir.iterdir()) == ["step-000001"], "no half checkpoint left"


def test_a_checkpoint_restores_every_random_stream_numpy_included(tmp_path, tiny_model_dir):
    """torch, Python's `random` and numpy's global generator (mid-way through a gaussian pair) come back exactly from
    a checkpoint on disk. Control: the same draws after scrambling the streams, without restoring, differ."""
    import random

    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification

    from nb_finetune.core.config import FinetuneConfig
    from nb_finetune.core.train import checkpoints

    def draws():
        return (
            np.random.random(3).tolist(),
            float(np.random.standard_normal()),
            random.random(),
            torch.rand(2).tolist(),
        )

    rd = runs.RunDir.create(tmp_path, "rng")
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    opt = torch.optim.AdamW(
        [{"params": list(model.parameters()), "param_names": [n for n, _ in model.named_parameters()]}]
    )
    np.random.seed(3)
    np.random.standard_normal()  # legacy numpy caches the second value of a pair: has_gauss = 1
    torch.manual_seed(3)
    random.seed(3)
    state = {"step": 1, "epoch": 0, "batch": 1}
    path = checkpoints.save_checkpoint(
        rd, model, opt, state, checkpoints.rng_state(), FinetuneConfig.from_dict({"model": "x"})
    )
    want = draws()
    np.random.seed(99), torch.manual_seed(99), random.seed(99)
    assert draws() != want  # control
    _, _, rng = checkpoints.load_checkpoint(path, model, "cpu")
    checkpoints.set_rng_state(rng)
    assert draws() == want
    assert json.loads((path / "state.json").read_text())["numpy_rng"]["has_gauss"] == 1


def test_append_command_refuses_a_symlinked_control_file(tmp_path):
    from nb_finetune.core.runs import append_command
    from nb_finetune.errors import FinetuneError

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    target = tmp_path / "elsewhere.txt"
    target.write_text("")
    (run_dir / "control.jsonl").symlink_to(target)
    with pytest.raises(FinetuneError, match="cannot be opened"):
        append_command(run_dir, "stop")
    assert target.read_text() == ""


def test_status_follows_the_one_state_machine(tmp_path):
    from nb_finetune.core.events import ControlApplied, RunFinished, RunStarted

    rd = runs.RunDir.create(tmp_path, "states")
    cb = runs.RegistryCallback(rd)
    seen = []
    for e in [
        RunStarted("states", str(rd.path), 10, 5, 8, 2, "cpu", "fp32", 10, 10, []),
        ControlApplied(step=2, command="pause", args={}, seq=1, source="file"),
        ControlApplied(step=2, command="resume", args={}, seq=2, source="file"),
        ControlApplied(step=3, command="set", args={"lr": -1}, seq=3, source="file", ok=False, message="bad"),
        ControlApplied(step=4, command="stop", args={}, seq=4, source="api"),
        ControlApplied(step=4, command="resume", args={}, seq=5, source="api"),
        RunFinished(state="stopped", reason="user", step=4),
    ]:
        cb.on_event(e)
        seen.append(rd.status()["state"])
    assert seen == ["training", "paused", "training", "training", "stopping", "stopping", "stopped"]
    assert rd.status()["last_command"] == 3  # commands from control.jsonl are acknowledged, refused ones too
    assert [type(e).__name__ for e in rd.read_events()][-1] == "RunFinished"
