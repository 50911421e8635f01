"""Hyperparameter sweeps: `sweep(config)` / `%%finetune NAME --sweep` runs the config's `sweep:` block as Optuna
trials, one run after another (`<output_dir>/<NAME>/trial-000`, ...), with the study in
`<output_dir>/<NAME>/sweep.db` so a sweep survives a kernel restart (`resume=True` / `--resume` continues it).
Intermediate evaluations feed Optuna's pruner; a pruned trial is stopped through the run's own stop (checkpoint
kept). `Sweep.promote()` prints the `%%finetune` cell of the best trial."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from .api import finetune
from .core.config import FinetuneConfig, load_config
from .core.events import EvalEnded
from .core.sweep import open_study, queue_grid, recover_interrupted, suggest, trial_rows
from .core.sweep_space import parse_sweep
from .errors import ConfigError, FinetuneError

__all__ = ["sweep", "Sweep", "get_sweep"]

_SWEEPS: dict[str, Sweep] = {}


def get_sweep(name: str) -> Sweep | None:
    return _SWEEPS.get(name)


def sweep(
    config: FinetuneConfig | dict | str | Path | None = None,
    /,
    *,
    wait: bool = True,
    resume: bool = False,
    namespace: dict | None = None,
    callbacks=(),
    enqueue: list[dict[str, Any]] | None = None,
    on_trial_end=None,
    **overrides,
) -> Sweep:
    """Run the `sweep:` block of `config` as Optuna trials; returns the `Sweep` (at once with `wait=False`).

    Args:
        config: as for `finetune()`; it needs a `sweep:` block and a name.
        wait: block until every trial has ended (Ctrl-C stops the sweep after a graceful stop of its trial).
        resume: continue the sweep of this name from its sweep.db (trials already ended are not run again).
        namespace: where `{{name}}` placeholders are looked up (also used to write them back in `promote()`).
        callbacks: subscribers for every trial's run.
        enqueue: parameter sets to try first (Optuna's enqueue_trial), e.g. a known good baseline.
        on_trial_end: `fn(sweep, row)` after each trial (row as in `Sweep.trials`).

    Example:
        >>> s = sweep({"model": "m", "data": {"train": "t.csv"}, "name": "s",  # doctest: +SKIP
        ...            "sweep": {"lr": "loguniform(1e-5, 1e-3)", "n_trials": 8}})
        >>> print(s.promote())  # doctest: +SKIP
    """
    if isinstance(config, str) and "\n" in config and namespace is not None:
        cfg = FinetuneConfig.from_yaml(config, namespace)
        cfg = cfg.replace(**overrides) if overrides else cfg
    else:
        cfg = load_config(config, **overrides)
    if cfg.sweep is None:
        raise ConfigError(
            "sweep: the config has no sweep: block, e.g. `sweep: {lr: loguniform(1e-5, 1e-3), n_trials: 8}`"
        )
    if cfg.name is None:
        raise ConfigError("sweep: name the sweep (`%%finetune NAME --sweep` or name: ...)")
    s = Sweep(cfg, namespace or {}, list(callbacks), resume=resume, enqueue=enqueue, on_trial_end=on_trial_end)
    _SWEEPS[cfg.name] = s
    if wait:
        s._drive()
    else:
        s._thread = threading.Thread(target=s._drive, name=f"nb_finetune-sweep-{cfg.name}", daemon=True)
        s._thread.start()
    return s


class Sweep:
    """Handle on a sweep: `trials` (rows), `best`, `stop()`, `wait()`, `promote()`, `run` (the trial training now)."""

    def __init__(self, cfg: FinetuneConfig, namespace, callbacks, *, resume: bool, enqueue=None, on_trial_end=None):
        self.config = cfg
        self.name = cfg.name
        self.spec = parse_sweep(cfg.sweep)
        self.dir = Path(cfg.output_dir).expanduser() / cfg.name
        self.metric = self.spec.metric or cfg.metric_for_best
        self.namespace = namespace
        self.callbacks = callbacks
        self.on_trial_end = on_trial_end
        self.study = open_study(self.spec, self.dir, cfg.name, self.metric, resume=resume)
        self.direction = self.spec.resolved_direction(self.metric)
        self.retried = recover_interrupted(self.study) if resume else []
        for params in enqueue or ():
            self.study.enqueue_trial(params)
        self.grid_size = queue_grid(self.study, self.spec.space) if self.spec.sampler == "grid" else None
        self.run = None
        self.status = "queued"
        self.error: str | None = None
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._listeners: list = []

    # ------------------------------------------------------------ state
    @property
    def trials(self) -> list[dict[str, Any]]:
        return trial_rows(self.study)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def _counted(self) -> int:
        return sum(1 for r in self.trials if r["state"] in ("done", "pruned"))

    @property
    def best(self) -> dict[str, Any] | None:
        """The best finished trial's row, or None."""
        done = [r for r in self.trials if r["state"] == "done" and r["value"] is not None]
        if not done:
            return None
        pick = min if self.direction == "minimize" else max
        return pick(done, key=lambda r: r["value"])

    def __repr__(self) -> str:
        best = self.best
        b = f" | best {self.metric}={best['value']:.4g} (trial {best['trial']})" if best else ""
        return f"<Sweep {self.name!r} {self.status} {self._counted()}/{self.spec.n_trials} trials{b}>"

    # ------------------------------------------------------------ control
    def stop(self) -> Sweep:
        """Stop the sweep: the trial training now stops (checkpoint kept) and no further trial starts."""
        self._stop.set()
        if self.run is not None:
            self.run.stop()
        return self

    def stop_trial(self) -> Sweep:
        """Stop only the trial training now (it counts as pruned); the sweep goes on."""
        if self.run is not None:
            self._stop_trial = True
            self.run.stop()
        return self

    def wait(self, timeout: float | None = None, *, pump=None) -> Sweep:
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while not self._done.wait(0.1):
                if pump:
                    pump()
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"sweep '{self.name}' still {self.status} after {timeout} s")
        except KeyboardInterrupt:
            self.stop()
            raise
        return self

    def subscribe(self, fn) -> None:
        """`fn(event_kind, payload)` on the sweep thread: ("trial_started", row), ("eval", (trial, step, value)),
        ("trial_ended", row), ("sweep_ended", None)."""
        self._listeners.append(fn)

    def _tell(self, kind, payload) -> None:
        for fn in tuple(self._listeners):
            try:
                fn(kind, payload)
            except Exception:  # noqa: BLE001 - a view's bug must not stop the sweep
                pass

    # ------------------------------------------------------------ the driver
    def _drive(self) -> None:
        import optuna

        self.status = "running"
        try:
            failures = 0
            while not self._stop.is_set() and self._counted() < self.spec.n_trials:
                if self.spec.sampler == "grid" and self._grid_exhausted():
                    break
                if self._one_trial(optuna) == "failed":
                    failures += 1
                    if failures >= self.spec.n_trials:  # every try failed: the config, not the values, is wrong
                        raise FinetuneError(
                            f"sweep '{self.name}': {failures} trials failed in a row; see "
                            f"{self.dir}/trial-*/run.log (last: {self.run.error if self.run else '?'})"
                        )
                else:
                    failures = 0
            self.status = "stopped" if self._stop.is_set() else "finished"
        except BaseException as e:  # noqa: BLE001 - recorded on the handle; a waiting caller re-raises
            self.status, self.error = "failed", f"{type(e).__name__}: {e}"
            if isinstance(e, (FinetuneError, KeyboardInterrupt)) and self._thread is None:
                raise
        finally:
            self._done.set()
            self._tell("sweep_ended", None)

    def _grid_exhausted(self) -> bool:
        return self._counted() >= self.grid_size

    def _one_trial(self, optuna) -> None:
        trial = self.study.ask()
        params = suggest(trial, self.spec.space)
        name = f"trial-{trial.number:03d}"
        trial.set_user_attr("run", name)
        cfg = self.config.replace(name=name, output_dir=str(self.dir), sweep=None, **params)
        metric, sweep_self = self.metric, self
        state = {"pruned": False, "values": [], "run": None}

        class Intermediate:
            """On the training thread, right after each evaluation: report it, and stop the run when the pruner
            says so (the sweep thread only waits meanwhile, so Optuna's storage has one user at a time)."""

            def on_event(self, e):
                if not isinstance(e, EvalEnded) or metric not in e.metrics:
                    return
                value = float(e.metrics[metric])
                state["values"].append(value)
                trial.report(value, e.step)
                sweep_self._tell("eval", (trial.number, e.step, value))
                if not state["pruned"] and trial.should_prune():
                    state["pruned"] = True
                    state["run"].stop()  # the run's own stop: a checkpoint of the last step is kept

        self._stop_trial = False
        try:
            run = finetune(cfg, callbacks=[Intermediate(), *self.callbacks], overwrite=True, start=False)
        except FinetuneError as e:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            self._tell("trial_ended", {"trial": trial.number, "state": "failed", "error": str(e)})
            raise
        self.run = state["run"] = run
        self._tell("trial_started", {"trial": trial.number, "run": name, "params": params})
        run.start()
        while not run.done:
            try:
                run.wait(timeout=0.2)
            except TimeoutError:
                pass
        pruned, values = state["pruned"], state["values"]
        pruned = pruned or self._stop_trial
        if run.status == "failed":
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        elif pruned or (run.status == "stopped" and not values):
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif not values:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            trial.study.set_user_attr(f"error-{trial.number}", f"no {metric} reported: set eval_every")
        else:
            pick = min if self.direction == "minimize" else max
            self.study.tell(trial, pick(values))
        row = next(r for r in self.trials if r["trial"] == trial.number)
        self._tell("trial_ended", row)
        if self.on_trial_end is not None:
            self.on_trial_end(self, row)
        return row["state"]

    # ------------------------------------------------------------ promote
    def promote(self, name: str | None = None) -> str:
        """A `%%finetune` cell with the best trial's values (the keys the config sets, `{{vars}}` by name)."""
        best = self.best
        if best is None:
            raise FinetuneError(f"sweep '{self.name}' has no finished trial to promote yet")
        cfg = self.config.replace(sweep=None, **best["params"])
        return promoted_cell(cfg, name or f"{self.name}_best", self.namespace, best)


def promoted_cell(cfg: FinetuneConfig, name: str, namespace: dict, best: dict | None = None) -> str:
    """Cell text: every key that differs from the default, objects written back as the `{{var}}` that holds them."""
    import yaml

    defaults = FinetuneConfig().to_dict()
    d = cfg.to_dict()
    by_id = {id(v): k for k, v in namespace.items() if not k.startswith("_")}

    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if v is None or isinstance(v, (str, int, float, bool)):
            return v
        if id(v) in by_id:
            return f"{{{{{by_id[id(v)]}}}}}"
        raise FinetuneError(
            f"promote: a {type(v).__name__} in the config is not a variable of the namespace; pass namespace=..."
        )

    keep = {}
    for k, v in d.items():
        if k in ("name", "sweep"):
            continue
        if k == "data":
            sub = {kk: vv for kk, vv in v.items() if _differs(vv, defaults["data"].get(kk))}
            if sub:
                keep[k] = plain(sub)
        elif _differs(v, defaults.get(k)):
            keep[k] = plain(v)
    body = yaml.safe_dump(keep, sort_keys=False, allow_unicode=True, width=1000)
    body = body.replace("'{{", "{{").replace("}}'", "}}")
    head = f"%%finetune {name}\n"
    if best is not None:
        head += f"# the best trial ({best['trial']}) of the sweep, value {best['value']:.6g}\n"
    return head + body


def _differs(a, b) -> bool:
    plain = (str, int, float, bool, type(None), list, dict, tuple)
    if not isinstance(a, plain) or not isinstance(b, plain):
        return a is not b  # objects from {{vars}} (DataFrames, models) compare by identity
    return a != b
