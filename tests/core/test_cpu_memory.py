"""Freed CPU memory kept in the process while a CPU run trains (core/train/cpu_memory.py)."""

from __future__ import annotations

import resource

import pytest

from nb_finetune import finetune
from nb_finetune.core.events import StepEnded
from nb_finetune.core.train import cpu_memory

pytestmark = pytest.mark.skipif(
    cpu_memory.why_not_kept("cpu") is not None, reason=f"not kept here: {cpu_memory.why_not_kept('cpu')}"
)


def _faults_per_step(steps: int = 4) -> float:
    """Median minor page faults of one forward + backward of a small CNN whose activations (34 MB each) are
    above glibc's largest dynamic mmap threshold (32 MB), like a training step's big buffers."""
    import statistics

    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(64, 4, 3))
    x = torch.randn(8, 3, 128, 128)
    faults = []
    for _ in range(steps + 1):  # the first step after a switch grows the heap: not counted
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        net(x).square().mean().backward()
        net.zero_grad(set_to_none=True)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return statistics.median(faults[1:])


ACTIVATION_PAGES = 8 * 64 * 128 * 128 * 4 / resource.getpagesize()


def test_kept_memory_is_reused_without_fresh_pages_and_defaults_come_back():
    # control: glibc's default maps each big buffer afresh and unmaps it at free: every page faults in every step
    assert _faults_per_step() > ACTIVATION_PAGES
    with cpu_memory.keep_cpu_memory() as kept:
        assert kept
        assert _faults_per_step() < 0.2 * ACTIVATION_PAGES
    # after the block: the defaults are back, the same step faults its buffers in again
    assert cpu_memory._depth == 0
    assert _faults_per_step() > ACTIVATION_PAGES


def test_holds_nest_and_only_the_last_release_restores():
    a = cpu_memory.hold(True)
    b = cpu_memory.hold(True)
    assert a and b and cpu_memory._depth == 2
    cpu_memory.release(b)
    assert cpu_memory._depth == 1 and _faults_per_step() < 0.2 * ACTIVATION_PAGES
    cpu_memory.release(a)
    assert cpu_memory._depth == 0 and _faults_per_step() > ACTIVATION_PAGES
    assert not cpu_memory.hold(False) and cpu_memory._depth == 0


def test_not_kept_on_a_gpu_or_under_the_users_own_malloc_tuning(monkeypatch):
    assert "cuda" in cpu_memory.why_not_kept("cuda")
    monkeypatch.setenv("MALLOC_ARENA_MAX_", "2")
    assert "MALLOC_ARENA_MAX_" in cpu_memory.why_not_kept("cpu")
    assert not cpu_memory.hold(True) and cpu_memory._depth == 0
    monkeypatch.delenv("MALLOC_ARENA_MAX_")
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    assert "preloaded" in cpu_memory.why_not_kept("cpu")


@pytest.mark.parametrize("keep", [True, False])
def test_a_cpu_run_keeps_memory_while_it_trains_only(tiny_config, keep):
    seen = []

    class Rec:
        def on_event(self, e):
            if isinstance(e, StepEnded):
                seen.append(cpu_memory._depth)

    run = finetune({**tiny_config, "max_steps": 3, "keep_cpu_memory": keep}, callbacks=[Rec()], wait=True)
    assert run.status == "finished", run.error
    assert seen == [1 if keep else 0] * 3
    assert cpu_memory._depth == 0  # released when the run ended
