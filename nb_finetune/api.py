"""Python API: `finetune(config, **overrides) -> Run`, and `Run`, the handle on one fine-tuning run.

Everything the magic and the panel do goes through here. Pre-flight (model config, tokenizer, data,
columns, labels, output directory) runs on the calling thread, so every user mistake is raised before
anything starts; training then runs on one worker thread per process, runs queued one after another.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .core.config import FinetuneConfig, live_fields, load_config
from .core.controls import ACTIVE_STATES, Controls, next_state
from .core.events import ControlApplied, EvalEnded, Event, Logged, RunFinished, RunStarted, StepEnded
from .core.freezing import resolve_freeze
from .core.preflight import check_resume, check_run, out_of_memory_message
from .core.runs import RegistryCallback, RunDir, validate_name
from .errors import ConfigError, FinetuneError, RunStateError, as_raised

__all__ = ["finetune", "lr_find", "Run", "DryRunReport", "active_runs", "get_run"]

_RUNS: dict[str, Run] = {}
_RUNS_LOCK = threading.Lock()


def finetune(
    config: FinetuneConfig | dict | str | Path | None = None,
    /,
    *,
    wait: bool = False,
    dry_run: bool = False,
    callbacks=(),
    overwrite: bool = False,
    namespace: dict | None = None,
    start: bool = True,
    **overrides,
) -> Run | DryRunReport:
    """Fine-tune a pretrained model. Returns a `Run` at once; training goes on in a worker thread.

    Args:
        config: a `FinetuneConfig`, a dict, YAML text or a YAML file path.
        wait: block until the run ends (Ctrl-C: first a graceful stop with a checkpoint, then an abort).
        dry_run: resolve everything and return a `DryRunReport` (layer map, steps, memory); train nothing.
        callbacks: objects with `on_event(event)`, called on the training thread.
        overwrite: replace an existing run directory of the same name instead of writing `name-2`.
        namespace: where `{{name}}` placeholders in YAML text are looked up.
        start: with False, the run waits until `run.start()`; `run.configure(...)` may change it until then.
        **overrides: config fields (canonical names or aliases), e.g. `lr=3e-5`, `max_steps=100`.

    Example:
        >>> run = finetune({"model": "path/to/model", "data": {"train": "reviews.csv"}}, epochs=1)  # doctest: +SKIP
        >>> run.wait().metrics  # doctest: +SKIP
        {'eval_loss': 0.41, 'eval_accuracy': 0.83, 'eval_f1': 0.83}
    """
    if isinstance(config, str) and "\n" in config and namespace is not None:
        cfg = FinetuneConfig.from_yaml(config, namespace)
        cfg = cfg.replace(**overrides) if overrides else cfg
    else:
        cfg = load_config(config, **overrides)
    if cfg.name is None:
        cfg = cfg.replace(name=time.strftime("run-%Y%m%d-%H%M%S"))
    validate_name(cfg.name)  # before anything reads data: a name that leaves output_dir is refused first
    from .core.tasks.base import resolve_task

    task = resolve_task(cfg)  # `task: auto` reads the training data to decide
    task.preflight()
    if cfg.track:
        from .core.track import check_trackers_available

        check_trackers_available(cfg.track)  # the missing extra is named in the cell
    check_run(cfg, task)  # output directory, device, metric names, warmup, something to train
    if dry_run:
        return _dry_run(cfg, task)

    resume_ckpt, reuse = None, False
    if cfg.resume_from in ("last", "best"):
        existing = RunDir(Path(cfg.output_dir).expanduser() / cfg.name)
        if not existing.path.is_dir():
            raise FinetuneError(
                f"resume_from: {cfg.resume_from}: there is no run '{cfg.name}' in "
                f"{Path(cfg.output_dir).expanduser()} to resume"
            )
        resume_ckpt, reuse = existing.resolve_checkpoint(cfg.resume_from), True
    elif cfg.resume_from:
        resume_ckpt = RunDir(Path(".")).resolve_checkpoint(cfg.resume_from)
    if resume_ckpt is not None:
        check_resume(resume_ckpt, cfg, task)  # another task's or another model's checkpoint: refused here
    with _RUNS_LOCK:
        current = _RUNS.get(cfg.name)
        if current is not None and current.status in ACTIVE_STATES:
            raise RunStateError(
                f"run '{cfg.name}' is still {current.status}: stop it first "
                f"(`%finetune stop {cfg.name}` or `{cfg.name}.stop()`), or pick another name"
            )
        run_dir = RunDir.create(cfg.output_dir, cfg.name, overwrite=overwrite and not reuse, reuse=reuse)
        run = Run(cfg, run_dir, task, resume_ckpt, list(callbacks))
        _RUNS[cfg.name] = run
    run_dir.write_config(cfg.to_yaml())
    run_dir.write_status(state="queued", reason=None, step=0, pid=_pid(), name=run_dir.name)
    run_dir.register()
    if start:
        run.start()
    if wait:
        run.wait()
    return run


def lr_find(
    config: FinetuneConfig | dict | str | Path | None = None,
    /,
    *,
    namespace: dict | None = None,
    num_steps: int | None = None,
    **overrides,
):
    """LR range test on the model and data of `config`, on the calling thread; trains nothing that stays.

    Returns an `LRFindResult` (lrs, raw and smoothed losses, `steepest`, `valley`, `min_div10`, `suggestion`);
    `nb_finetune.ui.experiments.show_lr_find(result)` draws it. `lr: find` in a run's config does the same before
    training and trains with `suggestion`.

    Example:
        >>> res = lr_find({"model": "path/to/model", "data": {"train": "reviews.csv"}})  # doctest: +SKIP
        >>> res.suggestion  # doctest: +SKIP
        0.00031
    """
    import tempfile

    from .core.lr_find import find_lr_for_run
    from .core.tasks.base import resolve_task
    from .core.train import library_logging_to

    if isinstance(config, str) and "\n" in config and namespace is not None:
        cfg = FinetuneConfig.from_yaml(config, namespace)
        cfg = cfg.replace(**overrides) if overrides else cfg
    else:
        cfg = load_config(config, **overrides)
    task = resolve_task(cfg)
    task.preflight()
    import torch

    with library_logging_to(Path(tempfile.gettempdir()) / "nb_finetune-lr_find.log"):
        torch.manual_seed(cfg.seed)
        model = task.build_model()
        train_data, _ = task.build_data()
        return find_lr_for_run(cfg, task, model, train_data, task.layer_map(model), num_steps=num_steps)


def _pid() -> int:
    import os

    return os.getpid()


def get_run(name: str) -> Run:
    """The run of that name started in this process."""
    with _RUNS_LOCK:
        if name not in _RUNS:
            known = ", ".join(_RUNS) or "none yet"
            raise FinetuneError(f"no run named '{name}' in this kernel (runs: {known})")
        return _RUNS[name]


def active_runs() -> list[Run]:
    with _RUNS_LOCK:
        return [r for r in _RUNS.values() if r.status in ACTIVE_STATES]


def all_runs() -> list[Run]:
    with _RUNS_LOCK:
        return list(_RUNS.values())


# --------------------------------------------------------------------------------------------- scheduler
class _Scheduler:
    """One worker thread per process: one run trains at a time, the rest wait in order."""

    def __init__(self):
        self._q: queue.Queue[Run] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="nb_finetune-worker", daemon=True)
        self._thread.start()

    def submit(self, run: Run) -> None:
        self._q.put(run)

    def _loop(self):
        while True:
            run = self._q.get()
            try:
                run._execute()
            except BaseException:  # noqa: BLE001 - _execute records its own failures; never kill the worker
                pass
            del run  # waiting for the next run must not keep this one (its model, its GPU memory) alive


_SCHED: _Scheduler | None = None
_SCHED_LOCK = threading.Lock()


def _scheduler() -> _Scheduler:
    global _SCHED
    with _SCHED_LOCK:
        if _SCHED is None or not _SCHED._thread.is_alive():
            _SCHED = _Scheduler()
        return _SCHED


# --------------------------------------------------------------------------------------------- Run
class Run:
    """Handle on one fine-tuning run. Properties never block; `wait`, `evaluate`, `predict`, `save` wait.

    Example:
        >>> run = finetune(cfg)        # doctest: +SKIP
        >>> run.set(lr=1e-5)           # the running schedule continues from the new base lr  # doctest: +SKIP
        >>> run.freeze("bottom 4")     # applied at the next optimizer step  # doctest: +SKIP
        >>> run.stop()                 # checkpoint, then stop  # doctest: +SKIP
    """

    def __init__(self, config: FinetuneConfig, run_dir: RunDir, task, resume_ckpt, callbacks):
        self.config = config
        self.dir = run_dir.path
        self._run_dir = run_dir
        self._task = task
        self._resume = resume_ckpt
        self._callbacks = callbacks
        self.controls = Controls()
        self._state, self._reason, self._error, self._exc = "queued", None, None, None
        self._done = threading.Event()
        self._model = None
        self._layer_map = None
        self._frozen: set[str] = set()
        self._history: list[dict[str, Any]] = []
        self._evals: list[dict[str, Any]] = []
        self._started: RunStarted | None = None
        self._last_step: StepEnded | None = None
        self._result = None
        self._lock = threading.Lock()
        self._subscribers: list[Any] = []
        self._submitted = False
        if resume_ckpt is not None and run_dir.path == resume_ckpt.parent.parent:
            self._load_prior_history(int(resume_ckpt.name.split("-")[-1]) if "-" in resume_ckpt.name else 0)

    # ------------------------------------------------------------ properties (never block)
    @property
    def name(self) -> str:
        return self._run_dir.name

    @property
    def status(self) -> str:
        """queued, starting, training, paused, stopping, finished, stopped or failed."""
        return self._state

    @property
    def reason(self) -> str | None:
        return self._reason

    @property
    def error(self) -> str | None:
        return self._error

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def step(self) -> int:
        return self._last_step.step if self._last_step else (self._started.start_step if self._started else 0)

    @property
    def total_steps(self) -> int | None:
        return (
            self._last_step.total_steps if self._last_step else (self._started.total_steps if self._started else None)
        )

    @property
    def history(self):
        """One row per optimizer step logged (loss, lr, grad_norm, throughput) with eval metrics at their step."""
        import pandas as pd

        with self._lock:
            rows = list(self._history)
            evals = list(self._evals)
        df = pd.DataFrame(rows, columns=["step", "epoch", "loss", "lr", "grad_norm", "samples_per_s", "tokens_per_s"])
        if evals:
            ev = pd.DataFrame(evals).drop(columns=["epoch"], errors="ignore")
            df = df.merge(ev, on="step", how="outer").sort_values("step").reset_index(drop=True)
        return df

    @property
    def metrics(self) -> dict[str, float]:
        """The latest evaluation's metrics ({} before the first)."""
        with self._lock:
            last = self._evals[-1] if self._evals else {}
        return {k: v for k, v in last.items() if k.startswith("eval_")}

    @property
    def model(self):
        """The model being trained (live object: it changes while the run trains)."""
        return self._model

    @property
    def run_dir(self) -> RunDir:
        """The run's directory on disk (config, metrics.jsonl, status.json, checkpoints)."""
        return self._run_dir

    @property
    def task(self):
        """The run's task (`core/tasks/`): its name, title, labels, what `predict` returns."""
        return self._task

    @property
    def _prep(self):  # what pre-flight resolved: the task holds it (train / eval data, tokenizer, labels)
        return self._task

    @property
    def tokenizer(self):
        return self._task.tokenizer

    @property
    def labels(self) -> list[str]:
        """Label (or tag) names in class-index order; [] for tasks without labels (question answering)."""
        return list(self._task.label_names)

    @property
    def timings(self) -> dict[str, float]:
        """Seconds (wall and CPU) of set-up, the training loop and the finish, once the run has ended."""
        return dict(self._result.timings) if self._result is not None else {}

    @property
    def checkpoints(self) -> list[Path]:
        return self._run_dir.checkpoints()

    @property
    def best_checkpoint(self) -> Path | None:
        return self._run_dir.best_checkpoint()

    def layer_map(self):
        """DataFrame of layer groups: kind, parameter count, trainable."""
        import pandas as pd

        lm = self._layer_map
        if lm is None:
            return pd.DataFrame(columns=["group", "kind", "params", "trainable"])
        return pd.DataFrame(lm.table(self._frozen))

    def __repr__(self) -> str:
        total = self.total_steps
        prog = f"step {self.step}/{total}" if total else f"step {self.step}"
        m = self.metrics
        best = ", ".join(f"{k.removeprefix('eval_')}={v:.4g}" for k, v in m.items())
        return f"<Run {self.name!r} {self.status}{' (' + self._reason + ')' if self._reason else ''} {prog}" + (
            f" | {best}>" if best else ">"
        )

    def _repr_html_(self) -> str:
        """State, progress, the best metric and a link to the run directory (relative: it opens in JupyterLab)."""
        import html
        import os

        colours = {"training": "#0072b2", "finished": "#009e73", "stopped": "#e69f00", "failed": "#d55e00"}
        state = self.status + (f" · {self._reason}" if self._reason else "")
        total, step = self.total_steps, self.step
        pct = 100 * step / total if total else 0
        best = getattr(self, "_best_eval", None) or {}
        names = [k for k in best if k.startswith("eval_") and k != "eval_loss"] or [
            k for k in best if k == "eval_loss"
        ]
        best_text = (
            f"best {names[0].removeprefix('eval_')} {best[names[0]]:.4f} at step {best['step']:,}" if names else ""
        )
        try:
            rel = os.path.relpath(self._run_dir.path)
        except ValueError:
            rel = ""
        rel = rel if rel and not rel.startswith("..") else ""
        where = (
            f'<a href="{html.escape(rel)}" title="open the run directory">{html.escape(rel)}</a>'
            if rel
            else f"<code>{html.escape(self.name)}</code>"
        )
        return (
            '<div class="nb-finetune-run" style="font-size:13px;display:flex;gap:10px;align-items:center;'
            'flex-wrap:wrap">'
            f"<b>Run {html.escape(self.name)}</b>"
            f'<span style="background:{colours.get(self.status, "#6b7b8c")};color:white;border-radius:9px;'
            f'padding:1px 9px;font-size:12px">{html.escape(state)}</span>'
            f'<span style="display:inline-block;width:120px;height:8px;background:#e0e0e0;border-radius:4px;'
            f'overflow:hidden"><span style="display:block;width:{pct:.1f}%;height:100%;background:#0072b2">'
            f"</span></span>"
            f"<span>step {step:,}{f'/{total:,}' if total else ''}</span>"
            f"{f'<span>{html.escape(best_text)}</span>' if best_text else ''}"
            f"<span>{where}</span></div>"
        )

    # ------------------------------------------------------------ control
    def _check_active(self, what: str) -> None:
        if self.done:
            raise RunStateError(f"cannot {what}: run '{self.name}' has already {self.status}")

    def stop(self, save: bool = True, reason: str = "user", _source: str = "api") -> Run:
        """Stop at the next micro-batch; with `save`, write a checkpoint of the last optimizer step first. `reason` is
        what `run.reason` and status.json record (the SIGTERM handlers say "SIGTERM")."""
        if not self.done:
            self.controls.stop(save=save, source=_source, reason=reason)
        return self

    def abort(self) -> Run:
        """Stop at the next micro-batch without a checkpoint."""
        if not self.done:
            self.controls.send("abort")
        return self

    def pause(self, _source: str = "api") -> Run:
        self._check_active("pause")
        self.controls.pause(_source)
        return self

    def resume(self, _source: str = "api") -> Run:
        """Un-pause a paused run. (To continue a finished run from a checkpoint, use `resume_from: last`.)"""
        self._check_active("resume")
        self.controls.resume(_source)
        return self

    def set(self, _source: str = "api", **values) -> Run:
        """Change live fields (`lr`, `weight_decay`, `epochs`, `layer_lr_decay`, `group_lr`, `unfreeze_every`, ...);
        applied at the next optimizer step. (`_source` names who asked: the panel, the magic; shown with the change.)"""
        self._check_active("set values")
        allowed = live_fields()
        from .core.config import canonical_name, check_live_value

        clean = {}
        for k, v in values.items():
            name = canonical_name(k)
            if name == "freeze":
                raise ConfigError("use run.freeze(spec) to change freezing")
            if name not in allowed:
                raise ConfigError(
                    f"'{name}' cannot change during a run. Live fields: "
                    f"{', '.join(n for n in allowed if n != 'freeze')}"
                )
            checked = check_live_value(name, v)  # ConfigError `name=value: why`
            if name in ("layer_lr_decay", "group_lr") and self._layer_map is not None:
                from .core.freezing import lr_multipliers

                # group names are checked against this model now, in the caller's cell
                lr_multipliers(self._layer_map, *((checked, None) if name == "layer_lr_decay" else (None, checked)))
            clean[name] = v
        self.controls.set(source=_source, **clean)
        return self

    def freeze(self, spec, _source: str = "api") -> Run:
        """Change which layers train (same specs as the `freeze` key); applied at the next optimizer step."""
        self._check_active("change freezing")
        if self._layer_map is not None:
            resolve_freeze(spec, self._layer_map)  # raise now, in the caller's cell
        else:
            from .core.freezing import parse_freeze_spec

            parse_freeze_spec(spec)
        self.controls.freeze(spec, source=_source)
        return self

    def checkpoint(self, _source: str = "api") -> Run:
        """Write a checkpoint at the next optimizer step."""
        self._check_active("checkpoint")
        self.controls.checkpoint(_source)
        return self

    # ------------------------------------------------------------ starting later
    @property
    def started(self) -> bool:
        """Whether the run was handed to the worker (`finetune(..., start=False)` holds it until `start()`)."""
        return self._submitted

    def start(self) -> Run:
        """Hand the run to the worker (it trains when the runs before it have finished)."""
        with self._lock:
            if self._submitted:
                return self
            self._submitted = True
        from .core.train import release_openmp_threads

        release_openmp_threads()  # this thread's idle OpenMP pool would slow every CPU step of the worker's
        _scheduler().submit(self)
        return self

    def configure(self, **changes) -> Run:
        """Change any config field of a run that has not started (`finetune(..., start=False)`)."""
        if self._submitted:
            raise RunStateError(
                f"run '{self.name}' has started: change live fields with run.set(...) and run.freeze(...)"
            )
        from .core.config import canonical_name

        clean = {canonical_name(k): v for k, v in changes.items()}
        if "freeze" in clean:
            spec = clean["freeze"]
            lm = self.planned_layer_map()
            if lm is not None:
                resolve_freeze(spec, lm)  # a bad spec fails here, in the caller's cell
        self.config = self.config.replace(**clean)
        self._run_dir.write_config(self.config.to_yaml())
        return self

    def planned_layer_map(self):
        """The model's layer map before the run builds the model (weights on the meta device), or None."""
        if self._layer_map is not None:
            return self._layer_map
        if getattr(self, "_planned", None) is None:
            try:
                self._task.cfg = self.config
                self._planned = self._task.layer_map(self._task.build_model(meta=True))
            except Exception:  # noqa: BLE001 - a preview only; the run reports real errors when it starts
                return None
        return self._planned

    # ------------------------------------------------------------ waiting
    def wait(self, timeout: float | None = None, *, pump=None, interrupt: str = "stop") -> Run:
        """Block until the run ends. Ctrl-C once: graceful stop with checkpoint; twice: abort.

        `pump()` is called about every 0.1 s on the waiting thread (the magic refreshes its display there).
        """
        if not self._submitted and not self.done:
            raise RunStateError(f"run '{self.name}' has not started: call {self.name}.start() (or its Start button)")
        deadline = None if timeout is None else time.monotonic() + timeout
        interrupts = 0
        while not self._done.is_set():
            try:
                self._done.wait(0.1)
                if pump:
                    pump()
            except KeyboardInterrupt:
                interrupts += 1
                if interrupt != "stop" or interrupts > 2:
                    raise
                if interrupts == 1:
                    self.stop(save=True)
                else:
                    self.abort()
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run '{self.name}' still {self.status} after {timeout} s")
        if pump:
            pump()
        return self

    def _need_model(self, what: str):
        self.wait()
        if self._model is None:
            raise RunStateError(
                f"cannot {what}: run '{self.name}' {self.status} before its model was built"
                + (f" ({self._error})" if self._error else "")
            )
        return self._model

    def predict(self, *args, **kwargs):
        """Predictions in the task's own shape (see each task's README section), e.g. for text classification
        `run.predict(["great film"])` -> [{'label': 'positive', 'score': 0.97}]."""
        model = self._need_model("predict")
        return self._task.predict(model, *args, **kwargs)

    def evaluate(self, data=None) -> dict[str, float]:
        """Metrics on the eval split, or on `data` (same forms as `data.eval`)."""
        from .core.train import evaluate

        model = self._need_model("evaluate")
        if data is None:
            ds = self._task.eval
            if ds is None:
                raise FinetuneError("evaluate: this run has no eval data; pass data=... (a file, a DataFrame, ...)")
        else:
            ds = self._task.load_eval(data)
        encoded = self._task.encode(ds, role="eval")
        device = next(model.parameters()).device
        metrics, _ = evaluate(model, encoded, self._task, self.config, device)
        return metrics

    def save(self, path: str | Path, **kwargs) -> Path:
        """Save model (safetensors), tokenizer and config to `path`; loadable with `from_pretrained(path)`.
        Task options pass through (causal-lm with LoRA: `merged=True` saves plain merged weights, not adapters)."""
        from .core.train import library_logging_to

        model = self._need_model("save")
        path = Path(path).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        with library_logging_to(self.dir / "run.log"):  # no library progress bars in the user's cell
            self._task.save(model, path, **kwargs)
        (path / "finetune_config.yaml").write_text(self.config.to_yaml(), encoding="utf-8")
        return path

    def generate(self, prompt, max_new_tokens: int = 64, **generation_kwargs):
        """Text generated after `prompt` (a string, a list of `{role, content}` messages, or a list of those) by the
        task's model (causal-lm). While the run trains, the request is served between two optimizer steps under a
        forked RNG, so training goes on exactly as without it; after the run, with the final model."""
        if not hasattr(self._task, "generate"):
            raise FinetuneError(f"generate: task {self._task.name} does not generate text; use predict()")
        if self._model is not None and not self.done and hasattr(self._task, "generate_live"):
            return self._task.generate_live(
                prompt,
                max_new_tokens,
                is_done=lambda: self.done,
                is_paused=lambda: self.status == "paused",
                **generation_kwargs,
            )
        model = self._need_model("generate")
        return self._task.generate(model, prompt, max_new_tokens, **generation_kwargs)

    # ------------------------------------------------------------ events
    def subscribe(self, callback) -> None:
        """Add a subscriber (`on_event(event)`) to a run that is queued or training."""
        self._subscribers.append(callback)

    def on_event(self, e: Event) -> None:
        self._state = next_state(self._state, e)  # the one state machine (core/controls.py)
        if isinstance(e, RunStarted):
            self._started = e
            if e.layers:  # the trainable set the loop starts with (a resumed run: the checkpoint's)
                self._frozen = {row["group"] for row in e.layers if not row.get("trainable", True)}
        elif isinstance(e, StepEnded):
            self._last_step = e
        elif isinstance(e, Logged):
            base_step = e.step - len(e.losses) + 1
            rows = [
                {
                    "step": base_step + i,
                    "epoch": None,
                    "loss": v,
                    "lr": None,
                    "grad_norm": None,
                    "samples_per_s": None,
                    "tokens_per_s": None,
                }
                for i, v in enumerate(e.losses[:-1])
            ]
            rows.append(
                {
                    "step": e.step,
                    "epoch": e.epoch,
                    "loss": e.losses[-1] if e.losses else e.loss,
                    "lr": e.lr,
                    "grad_norm": e.grad_norm,
                    "samples_per_s": e.samples_per_s,
                    "tokens_per_s": e.tokens_per_s,
                }
            )
            with self._lock:
                self._history.extend(rows)
        elif isinstance(e, EvalEnded):
            with self._lock:
                self._evals.append({"step": e.step, "epoch": e.epoch, **e.metrics})
                if e.is_best:
                    self._best_eval = {"step": e.step, **e.metrics}
        elif isinstance(e, ControlApplied):
            if e.command == "freeze" and e.ok and self._layer_map is not None:
                self._frozen = resolve_freeze(e.args.get("spec"), self._layer_map)
        elif isinstance(e, RunFinished):
            self._reason, self._error = e.reason, e.error

    def _load_prior_history(self, upto_step: int) -> None:
        for e in self._run_dir.read_events():  # the one metrics.jsonl codec (core/records.py)
            if isinstance(e, (Logged, EvalEnded)) and e.step <= upto_step:
                self.on_event(e)

    # ------------------------------------------------------------ worker side
    def _execute(self) -> None:
        """Runs on the worker thread: build model and data, train, record the outcome."""
        from .core import train as T

        task, rd = self._task, self._run_dir
        subscribers = [self, RegistryCallback(rd), *self._callbacks, _Subscribers(self._subscribers)]
        if hasattr(task, "on_event"):  # a task that serves requests at step boundaries (causal-lm: generate)
            subscribers.append(task)

        def emit(ev):
            for cb in subscribers:
                try:
                    cb.on_event(ev)
                except Exception:  # noqa: BLE001
                    pass

        if self.controls.stop_requested:  # stopped while queued
            emit(RunFinished(state="stopped", reason=self.controls.stop_reason, step=0))
            self._done.set()
            return
        self._state = "starting"
        rd.write_status(state="starting")
        try:
            with T.library_logging_to(rd.path / "run.log"):
                import torch

                torch.manual_seed(self.config.seed)  # the new head's initialisation
                task.cfg = self.config  # `configure()` may have changed it since pre-flight
                model = task.build_model()
                train_data, eval_data = task.build_data()
                self._layer_map = task.layer_map(model)
                self._frozen = resolve_freeze(self.config.freeze, self._layer_map)
                self._model = model
                if self.config.track:
                    from .core.track import make_trackers

                    others = list(subscribers)

                    def notify(ev, others=others):  # a tracker's failure, to the panel and metrics.jsonl
                        for cb in others:
                            try:
                                cb.on_event(ev)
                            except Exception:  # noqa: BLE001 - a subscriber's bug must not stop training
                                pass

                    # they read the resolved config at RunStarted
                    subscribers.extend(make_trackers(self.config, rd, notify))
                notes = []  # what start-up resolved, shown right after RunStarted (panel, trackers, metrics.jsonl)
                if self.config.batch_size_auto and self._resume is None:
                    notes.append(self._auto_batch(model, train_data))
                if self.config.lr_find and self._resume is None:
                    notes.append(self._find_lr(model, train_data))
                if notes:
                    subscribers.append(_AfterStart(notes, list(subscribers)))
                job = T.Job(self.config, task, model, train_data, eval_data, self._layer_map, rd, self._resume)
                result = T.train(job, self.controls, subscribers)
                self._model = engine_unwrap(model)
            self._result = result
            emit(
                RunFinished(state=result.state, reason=result.reason, step=result.step, best_metric=result.best_metric)
            )
        except FinetuneError as e:
            e = as_raised(e)  # raised in a DataLoader worker: its own message, not torch's wrapped traceback
            self._exc = _without_frames(e)
            emit(RunFinished(state="failed", reason="error", step=self.step, error=str(e)))
        except BaseException as e:  # noqa: BLE001 - a failed run must be recorded, whatever failed
            import traceback

            with open(rd.path / "run.log", "a", encoding="utf-8") as f:
                f.write(traceback.format_exc())
            oom = out_of_memory_message(self.config, e)
            error = oom or f"{type(e).__name__}: {e} (traceback in {rd.path / 'run.log'})"
            self._exc = _without_frames(FinetuneError(oom) if oom else e)
            emit(RunFinished(state="failed", reason="error", step=self.step, error=error))
        finally:
            _release_device_memory()
            self._done.set()

    def _auto_batch(self, model, train_data):
        """`batch_size: auto`: the micro-batch that fits and the accumulation that keeps the effective batch; both
        go into config.yaml. Returns the ControlApplied (source `batch_size`) that announces them."""
        from .core.batch_size import resolve_batch_size

        rd = self._run_dir
        rd.write_status(state="starting", phase="batch_size")
        choice = resolve_batch_size(self.config, self._task, model, train_data, self._layer_map, self._frozen)
        self.config = self.config.replace(batch_size=choice.batch_size, grad_accum=choice.grad_accum)
        self._task.cfg = self.config
        rd.write_config(self.config.to_yaml())
        rd.write_status(batch_size=choice.batch_size, grad_accum=choice.grad_accum, phase=None)
        self._batch_choice = choice
        args = {"batch_size": choice.batch_size, "grad_accum": choice.grad_accum}
        return ControlApplied(step=0, command="set", args=args, seq=0, source="batch_size", message=str(choice))

    def _find_lr(self, model, train_data):
        """`lr: find`: the range test on this run's model before it trains; the choice goes into config.yaml.
        Returns the ControlApplied (source `lr_find`) that announces it."""
        from .core.lr_find import find_lr_for_run

        rd = self._run_dir
        rd.write_status(state="starting", phase="lr_find")
        res = find_lr_for_run(self.config, self._task, model, train_data, self._layer_map)
        self._lr_find = res
        res.save(rd.path / "lr_find.json")
        if res.suggestion is None:
            raise FinetuneError(
                f"lr: find: the range test found no lr where the loss falls ({res.stopped} after {len(res.lrs)} "
                "steps); set lr yourself, or give the run more training data"
            )
        self.config = self.config.replace(lr=res.suggestion, lr_find=False)
        self._task.cfg = self.config
        rd.write_config(self.config.to_yaml())
        rd.write_status(lr_find={"lr": res.suggestion, "valley": res.valley, "steepest": res.steepest}, phase=None)
        return ControlApplied(
            step=0, command="set", args={"lr": res.suggestion}, seq=0, source="lr_find", message=str(res)
        )

    @property
    def lr_find_result(self):
        """The `lr: find` range test of this run (`LRFindResult`: curve and suggestions), or None."""
        return getattr(self, "_lr_find", None)


class _AfterStart:
    """Hands events to the other subscribers right after they got RunStarted (the panel shows them first)."""

    def __init__(self, events, subscribers):
        self.events, self.subscribers, self.sent = events, subscribers, False

    def on_event(self, e: Event) -> None:
        if isinstance(e, RunStarted) and not self.sent:
            self.sent = True
            for ev in self.events:
                for cb in self.subscribers:
                    try:
                        cb.on_event(ev)
                    except Exception:  # noqa: BLE001 - a subscriber's bug must not stop training
                        pass


def _without_frames(e: BaseException) -> BaseException:
    """The exception without its traceback: the frames would keep the loop's optimizer, batches and activations
    (GPU memory) alive for as long as the Run object lives."""
    e.__traceback__ = None
    for linked in (e.__cause__, e.__context__):
        if linked is not None:
            linked.__traceback__ = None
    return e


def _release_device_memory() -> None:
    """After a run ends, fails or stops: free what nothing references any more (optimizer state, activations)."""
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


class _Subscribers:
    """Fan-out to `Run.subscribe`rs, including those that subscribe while the run trains."""

    def __init__(self, subscribers: list):
        self.subscribers = subscribers

    def on_event(self, e: Event) -> None:
        for cb in tuple(self.subscribers):
            try:
                cb.on_event(e)
            except Exception:  # noqa: BLE001 - a subscriber's bug must not stop training
                pass


def engine_unwrap(model):
    return getattr(model, "module", model)


# --------------------------------------------------------------------------------------------- dry run
@dataclass
class DryRunReport:
    """What a run would do: the task and its head, layer map, steps and a memory estimate. Nothing is trained."""

    name: str
    model: str
    layer_map_text: str
    layers: list[dict[str, Any]]
    params_total: int
    params_trainable: int
    num_train: int
    num_eval: int
    labels: list[str]
    steps_per_epoch: int
    total_steps: int
    precision: str
    device: str
    memory_bytes: dict[str, int]
    task: str = "text-classification"
    task_detail: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        mem = self.memory_bytes
        gib = lambda b: f"{b / 2**30:.2f} GiB"  # noqa: E731
        lines = [
            f"dry run '{self.name}': {self.model}",
            *(self.task_detail or [f"task: {self.task}"]),
            f"examples: {self.num_train:,} train, {self.num_eval:,} eval",
            f"steps: {self.steps_per_epoch:,} per epoch, {self.total_steps:,} in all",
            f"device: {self.device}, precision {self.precision}",
            "",
            self.layer_map_text,
            "",
            f"memory estimate: {gib(mem['total'])} (weights {gib(mem['weights'])}, gradients {gib(mem['gradients'])}, "
            f"optimizer {gib(mem['optimizer'])}, activations ~{gib(mem['activations'])})",
        ]
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle):
        p.text(str(self))


def _dry_run(cfg: FinetuneConfig, task) -> DryRunReport:
    import torch

    from .core.train import device_name, device_type, resolve_precision

    model = task.build_model(meta=True)
    lm = task.layer_map(model)
    frozen = resolve_freeze(cfg.freeze, lm)
    auto_note = None
    if cfg.batch_size_auto:  # what the run would pick from the memory estimate (on CUDA the run tries sizes)
        from .core.batch_size import resolve_batch_size

        choice = resolve_batch_size(cfg, task, model, _Sized(task.num_train), lm, frozen, method="estimate")
        cfg = cfg.replace(batch_size=choice.batch_size, grad_accum=choice.grad_accum)
        auto_note = str(choice)
    owner = lm.group_of_param()
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for n, p in model.named_parameters() if n not in lm.fixed and owner.get(n) not in frozen)
    n_train, n_eval = task.num_train, task.num_eval
    spe = math.ceil(math.ceil(n_train / cfg.batch_size) / cfg.grad_accum)
    total_steps = cfg.max_steps if cfg.max_steps is not None else math.ceil(cfg.epochs * spe)
    dev_type = device_type(cfg.device)
    precision = resolve_precision(cfg.precision.value, dev_type)
    mem = {
        "weights": total * 4,
        "gradients": trainable * 4,
        "optimizer": trainable * 8,
        "activations": task.activation_bytes(model, lm, frozen, cfg.batch_size, precision),
    }
    mem["total"] = sum(mem.values())
    cuda_index = int(cfg.device.split(":")[1]) if cfg.device.startswith("cuda:") else 0
    device = (
        device_name(torch.device(dev_type)) if dev_type != "cuda" else device_name(torch.device("cuda", cuda_index))
    )
    return DryRunReport(
        cfg.name,
        task.model_id,
        lm.describe(frozen),
        lm.table(frozen),
        total,
        trainable,
        n_train,
        n_eval,
        list(task.label_names),
        spe,
        total_steps,
        precision,
        device,
        mem,
        task=task.name,
        task_detail=[*task.describe(), *([auto_note] if auto_note else [])],
    )


class _Sized:
    """Stands in for the training examples where only their number is needed."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n
