"""No host-device sync between log points: a counter patches the Python-level reads of tensor values
(`Tensor.item`, `__bool__`, `tolist`, `.cpu()`, `__float__`, `__int__`) on the training thread and records at
which optimizer step each happened. Reads may happen at log points only; a control run that injects a
per-step `loss.item()` must be caught."""

from __future__ import annotations

import sys
import threading

import pytest
import torch

from nb_finetune import finetune
from nb_finetune.core.events import Logged, StepEnded

READS = ("item", "__bool__", "tolist", "cpu", "__float__", "__int__")


class SyncCounter:
    def __init__(self):
        self.step = 0
        self.reads: dict[int, list[str]] = {}
        self.log_steps: set[int] = set()
        self.worker: int | None = None

    def on_event(self, e):
        self.worker = threading.get_ident()
        if isinstance(e, StepEnded):
            self.step = e.step
        elif isinstance(e, Logged):
            self.log_steps.add(e.step)

    def per_step_reads(self) -> dict[int, list[str]]:
        return {s: r for s, r in self.reads.items() if s not in self.log_steps and s != 0}


@pytest.fixture()
def counter(monkeypatch):
    c = SyncCounter()
    for name in READS:
        original = getattr(torch.Tensor, name)

        def patched(self, *a, _orig=original, _name=name, **k):
            caller = sys._getframe(1).f_code
            # torch keeps Adam's step counter on the host on purpose (no device sync to read it)
            host_side = caller.co_name == "_get_value" and "optim" in caller.co_filename
            if threading.get_ident() == c.worker and not host_side:
                c.reads.setdefault(c.step, []).append(_name)
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, patched)
    return c


def _run(cfg, counter, extra=()):
    run = finetune(
        {**cfg, "max_steps": 30, "log_every": 10, "eval_every": None, "save_every": None}, callbacks=[counter, *extra]
    )
    run.wait(timeout=120)
    assert run.status == "finished", run.error
    return run


def test_no_value_read_between_log_points(tiny_config, counter):
    _run(tiny_config, counter)
    assert counter.log_steps >= {10, 20, 30}
    assert counter.reads, "the counter must see the reads made at log points"
    assert counter.per_step_reads() == {}


def test_control_per_step_item_is_caught(tiny_config, counter):
    class InjectItem:
        def on_event(self, e):
            if isinstance(e, StepEnded) and e.step == 1:
                run = holder["run"]
                run.model.register_forward_hook(read_loss)

    def read_loss(module, args, out):
        out.loss.item()  # the per-step read a careless loop (or callback) makes

    holder = {}
    cfg = {**tiny_config, "max_steps": 30, "log_every": 10, "eval_every": None, "save_every": None}
    run = finetune(cfg, callbacks=[counter, InjectItem()])
    holder["run"] = run
    run.wait(timeout=120)
    assert run.status == "finished", run.error
    bad = counter.per_step_reads()
    assert len(bad) >= 20 and all("item" in r for r in bad.values())


def test_a_log_point_reads_the_device_once(tiny_config, counter):
    """Every log point is one transfer: the losses, grad norms, the meter's non-finite count and the
    `on_nonfinite: stop` guard's first bad step come back in one `tolist`. Control: the guard reading its step on
    its own (`int(first)`, as it did before) makes two reads per log point and fails this."""
    _run({**tiny_config, "on_nonfinite": "stop"}, counter)
    at_logs = {s: counter.reads.get(s) for s in (10, 20)}  # the last log point is followed by the final checkpoint
    assert at_logs == {10: ["tolist"], 20: ["tolist"]}
