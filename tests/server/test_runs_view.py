"""The server's run reader without a server: incremental metrics.jsonl reads, bounded memory, entry checks."""

from __future__ import annotations

import hashlib
import json
import math
import os

import pytest

from nb_finetune.core.runs import RunDir
from nb_finetune.server import runs_view
from nb_finetune.server.runs_view import RunsView, _MetricsTail, clean_json, validate_entry


def log(path, step, loss, t=None):
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"event": "log", "time": t if t is not None else step, "step": step, "loss": loss}) + "\n")


def test_reads_only_what_was_appended_and_waits_for_whole_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    tail = _MetricsTail()
    assert tail.update(str(path)).history() == []  # no file yet
    for i in range(3):
        log(path, i, float(i))
    m = tail.update(str(path))
    assert m.history() == [0.0, 1.0, 2.0] and tail.offset == path.stat().st_size
    with open(path, "a") as f:
        f.write('{"event": "log", "step": 3, "lo')  # a writer mid-line
    assert tail.update(str(path)).history() == [0.0, 1.0, 2.0]
    with open(path, "a") as f:
        f.write('ss": 3.0, "time": 3}\n')
    assert tail.update(str(path)).history() == [0.0, 1.0, 2.0, 3.0]


def test_unchanged_size_and_mtime_is_a_cache_hit(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log(path, 1, 1.0)
    tail = _MetricsTail()
    assert tail.update(str(path)).history() == [1.0]
    st = path.stat()
    path.write_text(path.read_text().replace("1.0", "7.0"))  # same size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert tail.update(str(path)).history() == [1.0]  # not re-read
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert tail.update(str(path)).history() == [1.0]  # re-checked, but only bytes past the offset are read


def test_a_rewritten_file_starts_over(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for i in range(5):
        log(path, i, 5.0 - i)
    tail = _MetricsTail()
    assert len(tail.update(str(path)).history()) == 5
    path.unlink()  # the run directory was overwritten by a new run
    log(path, 0, 9.0)
    assert tail.update(str(path)).history() == [9.0]


def test_first_read_of_a_long_file_parses_its_tail_and_samples_the_rest(tmp_path, monkeypatch):
    monkeypatch.setattr(runs_view, "_MAX_TAIL", 2000)
    monkeypatch.setattr(runs_view, "_PREFIX_SAMPLES", 16)
    monkeypatch.setattr(runs_view, "_SCAN_CHUNK", 1000)  # the eval scan crosses chunk borders
    path = tmp_path / "metrics.jsonl"
    for i in range(400):
        log(path, i, float(i))
        if i in (10, 150):  # evals long before the tail
            with open(path, "a") as f:
                f.write(json.dumps({"event": "eval", "step": i, "eval_loss": 1.0 / i, "is_best": True}) + "\n")
    m = _MetricsTail().update(str(path))
    assert m.best("eval_loss") == {"name": "eval_loss", "value": 1.0 / 150}
    i = len(m.steps) - 1
    while m.steps[i - 1] == m.steps[i] - 1:
        i -= 1
    tail = m.steps[i:]
    assert tail[-1] == 399 and 20 <= len(tail) <= 40  # the tail (2000 bytes): every line, none cut in half
    early = m.steps[:i]
    assert 8 <= len(early) <= 16 and early[0] < 40  # the rest: evenly sampled
    gaps = [b - a for a, b in zip(early, early[1:])]
    assert max(gaps) <= 2 * min(gaps)
    assert m.losses == [float(s) for s in m.steps]  # every loss belongs to its own step
    hist = m.history(points=10)
    assert hist[0] < 40 and hist[-1] == 399.0 and hist == sorted(hist)  # spaced by step over the whole run


def test_kept_losses_are_bounded_and_cover_the_whole_run(tmp_path, monkeypatch):
    monkeypatch.setattr(runs_view, "_KEEP_LOSSES", 64)
    path = tmp_path / "metrics.jsonl"
    for i in range(1000):
        log(path, i, float(i))
    m = _MetricsTail().update(str(path))
    assert len(m.losses) <= 64
    hist = m.history(points=10)
    assert hist[0] == 0.0 and hist[-1] >= 900 and hist == sorted(hist)


def test_step_rate_and_best_metric_without_is_best_flags(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for i in range(10):
        log(path, i * 5, 1.0, t=100 + i)  # 5 steps/s
    with open(path, "a") as f:
        f.write(json.dumps({"event": "eval", "eval_loss": 0.5, "eval_f1": 0.6}) + "\n")
        f.write(json.dumps({"event": "eval", "eval_loss": 0.7, "eval_f1": 0.8}) + "\n")
        f.write(json.dumps({"event": "RunStarted", "time": 200}) + "\n")  # a resume: the rate starts over
    m = _MetricsTail().update(str(path))
    assert m.steps_per_s() is None
    assert m.best("eval_loss") == {"name": "eval_loss", "value": 0.5}
    assert m.best("eval_f1") == {"name": "eval_f1", "value": 0.8}
    assert m.best("eval_accuracy") is None
    log(path, 60, 1.0, t=201)
    log(path, 70, 1.0, t=203)
    assert _MetricsTail().update(str(path)).steps_per_s() == pytest.approx(5.0)


def test_clean_json_turns_non_finite_numbers_into_null():
    assert clean_json({"a": [1.0, math.nan, {"b": math.inf}], "c": "x"}) == {"a": [1.0, None, {"b": None}], "c": "x"}


def test_entry_checks(tmp_path):
    real = tmp_path / "runs" / "r"
    real.mkdir(parents=True)
    rid = hashlib.sha1(str(real).encode()).hexdigest()[:16]
    assert validate_entry(rid, {"run_dir": str(real)}).run_dir == str(real)
    assert validate_entry(rid.upper(), {"run_dir": str(real)}) is None
    assert validate_entry("0" * 16, {"run_dir": str(real)}) is None  # the id is not this run_dir's
    assert validate_entry(rid, {"run_dir": 5}) is None
    assert validate_entry(rid, ["run_dir", str(real)]) is None
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    lid = hashlib.sha1(str(link).encode()).hexdigest()[:16]
    assert validate_entry(lid, {"run_dir": str(link)}) is None
    (real / "status.json").symlink_to(tmp_path / "elsewhere.json")
    assert validate_entry(rid, {"run_dir": str(real)}) is None


def test_view_lists_runs_from_the_index(tmp_path):
    rd = RunDir.create(tmp_path / "runs", "one")
    rd.write_status(state="finished", reason="completed", step=3, total_steps=3, pid=os.getpid())
    rd.register()
    (tmp_path / "index" / "not-an-id.json").write_text("{}")
    (tmp_path / "index" / "0123456789abcdef.json").write_text("not json")
    runs = RunsView().list()
    assert [(r["name"], r["state"], r["step"]) for r in runs] == [("one", "finished", 3)]


def test_reads_what_the_registry_writes_with_the_task_fields(tmp_path, monkeypatch):
    """Records written through the codec (new fields, nested extras) are read back by the server's scan too."""
    from nb_finetune.core.events import EvalEnded, Logged, RunStarted
    from nb_finetune.core.runs import RegistryCallback

    # a tail of a few log lines (each carries every Logged field): the eval lines are found by the prefix scan
    monkeypatch.setattr(runs_view, "_MAX_TAIL", 1200)
    rd = RunDir.create(tmp_path / "runs", "codec")
    cb = RegistryCallback(rd)
    cb.on_event(RunStarted("codec", str(rd.path), 40, 10, 8, 2, "cpu", "fp32", 1, 1, [], task="regression"))
    extras = {"m": {"kind": "matrix", "title": "t", "rows": ["a"], "cols": ["a"], "values": [[3]]}}
    for step in range(1, 41):
        cb.on_event(Logged(step, step / 10, 1.0 / step, 1e-3, None, 12.0, 100.0, losses=[1.0 / step], time=step))
        if step in (5, 10):
            cb.on_event(EvalEnded(step, step / 10, {"eval_mse": 2.0 / step}, is_best=True, extras=extras))
    m = _MetricsTail().update(str(rd.path / "metrics.jsonl"))
    assert m.evals == 2 and m.best("eval_mse") == {"name": "eval_mse", "value": 0.2}
    assert m.last_log.step == 40 and m.last_log.samples_per_s == 12.0
    assert m.steps_per_s() == pytest.approx(1.0)


def test_base_lr_is_the_last_applied_set_even_long_before_the_tail(tmp_path, monkeypatch):
    from nb_finetune.core.events import ControlApplied, Logged
    from nb_finetune.core.runs import RegistryCallback

    monkeypatch.setattr(runs_view, "_MAX_TAIL", 600)
    monkeypatch.setattr(runs_view, "_SCAN_CHUNK", 300)
    rd = RunDir.create(tmp_path / "runs", "lr")
    rd.write_config("model: tiny\nlr: 1e-3\n")  # hand-written: `1e-3` is a string to PyYAML
    rd.write_status(state="training", pid=os.getpid(), name="lr")
    rd.register()
    cb = RegistryCallback(rd)
    view = RunsView()
    [run] = view.list()
    assert (run["lr"], run["base_lr"]) == (None, 1e-3)  # nothing logged yet: the config's lr
    for step in range(1, 61):
        if step == 5:
            cb.on_event(ControlApplied(step, "set", {"lr": 3e-4}, 1, "file"))
        if step == 7:
            cb.on_event(ControlApplied(step, "set", {"lr": 7e-5}, 2, "file"))
        if step == 9:  # refused: not the base
            cb.on_event(ControlApplied(step, "set", {"lr": 5.0}, 3, "file", ok=False, message="no"))
        cb.on_event(Logged(step, step / 10, 1.0, 7e-5 * 0.5, None, 12.0, 100.0, time=step))
    m = _MetricsTail().update(str(rd.path / "metrics.jsonl"))
    assert m.base_lr == 7e-5  # found by the prefix scan, in file order
    [run] = RunsView().list()
    assert run["base_lr"] == 7e-5 and run["lr"] == pytest.approx(3.5e-5)


class _Prov:
    def __init__(self, pid=None, process_pid=None):
        self.pid = pid
        if process_pid is not None:
            self.process = type("P", (), {"pid": process_pid})()


class _Kernels:
    """The part of jupyter_server's MappingKernelManager that `kernel_pids` reads."""

    def __init__(self, kernels):
        self.kernels = kernels

    def list_kernel_ids(self):
        return [*self.kernels, "gone"]

    def get_kernel(self, kid):
        return self.kernels[kid]  # "gone" -> KeyError, as for a kernel shut down in between


def test_kernel_pids_reads_the_provisioners():
    km = _Kernels(
        {
            "a": type("K", (), {"provisioner": _Prov(pid=4242)})(),
            "b": type("K", (), {"provisioner": _Prov(process_pid=4343)})(),
            "remote": type("K", (), {"provisioner": _Prov()})(),  # a gateway or remote kernel: no local pid
            "old": type("K", (), {"kernel": type("P", (), {"pid": 4444})()})(),  # jupyter_client < 7
        }
    )
    assert runs_view.kernel_pids(km) == {4242: "a", 4343: "b", 4444: "old"}
    assert runs_view.kernel_pids(None) == {} and runs_view.kernel_pids(object()) == {}


def test_a_run_belongs_to_the_kernel_that_is_its_process_or_an_ancestor():
    import subprocess
    import sys

    # this process plays the kernel; its grandchild the training process (a kernel started through a wrapper,
    # or Accelerate's child processes)
    spawn = "import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])"
    child = subprocess.Popen(
        [sys.executable, "-c", spawn + "; print(p.pid, flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True
    )
    grandchild = int(child.stdout.readline())
    try:
        kernels = {os.getpid(): "k1"}
        assert runs_view.kernel_owner(os.getpid(), kernels) == "k1"
        assert runs_view.kernel_owner(child.pid, kernels) == "k1"
        assert runs_view.kernel_owner(grandchild, kernels) == "k1"
        assert runs_view.kernel_owner(grandchild, {child.pid: "k2"}) == "k2"
        assert runs_view.kernel_owner(os.getpid(), {child.pid: "k2"}) is None  # a parent is no descendant
        assert runs_view.kernel_owner(os.getppid(), kernels) is None
        assert runs_view.kernel_owner(child.pid, {}) is None and runs_view.kernel_owner(None, kernels) is None
    finally:
        os.kill(grandchild, 9)
        child.kill()
        child.wait()
