"""A one-line progress display updated in place through a display handle, throttled by wall clock.

The training thread only records numbers (`on_event` is a few assignments); a pump (a daemon thread in
background mode, the waiting main thread under --wait) renders at most every `refresh_seconds`, and once
more, forced, when the run ends.
"""

from __future__ import annotations

import html
import threading
import time

from ..core.controls import next_state
from ..core.events import ControlApplied, EvalEnded, Logged, RunFinished, RunStarted, StepEnded
from .state import change_line, main_metrics, unreadable_text

_COLOURS = {"finished": "#2e7d32", "stopped": "#ef6c00", "failed": "#c62828", "paused": "#6a1b9a"}


def _fmt_time(s: float | None) -> str:
    if s is None or s != s or s == float("inf"):
        return "--"
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class ProgressView:
    def __init__(self, name: str, refresh_seconds: float = 0.5):
        self.name = name
        self.refresh_seconds = refresh_seconds
        self.run = None
        self.handle = None
        self.state = "queued"
        self.reason = None
        self.error = None
        self.step = 0
        self.total = None
        self.epoch = 0.0
        self.loss = None
        self.lr = None
        self.sps = None
        self.elapsed = 0.0
        self.start_step = 0
        self.metrics: dict[str, float] = {}
        self.extras: dict = {}
        self.note = ""
        self.unreadable = 0
        self.cache = ""
        self.renders = 0
        self._dirty = True
        self._last_render = 0.0
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- training thread: record only
    def on_event(self, e) -> None:
        self.state = next_state(self.state, e)
        if isinstance(e, StepEnded):
            self.step, self.total, self.epoch, self.elapsed = e.step, e.total_steps, e.epoch, e.elapsed
        elif isinstance(e, Logged):
            self.loss, self.lr, self.sps = e.loss, e.lr, e.samples_per_s
            self.unreadable = e.unreadable
        elif isinstance(e, EvalEnded):
            self.metrics = dict(e.metrics)
            self.extras = dict(e.extras) or self.extras
        elif isinstance(e, RunStarted):
            self.total, self.step, self.start_step = e.total_steps, e.start_step, e.start_step
            self.cache = e.cache if e.cache.startswith("on") else ""
        elif isinstance(e, ControlApplied):
            self.note = change_line(e)
        elif isinstance(e, RunFinished):
            self.reason, self.error, self.step = e.reason, e.error, e.step
        self._dirty = True

    # ---------------------------------------------------------------- rendering (main or pump thread)
    def text(self) -> str:
        parts = [f"{self.name}: {self.state}" + (f" ({self.reason})" if self.reason else "")]
        if self.total:
            parts.append(f"step {self.step}/{self.total} ({100 * self.step / self.total:.0f}%)")
        parts.append(f"epoch {self.epoch:.2f}")
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.lr is not None:
            parts.append(f"lr {self.lr:.2e}")
        if self.sps:
            parts.append(f"{self.sps:.1f} samples/s")
        if self.state in ("training", "paused") and self.total and self.step > self.start_step:
            rate = (self.step - self.start_step) / max(self.elapsed, 1e-9)
            parts.append(f"ETA {_fmt_time((self.total - self.step) / rate)}")
        if self.unreadable:
            parts.append(unreadable_text(self.unreadable))
        line = " | ".join(parts)
        if self.cache:
            line += f" | frozen-prefix cache {self.cache.split(' (')[0]}"
        metrics = main_metrics(self.metrics, self.extras)
        if metrics:
            line += "\n" + "eval: " + ", ".join(f"{k.removeprefix('eval_')} {v:.4f}" for k, v in metrics.items())
        if self.error:
            line += f"\nerror: {self.error}"
        elif self.note:
            line += f"\n{self.note}"
        return line

    def html(self) -> str:
        colour = _COLOURS.get(self.state, "#1565c0")
        pct = 100 * self.step / self.total if self.total else 0
        lines = html.escape(self.text()).split("\n")
        return (
            f'<div class="nb-finetune-progress" style="font-family:var(--jp-code-font-family,monospace);font-size:12px">'
            f'<div style="display:flex;align-items:center;gap:8px">'
            f'<div style="width:180px;height:8px;background:#e0e0e0;border-radius:4px;overflow:hidden">'
            f'<div style="width:{pct:.1f}%;height:100%;background:{colour}"></div></div>'
            f'<span style="color:{colour};font-weight:600">{lines[0]}</span></div>'
            + "".join(f"<div>{ln}</div>" for ln in lines[1:])
            + "</div>"
        )

    def bundle(self) -> dict[str, str]:
        return {"text/plain": self.text(), "text/html": self.html()}

    def show(self) -> None:
        from IPython.display import display

        self.handle = display(self.bundle(), raw=True, display_id=True)
        self._last_render = time.monotonic()

    def pump(self, force: bool = False) -> bool:
        """Re-render if something changed and the throttle allows; returns whether it rendered."""
        now = time.monotonic()
        if self.handle is None or not (self._dirty or force):
            return False
        if not force and now - self._last_render < self.refresh_seconds:
            return False
        with self._lock:
            self._dirty = False
            self._last_render = now
            self.handle.update(self.bundle(), raw=True)
            self.renders += 1
        return True

    def follow(self, run) -> threading.Thread:
        """Background mode: a daemon thread pumps until the run ends, then renders the final state."""

        def loop():
            while not run.done:
                time.sleep(self.refresh_seconds / 2)
                self.pump()
            self.pump(force=True)

        t = threading.Thread(target=loop, name=f"nb_finetune-progress-{self.name}", daemon=True)
        t.start()
        return t
