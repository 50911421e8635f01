"""Commands flowing back into a run: `Controls` (the thread-safe queue), the command names, and the run's state
machine (`next_state`), the one place that says what a command or an event does to a run's state.

Every view of a run's state uses `next_state`: the `Run` object, `status.json` (core/runs.py), the panel and the
one-line progress display, so "pause -> paused" cannot mean different things in different places.
"""

from __future__ import annotations

import itertools
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "COMMANDS",
    "SIMPLE_COMMANDS",
    "STATES",
    "ACTIVE_STATES",
    "FINAL_STATES",
    "Command",
    "Controls",
    "next_state",
]

# every command a run understands; `set` and `freeze` carry values, the others at most `save` (stop)
COMMANDS = ("stop", "abort", "pause", "resume", "set", "freeze", "checkpoint")
SIMPLE_COMMANDS = tuple(c for c in COMMANDS if c not in ("set", "freeze"))

STATES = ("queued", "starting", "training", "paused", "stopping", "finished", "stopped", "failed")
ACTIVE_STATES = ("queued", "starting", "training", "paused", "stopping")
FINAL_STATES = ("finished", "stopped", "failed")


def next_state(state: str | None, event: Any) -> str:
    """The run's state after `event` (any object with `kind`, as the events of core/events.py have).

    RunStarted -> training; RunFinished -> its own state; ControlApplied: stop / abort -> stopping (whatever the
    loop says: a stop is never undone), an applied pause -> paused, an applied resume of a paused run -> training.
    A finished run never changes again; any other event leaves the state as it is.
    """
    state = state or "queued"
    kind = getattr(event, "kind", None)
    if kind == "RunStarted":
        return "training"
    if kind == "RunFinished":
        return event.state
    if kind != "ControlApplied" or state in FINAL_STATES:
        return state
    command = event.command
    if command in ("stop", "abort"):
        return "stopping"
    if not event.ok or state == "stopping":
        return state
    if command == "pause":
        return "paused"
    if command == "resume" and state == "paused":
        return "training"
    return state


@dataclass
class Command:
    kind: str  # one of COMMANDS
    args: dict[str, Any] = field(default_factory=dict)
    seq: int = 0
    source: str = "api"


class Controls:
    """Thread-safe command queue between whoever steers a run and the training loop.

    Stop, abort and pause are seen at every micro-batch (`stop_requested`, `wait_if_paused`); everything
    else is drained between optimizer steps (`drain`).
    """

    def __init__(self) -> None:
        self._q: queue.Queue[Command] = queue.Queue()
        self._seq = itertools.count(1)
        self._resumed = threading.Event()
        self._resumed.set()
        self.stop_event = threading.Event()
        self.abort_event = threading.Event()
        self.stop_save = True
        self.stop_reason = "user"  # why the run stops, as status.json records it ("user", "SIGTERM", ...)

    def send(self, kind: str, source: str = "api", seq: int | None = None, **args) -> Command:
        if kind not in COMMANDS:
            raise ValueError(f"unknown command {kind!r}; one of {', '.join(COMMANDS)}")
        cmd = Command(kind, args, seq if seq is not None else next(self._seq), source)
        # stop/abort/pause/resume take effect at once, so the loop sees them mid-accumulation
        if kind == "stop":
            self.stop_save = bool(args.get("save", True))
            self.stop_reason = str(args.get("reason") or "user")
            self.stop_event.set()
            self._resumed.set()
        elif kind == "abort":
            self.abort_event.set()
            self.stop_event.set()
            self._resumed.set()
        elif kind == "pause":
            self._resumed.clear()
        elif kind == "resume":
            self._resumed.set()
        self._q.put(cmd)
        return cmd

    # convenience
    def stop(self, save: bool = True, source: str = "api", reason: str = "user") -> Command:
        """Stop at the next micro-batch (with `save`, after a checkpoint); `reason` is what status.json records."""
        args = {"save": save} if reason == "user" else {"save": save, "reason": reason}
        return self.send("stop", source, **args)

    def pause(self, source: str = "api") -> Command:
        return self.send("pause", source)

    def resume(self, source: str = "api") -> Command:
        return self.send("resume", source)

    def set(self, source: str = "api", **values) -> Command:
        return self.send("set", source, **values)

    def freeze(self, spec, source: str = "api") -> Command:
        return self.send("freeze", source, spec=spec)

    def checkpoint(self, source: str = "api") -> Command:
        return self.send("checkpoint", source)

    # loop side
    @property
    def stop_requested(self) -> bool:
        return self.stop_event.is_set()

    @property
    def paused(self) -> bool:
        return not self._resumed.is_set()

    def wait_if_paused(self, on_pause=None, poll=None) -> None:
        """Block the loop while paused. `poll()` is called periodically (e.g. to read control.jsonl)."""
        if self._resumed.is_set():
            return
        if on_pause:
            on_pause()
        while not self._resumed.wait(0.1):
            if poll:
                poll()

    def drain(self) -> list[Command]:
        out = []
        while True:
            try:
                out.append(self._q.get_nowait())
            except queue.Empty:
                return out
