"""The kernel's exit waits for the final render of a run that just ended (a notebook runner shuts the kernel down
right after its last cell), never for a run still training, and never longer than its budget."""

from __future__ import annotations

import gc
import threading
import time
import weakref

from nb_finetune.ui import panel


class FakeRun:
    def __init__(self, done: bool):
        self.done = done


class FakePanel:
    """What the exit handler reads of a `Panel`: its run and its writer thread (which, like the real one, holds it)."""

    def __init__(self, run: FakeRun, seconds: float, wrote: list | None = None):
        self.run = run

        def loop(panel=self):
            time.sleep(seconds)
            (wrote if wrote is not None else []).append(time.monotonic())

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()


def test_exit_waits_for_the_final_render_of_an_ended_run(monkeypatch):
    monkeypatch.setattr(panel, "_FOLLOWING", weakref.WeakSet())
    wrote: list = []
    p = FakePanel(FakeRun(done=True), 0.4, wrote)
    panel._follow_at_exit(p)
    panel._join_followers(budget=5.0)
    assert wrote, "the final render was sent before the exit went on"


def test_exit_does_not_wait_for_a_run_still_training_and_keeps_to_its_budget(monkeypatch):
    monkeypatch.setattr(panel, "_FOLLOWING", weakref.WeakSet())
    training, ended = FakePanel(FakeRun(done=False), 3.0), FakePanel(FakeRun(done=True), 3.0)
    panel._follow_at_exit(training)  # control: not waited for at all
    panel._follow_at_exit(ended)  # waited for, but only as long as the budget
    t0 = time.monotonic()
    panel._join_followers(budget=0.3)
    assert time.monotonic() - t0 < 1.5


def test_a_registered_run_stays_collectable(monkeypatch):
    monkeypatch.setattr(panel, "_FOLLOWING", weakref.WeakSet())
    p = FakePanel(FakeRun(done=True), 0.0)
    ref = weakref.ref(p.run)
    panel._follow_at_exit(p)
    p._thread.join()
    del p
    gc.collect()
    assert ref() is None
