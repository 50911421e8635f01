"""Typed events the training loop emits and the `Callback` protocol (`Controls`, commands flowing back in, is
re-exported from core/controls.py; the metrics.jsonl codec of these events is core/records.py).

Per-step events carry counters and wall-clock timings only: values living on the device (losses, grad
norms) are read in one batch at log points and travel in `Logged`, so no subscriber can force a host sync
per step.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from .controls import Command, Controls  # re-exported: they live in core/controls.py with the state machine

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
    # examples left out so far (run total, train and eval) because their file failed to decode when read: images or
    # audio decoded lazily (files found unreadable in pre-flight are in RunStarted.task_detail instead)
    unreadable: int = 0


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
    `seq=0`, `args={"spec": [the groups frozen now]}`.

    `previous`: the values before the command, so a change reads "from -> to": a `set` has the live value of each
    key of `args` (`{"lr": 1e-4}` for `args={"lr": 5e-5}`), a `freeze` the groups frozen before (`{"spec": [...]}`,
    in layer-map order); empty for other commands and in records written before it existed."""

    step: int
    command: str
    args: dict[str, Any]
    seq: int
    source: str = "api"
    ok: bool = True
    message: str = ""
    previous: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunFinished(Event):
    state: str  # "finished" | "stopped" | "failed"
    reason: str  # "completed" | "user" | "SIGTERM" | "early_stopping" | "error" | "abort"
    step: int
    error: str | None = None
    best_metric: float | None = None


class Callback(Protocol):
    """Anything with `on_event(event)`. Called on the training thread: return quickly, never block."""

    def on_event(self, event: Event) -> None: ...
