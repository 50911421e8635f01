"""SIGTERM to a real kernel (what Colab or a container sends before it goes) while a run trains on its worker thread:
the handler the extension installed on the kernel's main thread stops the run with a checkpoint, then the kernel
ends as it would have; after a restart, `resume_from: last` continues exactly."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from metrics_log import losses_by_step

from nb_finetune.core.runs import read_json
from nb_finetune.core.train.checkpoints import verify_checkpoint

TESTS = Path(__file__).resolve().parents[1]

# a fixed model directory, so the restarted kernel trains the very same model; constant lr and no warm-up, so a run
# of a million steps and one of a few dozen take identical steps (only `max_steps` differs between them)
SETUP = """
import os, sys; sys.path.insert(0, {tests!r})
from conftest import build_tiny_model, make_texts
import pandas as pd
model_dir = {model!r}
if not os.path.isdir(model_dir):
    build_tiny_model(model_dir)
texts, labels = make_texts(192, seed=1)
df = pd.DataFrame({{"text": texts, "label": labels}})
%load_ext nb_finetune
%config FinetuneMagic.output_dir = {out!r}
"""
CELL = (
    "%%finetune {name} {flags}\nmodel: {{{{model_dir}}}}\ndata: {{{{df}}}}\nmax_steps: {steps}\nscheduler: constant\n"
    "warmup: 0\nlog_every: 1\nseed: 3\nprecision: fp32\nsave_every: null\n{extra}"
)


def _cell(name: str, steps: int, flags: str = "", extra: str = "") -> str:
    return CELL.format(name=name, steps=steps, flags=flags, extra=extra)


def _ok(r) -> None:
    assert r.reply["status"] == "ok", r.text


@pytest.mark.kernel
def test_sigterm_stops_the_run_with_a_checkpoint_and_resume_continues_exactly(kernel, tmp_path):
    """Control cases: the run was still training when the signal came (a million steps, no interval checkpoints:
    only the handler's stop writes one); the kernel still dies of the signal, as without the extension; the losses
    after the resume are compared with an uninterrupted run's, step by step."""
    runs = tmp_path / "runs"
    setup = SETUP.format(tests=str(TESTS), model=str(tmp_path / "model"), out=str(runs))
    _ok(kernel.execute(setup))
    _ok(kernel.execute(_cell("term", 1_000_000)))
    r = kernel.execute("import time\nwhile term.step < 5: time.sleep(0.02)\nprint(term.status)")
    assert "training" in r.text, r.text

    proc = kernel.km.provisioner.process
    os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 90
    while proc.poll() is None:
        assert time.monotonic() < deadline, "the kernel did not exit within 90 s of SIGTERM"
        time.sleep(0.1)
    assert proc.returncode == -signal.SIGTERM, f"the kernel should end as SIGTERM ends it, not {proc.returncode}"

    st = read_json(runs / "term" / "status.json")
    assert (st["state"], st["reason"]) == ("stopped", "SIGTERM"), st
    stopped = st["step"]
    assert 5 <= stopped < 1_000_000
    cks = sorted(p.name for p in (runs / "term" / "checkpoints").iterdir() if p.is_dir())
    assert cks == [f"step-{stopped:06d}"], cks
    assert verify_checkpoint(runs / "term" / "checkpoints" / cks[0]) is None

    # the runtime comes back: a fresh kernel on the same connection, as a frontend's restart gives
    kernel.km.restart_kernel(now=True)
    kernel.kc.wait_for_ready(timeout=120)
    _ok(kernel.execute(setup))
    total = stopped + 6
    _ok(kernel.execute(_cell("base", total, "--wait")))
    _ok(kernel.execute(_cell("term", total, "--wait", "resume_from: last\n")))
    r = kernel.execute("print(base.status, term.status, term.step)")
    assert r.text.split() == ["finished", "finished", str(total)], r.text
    a, b = losses_by_step(runs / "base"), losses_by_step(runs / "term")
    assert sorted(a) == sorted(b) == list(range(1, total + 1))
    assert [b[s] for s in range(stopped + 1, total + 1)] == [a[s] for s in range(stopped + 1, total + 1)]
    assert [b[s] for s in range(1, stopped + 1)] == [a[s] for s in range(1, stopped + 1)]


def test_the_handler_chains_the_previous_one_and_unloads(tiny_config):
    """In this process (pytest's main thread): a live run is stopped with reason SIGTERM, then the handler that was
    there before runs; installing twice keeps one link in the chain; uninstalling puts the previous one back.
    Control: the previous handler is called exactly once per signal, so it is not skipped nor called twice."""
    from nb_finetune import finetune
    from nb_finetune.magics import finetune_magic as fm

    calls = []
    before = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    try:
        assert fm.install_sigterm_handler() and fm.install_sigterm_handler()  # %reload_ext: still one link
        run = finetune({**tiny_config, "name": "sig", "max_steps": 1_000_000, "save_every": None})
        while run.step < 2:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 30
        while not calls and time.monotonic() < deadline:
            time.sleep(0.01)  # the handler runs on this (the main) thread between bytecodes
        assert calls == [signal.SIGTERM]
        assert (run.status, run.reason) == ("stopped", "SIGTERM") and len(run.checkpoints) == 1
        assert read_json(run.dir / "status.json")["reason"] == "SIGTERM"
        fm.uninstall_sigterm_handler()
        assert signal.getsignal(signal.SIGTERM) is not fm._on_sigterm
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)
        assert calls == [signal.SIGTERM, signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, before)
