"""The `sweep:` block: search spaces written as `loguniform(1e-5, 1e-3)`, `choice(0, 2, 4)`, ... parsed without
evaluating anything (each argument is a YAML 1.2 scalar), plus the sweep's own settings."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

__all__ = ["Dist", "SweepSpec", "parse_sweep", "parse_dist", "SETTINGS"]

SETTINGS = ("n_trials", "metric", "direction", "sampler", "pruner", "seed", "timeout")
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
_CALL = re.compile(r"^\s*([A-Za-z_]+)\s*\((.*)\)\s*$", re.S)
KINDS = {
    "loguniform": "loguniform",
    "log_uniform": "loguniform",
    "uniform": "uniform",
    "float": "uniform",
    "int": "int",
    "randint": "int",
    "intuniform": "int",
    "logint": "logint",
    "choice": "choice",
    "categorical": "choice",
}
_FORMS = "loguniform(low, high), uniform(low, high), int(low, high), logint(low, high), choice(a, b, ...) or [a, b]"


@dataclass(frozen=True)
class Dist:
    """One search dimension."""

    kind: str  # loguniform | uniform | int | logint | choice
    args: tuple

    def text(self) -> str:
        return f"{self.kind}({', '.join(repr(a) if isinstance(a, str) else str(a) for a in self.args)})"


@dataclass
class SweepSpec:
    space: dict[str, Dist]
    n_trials: int = 10
    metric: str | None = None  # default: the run's metric_for_best
    direction: str | None = None  # default: minimize for losses, maximize otherwise
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int | None = None
    timeout: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def resolved_direction(self, metric: str) -> str:
        if self.direction:
            return self.direction
        return "minimize" if "loss" in metric or metric.endswith(("mse", "mae", "rmse", "wer", "cer")) else "maximize"


def _scalar(text: str):
    from .config import _Loader  # YAML 1.2 scalars: 1e-5 is a number, off is a string

    text = text.strip()
    if not text:
        raise ValueError("empty argument")
    value = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    if isinstance(value, (dict, list)):
        raise ValueError(f"{text!r} is not a plain value")
    return value


def _split_args(text: str) -> list[str]:
    """Split at top-level commas (quoted strings may hold commas)."""
    out, cur, quote = [], "", None
    for ch in text:
        if quote:
            cur += ch
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
            cur += ch
        elif ch == ",":
            out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip() or out:
        out.append(cur)
    return out


def parse_dist(key: str, value) -> Dist:
    """`loguniform(1e-5, 1e-3)` / `choice(0, 2, 4)` / `[16, 32]` -> Dist; ValueError names the key and the forms."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"{key}: an empty list; use {_FORMS}")
        return Dist("choice", tuple(value))
    if isinstance(value, Dist):
        return value
    m = _CALL.match(value) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f"{key}: {value!r} is not a search space; use {_FORMS}")
    name, inner = m.group(1).lower(), m.group(2)
    if name not in KINDS:
        raise ValueError(f"{key}: unknown distribution {m.group(1)!r}; use {_FORMS}")
    kind = KINDS[name]
    try:
        args = tuple(_scalar(a) for a in _split_args(inner))
    except (ValueError, yaml.YAMLError) as e:
        raise ValueError(f"{key}: {value!r}: {e}") from None
    if kind == "choice":
        if not args:
            raise ValueError(f"{key}: choice() needs at least one value")
        return Dist(kind, args)
    if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise ValueError(f"{key}: {name}() takes two numbers (low, high), got {value!r}")
    low, high = args
    if not low < high:
        raise ValueError(f"{key}: {value!r}: low must be below high")
    if kind in ("loguniform", "logint") and low <= 0:
        raise ValueError(f"{key}: {value!r}: a log scale needs low > 0")
    if kind in ("int", "logint"):
        if low != int(low) or high != int(high):
            raise ValueError(f"{key}: {name}() takes whole numbers")
        args = (int(low), int(high))
    else:
        args = (float(low), float(high))
    if not all(math.isfinite(a) for a in args):
        raise ValueError(f"{key}: {value!r}: bounds must be finite")
    return Dist(kind, args)


def parse_sweep(block: dict[str, Any]) -> SweepSpec:
    """The `sweep:` mapping -> SweepSpec. Keys other than the settings are config keys (names or aliases)."""
    from .config import FinetuneConfig, alias_table

    if not isinstance(block, dict):
        raise ValueError("expected a mapping such as `{lr: loguniform(1e-5, 1e-3), n_trials: 8}`")
    table = alias_table(FinetuneConfig)
    space: dict[str, Dist] = {}
    settings: dict[str, Any] = {}
    for key, value in block.items():
        key = str(key)
        if key in SETTINGS:
            settings[key] = value
            continue
        canon = table.get(key)
        if canon is None or canon in ("name", "sweep", "output_dir", "model", "data", "resume_from"):
            import difflib

            close = difflib.get_close_matches(key, [*table, *SETTINGS], n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"{key}: not a config key that can be searched.{hint}")
        space[canon] = parse_dist(key, value)
    if not space:
        raise ValueError("name at least one key to search, e.g. `lr: loguniform(1e-5, 1e-3)`")
    n = settings.get("n_trials", 10)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n_trials: expected a whole number >= 1, got {n!r}")
    direction = settings.get("direction")
    if direction is not None:
        direction = {"min": "minimize", "max": "maximize"}.get(str(direction).lower(), str(direction).lower())
        if direction not in ("minimize", "maximize"):
            raise ValueError(f"direction: {settings['direction']!r} is not minimize or maximize")
    sampler = str(settings.get("sampler", "tpe")).lower()
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler: {sampler!r} is not one of {', '.join(SAMPLERS)}")
    pruner = str(settings.get("pruner", "median") or "none").lower()
    if pruner not in PRUNERS:
        raise ValueError(f"pruner: {pruner!r} is not one of {', '.join(PRUNERS)}")
    if sampler == "grid" and any(d.kind != "choice" for d in space.values()):
        bad = next(k for k, d in space.items() if d.kind != "choice")
        raise ValueError(f"{bad}: sampler: grid needs choice(...) for every key")
    metric = settings.get("metric")
    return SweepSpec(
        space,
        n_trials=n,
        metric=str(metric) if metric else None,
        direction=direction,
        sampler=sampler,
        pruner=pruner,
        seed=settings.get("seed"),
        timeout=settings.get("timeout"),
    )
