"""The tracker seam: `Tracker` turns the run's events into a tracker's calls; `SafeTracker` keeps its failures
away from training."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any

import yaml

from ..events import ControlApplied, EvalEnded, Event, Logged, RunFinished, RunStarted

__all__ = ["Tracker", "SafeTracker", "flatten_config", "logged_metrics", "final_model_dir"]

# Logged fields that become metrics (the per-step losses are in `loss` at each log point)
_LOGGED = ("loss", "lr", "grad_norm", "samples_per_s", "tokens_per_s", "memory_mb", "tflops", "mfu", "padding")


def flatten_config(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """`{"data": {"train": "a.csv"}, "lr": 1e-3}` -> `{"data.train": "a.csv", "lr": "0.001"}` (tracker params)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "sweep":
            out.update(flatten_config(v, key + "."))
        else:
            out[key] = "null" if v is None else str(v)
    return out


def logged_metrics(e: Logged | EvalEnded) -> dict[str, float]:
    """The finite numbers of a Logged / EvalEnded event, by metric name."""
    if isinstance(e, Logged):
        values = {k: getattr(e, k) for k in _LOGGED}
        values["epoch"] = e.epoch
    else:
        values = dict(e.metrics)
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def final_model_dir(run_dir: Path) -> Path | None:
    """The finished run's model for trackers: the best checkpoint (else the last) without its optimizer and RNG
    state, with the run's config.yaml, as hard links in `<run_dir>/tracked-model/`."""
    import os
    import shutil

    from ..runs import RunDir

    rd = RunDir(run_dir)
    ck = rd.best_checkpoint() or (rd.checkpoints() or [None])[-1]
    if ck is None:
        return None
    out = rd.path / "tracked-model"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    for f in [*ck.iterdir(), rd.path / "config.yaml"]:
        if f.is_file() and f.name not in ("optimizer.safetensors", "rng.safetensors"):
            try:
                os.link(f, out / f.name)
            except OSError:
                shutil.copy2(f, out / f.name)
    return out


class Tracker:
    """One tracker. Subclasses implement `start`, `log_metrics`, `log_change`, `finish`; all run on the training
    thread, so they stay quick (the libraries buffer or write locally)."""

    name = "tracker"
    loggers: tuple[str, ...] = ()  # the library's loggers: routed to run.log while the tracker is called

    def __init__(self, cfg, run_dir):
        self.cfg = cfg
        self.run_dir = Path(run_dir.path if hasattr(run_dir, "path") else run_dir)

    def params(self) -> dict[str, str]:
        """The resolved config as flat params: config.yaml as the run wrote it (after `lr: find`, `batch_size: auto`)."""
        try:
            d = yaml.safe_load((self.run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
        except OSError:
            d = self.cfg.to_dict()
        return flatten_config(d)

    def on_event(self, e: Event) -> None:
        if isinstance(e, RunStarted):
            self.start(e)
        elif isinstance(e, (Logged, EvalEnded)):
            metrics = logged_metrics(e)
            if metrics:
                self.log_metrics(metrics, e.step, e.time)
        elif isinstance(e, ControlApplied):
            self.log_change(e)
        elif isinstance(e, RunFinished):
            self.finish(e, final_model_dir(self.run_dir) if e.state != "failed" else None)

    def start(self, e: RunStarted) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int, when: float) -> None: ...

    def log_change(self, e: ControlApplied) -> None: ...

    def finish(self, e: RunFinished, model_dir: Path | None) -> None: ...

    @staticmethod
    def change_text(e: ControlApplied) -> str:
        args = ", ".join(f"{k}={v}" for k, v in e.args.items())
        return f"{e.command}({args}) at step {e.step} from {e.source}: " + (
            "applied" if e.ok else f"refused ({e.message})"
        )


class SafeTracker:
    """Calls a tracker; its first failure goes to run.log (one line) and status.json's `tracker_errors`, and
    training never sees an exception. Later calls are still tried (a server may come back)."""

    def __init__(self, tracker: Tracker, run_dir, notify=None):
        self.tracker = tracker
        self.run_dir = run_dir
        self.notify = notify  # `notify(event)`: the run's other subscribers (the panel shows the failure)
        self.errors = 0
        self.first_error: str | None = None
        self._step = 0

    @property
    def name(self) -> str:
        return self.tracker.name

    def on_event(self, e: Event) -> None:
        self._step = getattr(e, "step", self._step)
        try:
            with _to_run_log(self.tracker.loggers):
                self.tracker.on_event(e)
        except Exception as exc:  # noqa: BLE001 - a tracker must never stop training
            self.errors += 1
            if self.first_error is None:
                self.first_error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                self._report()

    def _report(self) -> None:
        msg = f"tracker {self.name} failed (reported once; training goes on): {self.first_error}"
        path = Path(getattr(self.run_dir, "path", self.run_dir))
        try:
            with open(path / "run.log", "a", encoding="utf-8") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} nb_finetune.track ERROR {msg}\n")
            if hasattr(self.run_dir, "write_status"):
                errors = dict(self.run_dir.status().get("tracker_errors") or {})
                errors[self.name] = self.first_error
                self.run_dir.write_status(tracker_errors=errors)
        except OSError:
            pass
        if self.notify is not None:  # a refused "track" change: the panel lists it with its reason
            from ..events import ControlApplied

            self.notify(
                ControlApplied(
                    step=self._step,
                    command="track",
                    args={"tracker": self.name},
                    seq=0,
                    source="tracker",
                    ok=False,
                    message=msg,
                )
            )


@contextlib.contextmanager
def _to_run_log(names):
    """The libraries' own log lines go where nb_finetune's go (run.log, see train/logs.py), not into the cell."""
    target = logging.getLogger("nb_finetune").handlers
    saved = []
    for name in names:
        lg = logging.getLogger(name)
        saved.append((lg, lg.handlers[:], lg.propagate))
        lg.handlers, lg.propagate = list(target), False
    try:
        yield
    finally:
        for lg, handlers, propagate in saved:
            lg.handlers, lg.propagate = handlers, propagate
