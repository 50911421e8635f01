"""Experiment trackers (`track: mlflow` or a list): event subscribers that mirror a run into MLflow, Weights &
Biases, Comet or TensorBoard. Each is an optional extra; a tracker that fails writes one line to run.log and a
`tracker_errors` field to status.json (the panel shows it) and never stops training.

A tracker is a file here with a `Tracker` subclass registered in `TRACKERS` (name -> (module, class, extra)).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from ...errors import ConfigError
from .base import SafeTracker, Tracker, flatten_config

__all__ = [
    "TRACKERS",
    "Tracker",
    "SafeTracker",
    "check_tracker_names",
    "check_trackers_available",
    "make_trackers",
    "flatten_config",
]

# name -> (module under core/track, class, the import it needs, the pip extra that brings it)
TRACKERS: dict[str, tuple[str, str, str, str]] = {
    "mlflow": ("mlflow_tracker", "MlflowTracker", "mlflow", "mlflow"),
    "wandb": ("wandb_tracker", "WandbTracker", "wandb", "wandb"),
    "comet": ("comet_tracker", "CometTracker", "comet_ml", "comet"),
    "tensorboard": ("tensorboard_tracker", "TensorBoardTracker", "tensorboard", "tensorboard"),
}
_ALIASES = {"comet_ml": "comet", "tb": "tensorboard", "weights_and_biases": "wandb", "w&b": "wandb"}


def check_tracker_names(value) -> list[str] | None:
    """`mlflow` / `[mlflow, wandb]` / `mlflow, wandb` -> canonical names; ValueError names the unknown one."""
    if value is None or value is False or value == [] or (isinstance(value, str) and value.lower() in ("none", "")):
        return None
    items = [s.strip() for s in value.split(",")] if isinstance(value, str) else list(value)
    out = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"expected tracker names, got {item!r}")
        name = _ALIASES.get(item.lower(), item.lower())
        if name not in TRACKERS:
            raise ValueError(f"unknown tracker {item!r}: use {', '.join(TRACKERS)} (or a list of them)")
        if name not in out:
            out.append(name)
    return out or None


def check_trackers_available(names) -> None:
    """ConfigError naming the extra for the first tracker whose library is not installed (pre-flight)."""
    for name in names or ():
        _, _, module, extra = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"track: {name} needs the {extra} extra: pip install 'nb_finetune[{extra}]'")


def make_trackers(cfg, run_dir, notify=None) -> list[SafeTracker]:
    """One `SafeTracker` per name in `cfg.track` (empty when none); `notify(event)` hears of a tracker's failure."""
    out = []
    for name in cfg.track or ():
        mod_name, cls_name, _, _ = TRACKERS[name]
        try:
            cls = getattr(importlib.import_module(f"{__name__}.{mod_name}"), cls_name)
            tracker = cls(cfg, run_dir)
        except Exception as e:  # noqa: BLE001 - a tracker that cannot start is reported, training goes on
            tracker = _Broken(name, e)
        out.append(SafeTracker(tracker, run_dir, notify))
    return out


class _Broken(Tracker):
    name = "broken"

    def __init__(self, name: str, error: BaseException):
        self.name, self.error = name, error

    def on_event(self, event: Any) -> None:
        raise self.error
