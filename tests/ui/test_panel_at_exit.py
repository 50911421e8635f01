"""The kernel's exit waits for the final render of a run that just ended (a notebook runner shuts the kernel down
right after its last cell), never for a run still training, and never longer than its budget."""

from __future__ import annotations

import gc
import threading
import time

from nb_finetune.ui import panel


class FakeRun:
    def __init__(self, done: bool):
        self.done = done


def _writer(seconds: float, wrote: list) -> threading.Thread:
    def loop():
        time.sleep(seconds)
        wrote.append(time.monotonic())

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t


def test_exit_waits_for_the_final_render_of_an_ended_run(monkeypatch):
    monkeypatch.setattr(panel, "_FOLLOWERS", [])
    wrote: list = []
    run = FakeRun(done=True)
    panel._follow_at_exit(_writer(0.4, wrote), run)
    panel._join_followers(budget=5.0)
    assert wrote, "the final render was sent before the exit went on"


def test_exit_does_not_wait_for_a_run_still_training_and_keeps_to_its_budget(monkeypatch):
    monkeypatch.setattr(panel, "_FOLLOWERS", [])
    training, ended = FakeRun(done=False), FakeRun(done=True)
    panel._follow_at_exit(_writer(3.0, []), training)  # control: not waited for at all
    panel._follow_at_exit(_writer(3.0, []), ended)  # waited for, but only as long as the budget
    t0 = time.monotonic()
    panel._join_followers(budget=0.3)
    assert time.monotonic() - t0 < 1.5


def test_a_registered_run_stays_collectable(monkeypatch):
    import weakref

    monkeypatch.setattr(panel, "_FOLLOWERS", [])
    run = FakeRun(done=True)
    ref = weakref.ref(run)
    panel._follow_at_exit(_writer(0.0, []), run)
    del run
    gc.collect()
    assert ref() is None
