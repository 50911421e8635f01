"""What the panel shows, as plain data: a recorder fed by run events (or by a run's metrics.jsonl).

`PanelState.on_event` runs on the training thread and only appends to lists under a lock. A writer (the
panel's pump) calls `take()` to get the points that arrived since its last call and renders them. Nothing here
imports a widget or plotting library, so it is tested without a frontend.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any

from ..core import records
from ..core.controls import FINAL_STATES, next_state
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

__all__ = [
    "PanelState",
    "Points",
    "fmt_count",
    "fmt_duration",
    "fmt_value",
    "group_span",
    "smooth",
    "main_metrics",
    "change_label",
    "change_line",
    "lr_legend",
]

SMOOTHING = 0.9  # exponential moving average of the loss, as fastai's smoothed loss
MAX_CHANGES = 8  # live changes kept in the panel's change log


def main_metrics(metrics: dict[str, float], extras: dict[str, Any] | None) -> dict[str, float]:
    """The metrics the status line and the eval plot show: per-label ones (`eval_PER_f1`, `eval_f1_sports`) are left
    to the task's bars figure that draws them (an `extras` entry of kind "bars" whose labels they name)."""
    labels = {
        str(label)
        for x in (extras or {}).values()
        if isinstance(x, dict) and x.get("kind") == "bars"
        for label in (x.get("labels") or [])
    }
    if not labels:
        return dict(metrics)

    def per_label(name: str) -> bool:
        short = name.removeprefix("eval_")
        return any(short.startswith(f"{lb}_") or short.endswith(f"_{lb}") for lb in labels)

    return {k: v for k, v in metrics.items() if not per_label(k)}


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
    # the latest evaluation's task figures (EvalEnded.extras: name -> matrix / bars entry), when a new one came
    extras: dict[str, dict[str, Any]] | None = None
    throughput_unit: str | None = None  # when RunStarted said what the throughput counts

    def __bool__(self) -> bool:
        return bool(
            self.loss
            or self.evals
            or self.lr
            or self.speed
            or self.markers
            or self.layers_changed
            or self.extras is not None
            or self.throughput_unit
        )


class PanelState:
    """Header facts, the status line's numbers and the plot series of one run."""

    def __init__(self, name: str = "", *, model: str = "", task: str = ""):
        self.name = name
        self.model = model
        self.task = task  # the task's title (RunStarted.task_title); "" until known
        self.task_detail: list[str] = []  # Task.describe(): why auto picked it, the head, the labels
        self.throughput_unit = "tokens"  # what tokens_per_s counts (tokens, images, seconds of audio)
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
        self.nonfinite_steps = 0  # steps whose loss was NaN / Inf (skipped under on_nonfinite: skip)
        self.unreadable = 0  # examples whose file failed to decode when read, so far (Logged.unreadable)
        self.metrics: dict[str, float] = {}
        self.extras: dict[str, dict[str, Any]] = {}  # the latest evaluation's task figures
        self.best: dict[str, Any] | None = None
        # one row per evaluation, as the HF Trainer's notebook table: step, epoch, train_loss, metrics, best
        self.eval_rows: list[dict[str, Any]] = []
        self.changes: list[dict[str, Any]] = []  # live changes applied or refused: step, label, ok, source, message
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
        self.state = next_state(self.state, e)
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
            self.nonfinite_steps += getattr(e, "nonfinite_steps", 0) or 0
            self.unreadable = getattr(e, "unreadable", 0) or 0
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
            if e.extras:
                self.extras = {k: v for k, v in e.extras.items() if isinstance(v, dict)}
                p.extras = self.extras
            p.evals.append({"step": e.step, **main_metrics(e.metrics, self.extras)})
            if e.is_best:
                self.best = {"step": e.step, **e.metrics}
                for r in self.eval_rows:
                    r["best"] = False
            self.eval_rows.append(
                {
                    "step": e.step,
                    "epoch": e.epoch,
                    "train_loss": self.loss,
                    "metrics": main_metrics(e.metrics, self.extras),
                    "best": bool(e.is_best),
                }
            )
        elif isinstance(e, RunStarted):
            self.reason = None
            self.task = e.task_title or e.task
            self.task_detail = list(e.task_detail)
            if e.throughput_unit != self.throughput_unit:
                self.throughput_unit = p.throughput_unit = e.throughput_unit
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
            label = change_label(e, [x["group"] for x in self.layers if not x["trainable"]], self._frozen_by(e))
            detail = change_detail(e)
            self.note = f"{label}: {'applied' if e.ok else 'refused'} at step {e.step}" + (
                f" ({detail})" if detail else ""
            )
            if e.source != "preview":
                self.changes = [
                    *self.changes[-(MAX_CHANGES - 1) :],
                    {
                        "step": e.step,
                        "label": label,
                        "ok": e.ok,
                        "source": source_label(e.source),
                        "message": detail,
                    },
                ]
            if e.ok and e.command in ("set", "freeze") and e.source != "preview":
                p.markers.append({"step": e.step, "label": label, "source": source_label(e.source), "message": detail})
            if e.ok and e.command == "freeze":
                self._set_frozen(e.args.get("spec"))
                p.layers_changed = True
        elif isinstance(e, CheckpointSaved):
            self.last_checkpoint = e.path
            self.note = f"checkpoint ({e.reason}) at step {e.step}"
        elif isinstance(e, RunFinished):
            self.reason, self.error = e.reason, e.error
            self.step = max(self.step, e.step)

    def set_layers(self, table: list[dict[str, Any]]) -> None:
        """The layer map before the run starts (from the model's config, weights on the meta device)."""
        with self._lock:
            self.layers = [dict(x) for x in table]
            self.params_total = sum(x["params"] for x in self.layers)
            self.params_trainable = sum(x["params"] for x in self.layers if x["trainable"])
            self._pending.layers_changed = True
            self.version += 1

    def _frozen_by(self, e: ControlApplied) -> list[str] | None:
        """The groups an applied `freeze` leaves frozen, in layer-map order (None: not a freeze, or unknown)."""
        if not (e.ok and e.command == "freeze") or not self.layers:
            return None
        frozen = self._resolve(e.args.get("spec"))
        return None if frozen is None else [x["group"] for x in self.layers if x["group"] in frozen]

    def _resolve(self, spec) -> set[str] | None:
        """A freeze spec resolved by the core's resolver on a map rebuilt from `layers`."""
        from ..core.freezing import LayerGroup, LayerMap, resolve_freeze

        lm = LayerMap([LayerGroup(x["group"], x["kind"], num_params=x["params"]) for x in self.layers], None)
        try:
            return resolve_freeze(spec, lm)
        except Exception:  # noqa: BLE001 - the engine accepted it; a display must not fail on it
            return None

    def _set_frozen(self, spec) -> None:
        """Mark the layer groups a freeze spec freezes."""
        frozen = self._resolve(spec)
        if frozen is None:
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
                "layers": [dict(x) for x in self.layers],
                "eval_rows": [dict(r, metrics=dict(r["metrics"])) for r in self.eval_rows],
                "changes": [dict(c) for c in self.changes],
            }

    # ------------------------------------------------------------------ derived
    @property
    def done(self) -> bool:
        return self.state in FINAL_STATES

    def eta_seconds(self) -> float | None:
        if self.total_steps is None or self.step <= self.start_step or self.elapsed <= 0:
            return None
        rate = (self.step - self.start_step) / self.elapsed
        return (self.total_steps - self.step) / rate if rate > 0 else None

    # ------------------------------------------------------------------ rebuilding from disk
    @classmethod
    def from_records(cls, recs: list[dict[str, Any]], name: str = "", status: dict | None = None) -> PanelState:
        """A state replayed from a run's metrics.jsonl records (for `%finetune show` after the output was cleared)."""
        return cls.from_events([ev for ev in map(records.decode, recs) if ev is not None], name, status)

    @classmethod
    def from_events(cls, events: list[Event], name: str = "", status: dict | None = None) -> PanelState:
        """A state replayed from a run's recorded events (`RunDir.read_events()`), then its status.json."""
        st = cls(name)
        for ev in events:
            st.on_event(ev)
        status = status or {}
        if status.get("state") and (status["state"] not in ("training", "starting") or st.state == "queued"):
            st.state = status["state"]
            st.reason = status.get("reason", st.reason)
            st.error = status.get("error", st.error)
        if status.get("step") is not None:
            st.step = max(st.step, int(status["step"]))
        return st


_SOURCES = {"server": "sidebar", "schedule": "unfreeze schedule", "file": "control file", "api": "API"}


def source_label(source: str) -> str:
    """Who asked for a change, as the panel says it: panel, magic, API, sidebar, CLI (`file:cli`: through the
    run's control file), unfreeze schedule."""
    who = source.removeprefix("file:") if source.startswith("file:") else source
    return "CLI" if who == "cli" else _SOURCES.get(who, who)


def change_label(e: ControlApplied, frozen_before: list[str] | None = None, frozen_after: list[str] | None = None):
    """What a live change did, from -> to: "lr 1e-4 → 5e-5", "frozen embeddings → embeddings, blocks.0–3".
    The value before comes with the acknowledgement (`ControlApplied.previous`); a record written before it existed
    says only the new value ("lr → 5e-5"). `frozen_before` / `frozen_after`: the panel's own view of a freeze."""
    if e.command == "set":
        prev = e.previous or {}
        parts = [f"{k} {_pair(prev[k], v)}" if k in prev else f"{k} → {_short(v)}" for k, v in (e.args or {}).items()]
        return "; ".join(parts) or "set"
    if e.command == "freeze":
        before = e.previous.get("spec") if isinstance(e.previous, dict) and "spec" in e.previous else frozen_before
        after = frozen_after
        if after is None:
            spec = e.args.get("spec")
            after = spec if isinstance(spec, list) else None
        what = "unfreeze" if e.source == "schedule" else "frozen"
        if after is None:
            return f"freeze {e.args.get('spec')}"
        return f"{what} {group_span(before) if before is not None else '?'} → {group_span(after)}"
    return e.command


def change_detail(e: ControlApplied) -> str:
    """What a change's acknowledgement adds to its label: a refusal's reason, a freeze's trainable count; nothing
    for an applied `set` whose label already reads from → to (its message only echoes the new values)."""
    return "" if e.ok and e.command == "set" and e.previous else e.message


def change_line(e: ControlApplied) -> str:
    """A live change as one line of text (the CLI, the text renderer): from -> to and who asked,
    "lr 1e-4 → 5e-5 (panel) applied at step 40"."""
    line = f"{change_label(e)} ({source_label(e.source)}) {'applied' if e.ok else 'refused'} at step {e.step}"
    detail = change_detail(e)
    return line + (f": {detail}" if detail else "")


def lr_legend(groups: list[str], frozen: list[str]) -> tuple[str, dict[str, str], str]:
    """The learning-rate plot's legend as the groups stand now (the live plot's and the SVG snapshot's): the base
    line's name, each split-off group's name ("blocks.0 (frozen)" while frozen) and the entry listing the frozen
    groups, which get no learning rate ("" when none is frozen). `frozen` in layer-map order."""
    frozen_set = set(frozen)
    base = "other groups" if groups else "trainable groups" if frozen else "all groups"
    names = {g: f"{g} (frozen)" if g in frozen_set else g for g in groups}
    return base, names, f"frozen, no lr: {group_span(frozen)}" if frozen else ""


def group_span(groups, limit: int = 48) -> str:
    """Layer groups as people read them: runs of numbered blocks joined ("embeddings, blocks.0–3, head"), "none"
    for no group, a count past `limit` characters."""
    groups = [str(g) for g in groups or []]
    if not groups:
        return "none"
    out: list[str] = []
    i = 0
    while i < len(groups):
        stem, _, num = groups[i].rpartition(".")
        j = i
        if stem and num.isdigit():
            while j + 1 < len(groups) and groups[j + 1] == f"{stem}.{int(num) + (j + 1 - i)}":
                j += 1
        out.append(groups[i] if j == i else f"{groups[i]}–{groups[j].rpartition('.')[2]}")
        i = j + 1
    text = ", ".join(out)
    return text if len(text) <= limit else f"{len(groups)} groups"


def unreadable_text(n: int) -> str:
    """What the progress line says of the files that failed to decode while the run read them."""
    return f"{n:,} unreadable file{'' if n == 1 else 's'} skipped"


def fmt_count(n) -> str:
    """A parameter count in engineering units: 2.0M, 350.0k, 1.2B, 800."""
    n = int(n or 0)
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.1f}{suffix}"
    return str(n)


def _short(v) -> str:
    return "off" if v is None else fmt_value(v)


def _pair(before, after) -> str:
    """Both sides in the same notation: "1e-3 → 5e-4", never "0.001 → 5e-4"."""
    a, b = _short(before), _short(after)
    nums = [v for v in (before, after) if isinstance(v, float) and math.isfinite(v) and v != 0]
    if len(nums) == 2 and ("e" in a) != ("e" in b):
        a, b = (_sci(v) for v in nums)
    return f"{a} → {b}"


def _sci(v: float) -> str:
    mant, exp = f"{v:.2e}".split("e")
    return f"{mant.rstrip('0').rstrip('.')}e{int(exp)}"


def fmt_value(v) -> str:
    """A number as people write it: `7.08e-5`, `0.01`, `3`, `1,200` (never `7.079457843841373e-05`)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10_000 else str(v)
    if not math.isfinite(v):
        return str(v)
    if v == 0:
        return "0"
    if abs(v) < 1e-3 or abs(v) >= 1e5:
        mant, exp = f"{v:.2e}".split("e")
        mant = mant.rstrip("0").rstrip(".")
        return f"{mant}e{int(exp)}"
    return f"{v:.3g}"
