"""Where the loop's output goes: events to subscribers (a failing one is detached, training goes on), and the
libraries' logging to the run's run.log."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

__all__ = ["Emitter", "library_logging_to"]

log = logging.getLogger("nb_finetune")


class Emitter:
    """`emit(event)`: every subscriber's `on_event`, in order."""

    def __init__(self, callbacks):
        self.callbacks = list(callbacks)
        self.broken: set[int] = set()

    def __call__(self, event) -> None:
        for cb in self.callbacks:
            if id(cb) in self.broken:
                continue
            try:
                cb.on_event(event)
            except Exception:  # a subscriber must never take training down
                self.broken.add(id(cb))
                log.exception("callback %r failed on %s and was detached", cb, event.kind)


@contextlib.contextmanager
def library_logging_to(path: Path):
    """Library logging of this run goes to its run.log; progress bars are off (the worker never prints)."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    saved = []
    for name in ("transformers", "datasets", "accelerate", "huggingface_hub", "nb_finetune", "torch"):
        lg = logging.getLogger(name)
        saved.append((lg, lg.handlers[:], lg.propagate, lg.level))
        lg.handlers = [handler]
        lg.propagate = False
        if lg.level == logging.NOTSET or lg.level > logging.INFO:
            lg.setLevel(logging.INFO)
    prev_bars = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    try:
        from transformers.utils import logging as tlog

        bars = tlog.is_progress_bar_enabled()
        tlog.disable_progress_bar()
    except Exception:  # noqa: BLE001 - optional nicety
        bars = None
    try:
        yield
    finally:
        for lg, handlers, propagate, level in saved:
            lg.handlers, lg.propagate = handlers, propagate
            lg.setLevel(level)
        handler.close()
        if bars:
            from transformers.utils import logging as tlog

            tlog.enable_progress_bar()
        if prev_bars is None:
            os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
        else:
            os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = prev_bars
