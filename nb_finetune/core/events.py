"""Typed events the training loop emits, the `Callback` protocol, and `Controls` (commands flowing back in).

Per-step events carry counters and wall-clock timings only: values living on the device (losses, grad
norms) are read in one batch at log points and travel in `Logged`, so no subscriber can force a host sync
per step.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

__all__ = [
    "Event",
    "RunStarted",
    "StepEnded",
    "Logged",
    "EvalEnded",
    "CheckpointSaved",
    "ControlApplied",
    "RunFinished",
    "Callback",
    "Command",
    "Controls",
]


@dataclass
class Event:
    time: float = field(default_factory=time.time, kw_only=True)

    @property
    def kind(self) -> str:
        return type(self).__name__

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.kind, **asdict(self)}


@dataclass
class RunStarted(Event):
    name: str
    run_dir: str
    total_steps: int
    steps_per_epoch: int
    num_train: int
    num_eval: int
    device: str
    precision: str
    params_total: int
    params_trainable: int
    layers: list[dict[str, Any]]
    start_step: int = 0
    cache: str = "off"  # frozen-prefix activation cache: "on (...)" or "off (why)"
    task: str = "text-classification"  # the task's name (core/tasks/); the panel shows `task_title`
    task_title: str = "text classification"
    task_detail: list[str] = field(default_factory=list)  # Task.describe(): why auto picked it, the head, labels
    throughput_unit: str = "tokens"  # what tokens_per_s counts for this task


@dataclass
class StepEnded(Event):
    """After every optimizer step. Host-side numbers only."""

    step: int
    epoch: float
    total_steps: int
    samples: int  # examples seen so far in this run
    tokens: int  # real (non-pad) tokens seen so far, counted on the host from lengths
    elapsed: float  # seconds of training so far
    lr: float = 0.0  # base learning rate this step used (lr x schedule factor; groups add multipliers), a host float


@dataclass
class Logged(Event):
    """At log points: device values read together, averaged over the steps since the last log point."""

    step: int
    epoch: float
    loss: float
    lr: float  # base lr x schedule factor (the lr of a group with multiplier 1, e.g. the head)
    grad_norm: float | None
    samples_per_s: float
    tokens_per_s: float
    nonfinite_steps: int = 0
    losses: list[float] = field(default_factory=list)  # one per optimizer step since the last log point
    memory_mb: float | None = None
    tflops: float | None = None  # executed training FLOP/s since the last log point (see core/flops.py), in 1e12
    mfu: float | None = None  # tflops over the device's peak, when the peak is known
    padding: float | None = None  # share of the processed tokens that were padding, since the last log point
    # lr of each trainable layer group at the last step ({"embeddings": ..., "blocks.0": ..., "head": ...}):
    # base lr x schedule factor x the group's multiplier (layer_lr_decay, group_lr); frozen groups are absent
    group_lrs: dict[str, float] = field(default_factory=dict)


@dataclass
class EvalEnded(Event):
    step: int
    epoch: float
    metrics: dict[str, float]
    is_best: bool = False
    # what the task asks the panel to draw besides the common plots (StreamingMetric.extras(), JSON-serialisable):
    # name -> {"kind": "matrix", "title", "rows", "cols", "values"} or {"kind": "bars", "title", "labels", "values"}
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class CheckpointSaved(Event):
    step: int
    path: str
    reason: str  # "interval" | "epoch" | "stop" | "final" | "manual" | "best"


@dataclass
class ControlApplied(Event):
    """A command was applied (ok) or refused. Gradual unfreezing emits `command="freeze"`, `source="schedule"`,
    `seq=0`, `args={"spec": [the groups frozen now]}`."""

    step: int
    command: str
    args: dict[str, Any]
    seq: int
    source: str = "api"
    ok: bool = True
    message: str = ""


@dataclass
class RunFinished(Event):
    state: str  # "finished" | "stopped" | "failed"
    reason: str  # "completed" | "user" | "early_stopping" | "error" | "abort"
    step: int
    error: str | None = None
    best_metric: float | None = None


class Callback(Protocol):
    """Anything with `on_event(event)`. Called on the training thread: return quickly, never block."""

    def on_event(self, event: Event) -> None: ...


# --------------------------------------------------------------------------------------------- controls
@dataclass
class Command:
    kind: str  # "stop" | "abort" | "pause" | "resume" | "set" | "freeze" | "checkpoint"
    args: dict[str, Any] = field(default_factory=dict)
    seq: int = 0
    source: str = "api"


_KINDS = {"stop", "abort", "pause", "resume", "set", "freeze", "checkpoint"}


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

    def send(self, kind: str, source: str = "api", seq: int | None = None, **args) -> Command:
        if kind not in _KINDS:
            raise ValueError(f"unknown command {kind!r}; one of {sorted(_KINDS)}")
        cmd = Command(kind, args, seq if seq is not None else next(self._seq), source)
        # stop/abort/pause/resume take effect at once, so the loop sees them mid-accumulation
        if kind == "stop":
            self.stop_save = bool(args.get("save", True))
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
    def stop(self, save: bool = True, source: str = "api") -> Command:
        return self.send("stop", source, save=save)

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
