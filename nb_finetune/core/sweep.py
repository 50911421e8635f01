"""Optuna glue for `sweep:` (headless): the study in `<output_dir>/<NAME>/sweep.db`, samplers, pruners, the trial's
config values, and the state of the trials as plain rows. The driver that runs trials is nb_finetune/sweeps.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .sweep_space import Dist, SweepSpec, parse_sweep

__all__ = [
    "open_study",
    "queue_grid",
    "suggest",
    "trial_rows",
    "recover_interrupted",
    "study_name",
    "parse_sweep",
    "SweepSpec",
]


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("sweep: needs the optuna extra: pip install 'nb_finetune[optuna]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep view shows the trials, not log lines
    return optuna


def study_name(name: str) -> str:
    return f"nb_finetune-{name}"


def open_study(spec: SweepSpec, sweep_dir: Path, name: str, metric: str, *, resume: bool):
    """The study (created, or loaded with `resume`); ConfigError when it exists and `resume` is off."""
    optuna = _optuna()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{(sweep_dir / 'sweep.db').resolve()}"
    existing = (
        [s.study_name for s in optuna.get_all_study_summaries(storage)] if (sweep_dir / "sweep.db").is_file() else []
    )
    if study_name(name) in existing and not resume:
        raise ConfigError(
            f"sweep '{name}' exists in {sweep_dir}: continue it with `%%finetune {name} --sweep --resume` "
            "(or resume=True), or pick another name"
        )
    if resume and study_name(name) not in existing:
        raise ConfigError(f"sweep '{name}': nothing to resume in {sweep_dir} (no sweep.db with this sweep)")
    seed = spec.seed
    if spec.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    elif spec.sampler == "grid":  # the grid's points are queued (queue_grid); Optuna's GridSampler stops the study
        sampler = optuna.samplers.RandomSampler(seed=seed)  # itself, which ask-and-tell does not allow
    else:
        sampler = optuna.samplers.TPESampler(seed=seed)
    if spec.pruner == "median":  # prunes from the third trial on: two finished trials give a median to compare with
        pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    elif spec.pruner == "hyperband":
        pruner = optuna.pruners.HyperbandPruner()
    else:
        pruner = optuna.pruners.NopPruner()
    study = optuna.create_study(
        storage=storage,
        study_name=study_name(name),
        sampler=sampler,
        pruner=pruner,
        direction=spec.resolved_direction(metric),
        load_if_exists=True,
    )
    study.set_user_attr("metric", metric)
    return study


def recover_interrupted(study) -> list[dict[str, Any]]:
    """Trials left RUNNING by a process that died become FAIL; their params are queued again. Returns them."""
    optuna = _optuna()
    stale = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING]
    for t in stale:
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
    return [t.params for t in stale]


def queue_grid(study, space: dict[str, Dist]) -> int:
    """Queue every point of a grid of choice(...) keys not tried or queued yet; returns the grid's size."""
    import itertools

    keys = list(space)
    seen = {tuple(t.params.get(k) for k in keys) for t in study.get_trials(deepcopy=False)}
    seen |= {
        tuple(t.system_attrs.get("fixed_params", {}).get(k) for k in keys) for t in study.get_trials(deepcopy=False)
    }
    points = list(itertools.product(*(space[k].args for k in keys)))
    for p in points:
        if p not in seen:
            study.enqueue_trial(dict(zip(keys, p)))
    return len(points)


def suggest(trial, space: dict[str, Dist]) -> dict[str, Any]:
    """The trial's values for each searched key."""
    out = {}
    for key, d in space.items():
        if d.kind == "loguniform":
            out[key] = trial.suggest_float(key, d.args[0], d.args[1], log=True)
        elif d.kind == "uniform":
            out[key] = trial.suggest_float(key, d.args[0], d.args[1])
        elif d.kind == "int":
            out[key] = trial.suggest_int(key, d.args[0], d.args[1])
        elif d.kind == "logint":
            out[key] = trial.suggest_int(key, d.args[0], d.args[1], log=True)
        else:
            out[key] = trial.suggest_categorical(key, list(d.args))
    return out


_STATE = {"COMPLETE": "done", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "queued"}


def trial_rows(study) -> list[dict[str, Any]]:
    """One row per trial: number, run, state (running / pruned / done / failed), params, value, curve."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append(
            {
                "trial": t.number,
                "run": t.user_attrs.get("run", f"trial-{t.number:03d}"),
                "state": _STATE.get(t.state.name, t.state.name.lower()),
                "value": t.value,
                "params": dict(t.params),
                "curve": sorted((int(s), float(v)) for s, v in t.intermediate_values.items()),
            }
        )
    return rows
