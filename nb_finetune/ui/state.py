"""What the panel shows, as plain data: a recorder fed by run events (or by a run's metrics.jsonl).

`PanelState.on_event` runs on the training thread and only appends to lists under a lock. A writer (the
panel's pump) calls `take()` to get the points that arrived since its last call and renders them. Nothing here
imports a widget or plotting library, so it is tested without a frontend.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..core.events import (
    CheckpointSaved,
    ControlApplied,
    EvalEnded,
    Event,
    Logged,
    RunFinished,
    RunStarted,
    StepEnded,
)

__all__ = ["PanelState", "Points", "fmt_duration", "smooth"]

SMOOTHING = 0.9  # exponential moving average of the loss, as fastai's smoothed loss


def fmt_duration(s: float | None) -> str:
    if s is None or not math.isfinite(s) or s < 0:
        return "--"
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def smooth(values: list[float], beta: float = SMOOTHING, start: tuple[float, int] = (0.0, 0)) -> list[float]:
    """Debiased exponential moving average; `start` = (running average, count) to continue a series."""
    avg, n = start
    out = []
    for v in values:
        if not math.isfinite(v):
            out.append(out[-1] if out else math.nan)
            continue
        n += 1
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta**n))
    return out


@dataclass
class Points:
    """New plot points since the writer's last `take()`; each list holds dict rows."""

    loss: list[dict[str, float]] = field(default_factory=list)  # step, loss, smooth
    evals: list[dict[str, float]] = field(default_factory=list)  # step, <metric>: value
    lr: list[dict[str, Any]] = field(default_factory=list)  # step, lr, group_lrs {group: lr}
    speed: list[dict[str, float]] = field(default_factory=list)  # step, samples_per_s, tokens_per_s, memory_mb
    markers: list[dict[str, Any]] = field(default_factory=list)  # step, label, ok, source
    layers_changed: bool = False

    def __bool__(self) -> bool:
        return bool(self.loss or self.evals or self.lr or self.speed or self.markers or self.layers_changed)


class PanelState:
    """Header facts, the status line's numbers and the plot series of one run."""

    def __init__(self, name: str = "", *, model: str = "", task: str = "text classification"):
        self.name = name
        self.model = model
        self.task = task
        self.state = "queued"
        self.reason: str | None = None
        self.error: str | None = None
        self.device = ""
        self.precision = ""
        self.params_total = 0
        self.params_trainable = 0
        self.num_train = 0
        self.num_eval = 0
        self.cache = ""
        self.step = 0
        self.start_step = 0
        self.total_steps: int | None = None
        self.steps_per_epoch = 0
        self.epoch = 0.0
        self.elapsed = 0.0
        self.loss: float | None = None
        self.lr: float | None = None
        self.samples_per_s: float | None = None
        self.tokens_per_s: float | None = None
        self.memory_mb: float | None = None
        self.metrics: dict[str, float] = {}
        self.best: dict[str, Any] | None = None
        self.layers: list[dict[str, Any]] = []  # group, kind, params, trainable
        self.note = ""
        self.last_checkpoint: str | None = None
        self.version = 0  # bumped on every change; the writer re-renders text when it moved
        self._lock = threading.Lock()
        self._pending = Points()
        self._ema = (0.0, 0)
        self._last_logged = -1
        self._last_eval = -1
        self.started_at: float | None = None

    # ------------------------------------------------------------------ events (training thread)
    def on_event(self, e: Event) -> None:
        with self._lock:
            self._apply(e)
            self.version += 1

    def _apply(self, e: Event) -> None:
        p = self._pending
        if isinstance(e, StepEnded):
            self.step, self.total_steps, self.epoch, self.elapsed = e.step, e.total_steps, e.epoch, e.elapsed
            if e.lr:
                self.lr = e.lr
        elif isinstance(e, Logged):
            if e.step <= self._last_logged:  # a replayed record seen twice (`%finetune show` while training)
                return
            self._last_logged = e.step
            losses = list(e.losses) or [e.loss]
            first = e.step - len(losses) + 1
            sm = smooth(losses, start=self._ema)
            for v in losses:
                if math.isfinite(v):
                    n = self._ema[1] + 1
                    self._ema = (SMOOTHING * self._ema[0] + (1 - SMOOTHING) * v, n)
            for i, (v, s) in enumerate(zip(losses, sm)):
                p.loss.append({"step": first + i, "loss": v, "smooth": s})
            self.loss, self.lr = e.loss, e.lr
            self.samples_per_s, self.tokens_per_s = e.samples_per_s, e.tokens_per_s
            self.memory_mb = e.memory_mb
            p.lr.append({"step": e.step, "lr": e.lr, "group_lrs": dict(getattr(e, "group_lrs", None) or {})})
            p.speed.append(
                {
                    "step": e.step,
                    "samples_per_s": e.samples_per_s,
                    "tokens_per_s": e.tokens_per_s,
                    "memory_mb": e.memory_mb if e.memory_mb is not None else math.nan,
                }
            )
        elif isinstance(e, EvalEnded):
            if e.step <= self._last_eval:
                return
            self._last_eval = e.step
            self.metrics = dict(e.metrics)
            p.evals.append({"step": e.step, **e.metrics})
            if e.is_best:
                self.best = {"step": e.step, **e.metrics}
        elif isinstance(e, RunStarted):
            self.state = "training"
            self.reason = None
            self.device, self.precision = e.device, e.precision
            self.params_total, self.params_trainable = e.params_total, e.params_trainable
            self.num_train, self.num_eval = e.num_train, e.num_eval
            self.total_steps, self.steps_per_epoch = e.total_steps, e.steps_per_epoch
            self.step = self.start_step = e.start_step
            self.cache = e.cache
            self.layers = [dict(x) for x in e.layers]
            self.started_at = e.time
            p.layers_changed = True
        elif isinstance(e, ControlApplied):
            label = _command_label(e)
            self.note = f"{label}: {'applied' if e.ok else 'refused'} at step {e.step}" + (
                f" ({e.message})" if e.message else ""
            )
            if e.ok and e.command in ("set", "freeze") and e.source != "preview":
                p.markers.append({"step": e.step, "label": label, "source": e.source, "message": e.message})
            if e.ok and e.command == "freeze":
                self._set_frozen(e.args.get("spec"))
                p.layers_changed = True
            if e.command == "pause" and e.ok:
                self.state = "paused"
            elif e.command == "resume" and e.ok:
                self.state = "training"
            elif e.command in ("stop", "abort"):
                self.state = "stopping"
        elif isinstance(e, CheckpointSaved):
            self.last_checkpoint = e.path
            self.note = f"checkpoint ({e.reason}) at step {e.step}"
        elif isinstance(e, RunFinished):
            self.state, self.reason, self.error = e.state, e.reason, e.error
            self.step = max(self.step, e.step)

    def set_layers(self, table: list[dict[str, Any]]) -> None:
        """The layer map before the run starts (from the model's config, weights on the meta device)."""
        with self._lock:
            self.layers = [dict(x) for x in table]
            self.params_total = sum(x["params"] for x in self.layers)
            self.params_trainable = sum(x["params"] for x in self.layers if x["trainable"])
            self._pending.layers_changed = True
            self.version += 1

    def _set_frozen(self, spec) -> None:
        """Mark the layer groups a freeze spec freezes; uses the core's resolver on a map rebuilt from `layers`."""
        from ..core.freezing import LayerGroup, LayerMap, resolve_freeze

        lm = LayerMap([LayerGroup(x["group"], x["kind"], num_params=x["params"]) for x in self.layers], None)
        try:
            frozen = resolve_freeze(spec, lm)
        except Exception:  # noqa: BLE001 - the engine accepted it; a display must not fail on it
            return
        for x in self.layers:
            x["trainable"] = x["group"] not in frozen
        self.params_trainable = sum(x["params"] for x in self.layers if x["trainable"])

    # ------------------------------------------------------------------ the writer
    def take(self) -> Points:
        """Points that arrived since the last call (the writer owns what it takes)."""
        with self._lock:
            out, self._pending = self._pending, Points()
        return out

    def snapshot(self) -> dict[str, Any]:
        """The scalar fields, copied under the lock (for the header and status line)."""
        with self._lock:
            return {k: v for k, v in self.__dict__.items() if not k.startswith("_")} | {
                "layers": [dict(x) for x in self.layers]
            }

    # ------------------------------------------------------------------ derived
    @property
    def done(self) -> bool:
        return self.state in ("finished", "stopped", "failed")

    def eta_seconds(self) -> float | None:
        if self.total_steps is None or self.step <= self.start_step or self.elapsed <= 0:
            return None
        rate = (self.step - self.start_step) / self.elapsed
        return (self.total_steps - self.step) / rate if rate > 0 else None

    # ------------------------------------------------------------------ rebuilding from disk
    @classmethod
    def from_records(cls, records: list[dict[str, Any]], name: str = "", status: dict | None = None) -> PanelState:
        """A state replayed from a run's metrics.jsonl records (for `%finetune show` after the output was cleared)."""
        st = cls(name)
        for rec in records:
            ev = _event_from_record(rec)
            if ev is not None:
                st.on_event(ev)
        status = status or {}
        if status.get("state") and (status["state"] not in ("training", "starting") or st.state == "queued"):
            st.state = status["state"]
            st.reason = status.get("reason", st.reason)
            st.error = status.get("error", st.error)
        if status.get("step") is not None:
            st.step = max(st.step, int(status["step"]))
        return st


def _command_label(e: ControlApplied) -> str:
    if e.command == "set":
        return ", ".join(f"{k}={_short(v)}" for k, v in (e.args or {}).items()) or "set"
    if e.command == "freeze":
        spec = e.args.get("spec")
        if e.source == "schedule":
            return "unfreeze"
        return f"freeze {spec if not isinstance(spec, list) else ','.join(map(str, spec)) or 'none'}"
    return e.command


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


_EVENT_TYPES = {
    "RunStarted": RunStarted,
    "ControlApplied": ControlApplied,
    "CheckpointSaved": CheckpointSaved,
    "RunFinished": RunFinished,
}


def _event_from_record(rec: dict[str, Any]) -> Event | None:
    kind = rec.get("event") or rec.get("kind")
    t = rec.get("time", time.time())
    try:
        if kind == "log":
            return Logged(
                step=rec["step"],
                epoch=rec.get("epoch") or 0.0,
                loss=_num(rec.get("loss")),
                lr=_num(rec.get("lr"), 0.0),
                grad_norm=rec.get("grad_norm"),
                samples_per_s=_num(rec.get("samples_per_s"), 0.0),
                tokens_per_s=_num(rec.get("tokens_per_s"), 0.0),
                losses=[_num(x) for x in rec.get("losses") or []],
                memory_mb=rec.get("memory_mb"),
                time=t,
                **({"group_lrs": rec["group_lrs"]} if "group_lrs" in rec and _has_field(Logged, "group_lrs") else {}),
            )
        if kind == "eval":
            return EvalEnded(
                step=rec["step"],
                epoch=rec.get("epoch") or 0.0,
                metrics={k: v for k, v in rec.items() if k.startswith("eval_")},
                is_best=bool(rec.get("is_best")),
                time=t,
            )
        cls = _EVENT_TYPES.get(kind)
        if cls is None:
            return None
        names = set(cls.__dataclass_fields__)
        args = {k: v for k, v in rec.items() if k in names}
        if cls is RunStarted:
            args.setdefault("layers", [])
        return cls(**args)
    except (KeyError, TypeError, ValueError):
        return None


def _num(v, default: float = math.nan) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


def _has_field(cls, name: str) -> bool:
    return name in getattr(cls, "__dataclass_fields__", {})
