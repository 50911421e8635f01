"""The one codec between events (core/events.py) and the records of a run's `metrics.jsonl`.

Every writer and reader goes through here: the run registry writes `encode(event)`; the `Run` (history of a
resumed run), the panel (`%finetune show`), the server extension and the CLI read `decode(record)`.

On disk (one JSON object per line, `json.dumps` with its default separators; unchanged since the first release,
so old files still decode):

    {"event": "log", "time", "step", "epoch", "loss", "lr", "grad_norm", "samples_per_s", "tokens_per_s", ...}
    {"event": "eval", "time", "step", "epoch", "eval_<metric>": value, ..., "is_best": bool[, "extras": {...}]}
    {"event": "<EventClass>", **fields}          RunStarted, ControlApplied, CheckpointSaved, RunFinished, ...

Decoding is lenient: unknown keys are ignored (records written by a newer version), a missing field takes the
event's default or an empty value of its type (records written by an older version, or by hand), and a value of
the wrong type is converted when it can be (`"3"` -> 3) — a record that cannot be is skipped (None).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .events import (
    CheckpointSaved,
    ControlApplied,
    EvalEnded,
    Event,
    Logged,
    RunFinished,
    RunStarted,
    StepEnded,
)

__all__ = ["encode", "decode", "dumps", "loads", "read_events", "iter_events", "EVENT_TYPES", "EVAL_NEEDLE"]

EVENT_TYPES: dict[str, type[Event]] = {
    c.__name__: c for c in (RunStarted, StepEnded, Logged, EvalEnded, CheckpointSaved, ControlApplied, RunFinished)
}
_TAGS = {"Logged": "log", "EvalEnded": "eval"}  # on-disk names of the two frequent records
_KINDS = {v: k for k, v in _TAGS.items()}
_EVAL_FIELDS = ("time", "step", "epoch", "is_best", "extras")  # an eval record's keys besides its metrics
# the bytes that start every eval line: the server finds eval lines of a long file without parsing the others
EVAL_NEEDLE = b'"event": "eval"'
_MISSING = {("Logged", "loss"): math.nan}  # a log record without a loss: unknown, not zero


class _Invalid(ValueError):
    pass


# --------------------------------------------------------------------------------------------- encode
def encode(event: Event) -> dict[str, Any]:
    """The metrics.jsonl record of `event` (a JSON-serialisable dict; NaN stays a float)."""
    if isinstance(event, EvalEnded):
        rec: dict[str, Any] = {"event": "eval", "time": event.time, "step": event.step, "epoch": event.epoch}
        rec.update(event.metrics)  # flat, as every version wrote it (metric names carry the `eval_` prefix)
        rec["is_best"] = event.is_best
        if event.extras:
            rec["extras"] = json.loads(json.dumps(event.extras, default=str))  # a copy, JSON types only
        return rec
    return {"event": _TAGS.get(event.kind, event.kind), **dataclasses.asdict(event)}


def dumps(record: dict[str, Any]) -> str:
    """One metrics.jsonl line (without the newline)."""
    return json.dumps(record, default=str)


# --------------------------------------------------------------------------------------------- decode
def decode(record: Any) -> Event | None:
    """The event a metrics.jsonl record holds; None for a record of no known kind or one that cannot be read."""
    if not isinstance(record, dict):
        return None
    tag = record.get("event") or record.get("kind")
    kind = _KINDS.get(tag, tag) if isinstance(tag, str) else None
    cls = EVENT_TYPES.get(kind) if kind else None
    if cls is None:
        return None
    try:
        if cls is EvalEnded:
            return _decode_eval(record)
        return cls(**_fields(cls, record))
    except (_Invalid, TypeError, ValueError, OverflowError):
        return None


def _decode_eval(rec: dict[str, Any]) -> EvalEnded:
    nested = rec.get("metrics")  # an `Event.to_dict()` record keeps them nested
    source = nested if isinstance(nested, dict) else rec
    metrics = {}
    for k, v in source.items():
        if isinstance(k, str) and k.startswith("eval_") and not isinstance(v, bool):
            with contextlib.suppress(TypeError, ValueError):
                metrics[k] = float(v) if v is not None else math.nan
    args = _fields(EvalEnded, {k: rec[k] for k in _EVAL_FIELDS if k in rec})
    return EvalEnded(metrics=metrics, **args)


def _fields(cls: type[Event], rec: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.name == "metrics" and cls is EvalEnded:
            continue
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        if f.name in rec:
            out[f.name] = _convert(str(f.type), rec[f.name])
        elif not has_default:
            out[f.name] = _MISSING.get((cls.__name__, f.name), _empty(str(f.type)))
    return out


def _empty(ann: str) -> Any:
    if ann.endswith("| None"):
        return None
    if ann.startswith(("list", "dict")):
        return [] if ann.startswith("list") else {}
    return {"int": 0, "float": 0.0, "str": "", "bool": False}.get(ann)


def _convert(ann: str, v: Any) -> Any:
    optional = ann.endswith("| None")
    base = ann.removesuffix("| None").strip()
    if v is None:
        if optional:
            return None
        return math.nan if base == "float" else _empty(base)
    if base == "float":
        return _float(v)
    if base == "int":
        if isinstance(v, float) and not v.is_integer():
            raise _Invalid(v)
        return int(v)
    if base == "bool":
        return bool(v)
    if base == "str":
        return v if isinstance(v, str) else str(v)
    if base.startswith("list"):
        if not isinstance(v, list):
            raise _Invalid(v)
        return [_float(x) for x in v] if base == "list[float]" else list(v)
    if base.startswith("dict"):
        if not isinstance(v, dict):
            raise _Invalid(v)
        return {str(k): _float(x) for k, x in v.items()} if base == "dict[str, float]" else dict(v)
    return v


def _float(v: Any) -> float:
    if isinstance(v, bool):
        raise _Invalid(v)
    return float(v) if v is not None else math.nan


def loads(line: str | bytes) -> dict[str, Any] | None:
    """One metrics.jsonl line as a record (None when it is not a JSON object)."""
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


# --------------------------------------------------------------------------------------------- files
def iter_events(path: str | Path) -> Iterator[Event]:
    """The events of a metrics.jsonl, in order; unreadable lines (a half-written last one) are skipped."""
    try:
        f = open(path, encoding="utf-8")  # noqa: SIM115 - closed below; a missing file is no events
    except OSError:
        return
    with f:
        for line in f:
            ev = decode(loads(line)) if line.strip() else None
            if ev is not None:
                yield ev


def read_events(path: str | Path) -> list[Event]:
    """All events of a metrics.jsonl (see `iter_events`)."""
    return list(iter_events(path))
