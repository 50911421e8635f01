"""Run comparison: `compare("a", "b", "c")` / `%finetune compare a b c` overlays the loss and eval curves of runs,
with their live changes marked, and `runs_table()` (`%finetune runs`) lists runs with their key settings. Runs are
found by name in this kernel, in the per-user run index (runs of other processes), under `output_dir`, or given
as run directories; everything is read from the run directories (metrics.jsonl, config.yaml, status.json)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .core.events import ControlApplied, EvalEnded, Logged, RunFinished, RunStarted
from .core.runs import RunDir, list_runs, read_json
from .errors import FinetuneError

__all__ = ["compare", "Comparison", "RunCurves", "load_curves", "runs_table", "find_run_dir"]

KEY_PARAMS = ("lr", "batch_size", "grad_accum", "epochs", "max_steps", "freeze", "warmup", "weight_decay")


def find_run_dir(ref, output_dir: str | Path = "runs") -> Path:
    """A run directory from a `Run`, a directory, or a name (this kernel, the run index, then output_dir)."""
    if hasattr(ref, "dir") and hasattr(ref, "run_dir"):
        return Path(ref.dir)
    p = Path(str(ref)).expanduser()
    if (p / "metrics.jsonl").is_file() or (p / "status.json").is_file():
        return p.resolve()
    from . import api

    name = str(ref)
    try:
        return Path(api.get_run(name).dir)
    except FinetuneError:
        pass
    matches = [r for r in list_runs() if r.get("name") == name]
    if matches:
        return Path(matches[-1]["run_dir"])  # the latest registered
    cand = Path(output_dir).expanduser() / name
    if (cand / "metrics.jsonl").is_file():
        return cand.resolve()
    raise FinetuneError(f"compare: no run '{name}' (not in this kernel, the run index or {output_dir}/)")


@dataclass
class RunCurves:
    name: str
    run_dir: Path
    loss: tuple[list[int], list[float]] = field(default_factory=lambda: ([], []))
    evals: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)
    changes: list[dict[str, Any]] = field(default_factory=list)  # step, label (live changes that applied)


def load_curves(run_dir: Path) -> RunCurves:
    rd = RunDir(run_dir)
    c = RunCurves(rd.name, rd.path)
    for e in rd.read_events():
        if isinstance(e, Logged):
            base = e.step - len(e.losses) + 1
            for i, v in enumerate(e.losses or [e.loss]):
                c.loss[0].append(base + i if e.losses else e.step)
                c.loss[1].append(v)
        elif isinstance(e, EvalEnded):
            for k, v in e.metrics.items():
                xs, ys = c.evals.setdefault(k, ([], []))
                xs.append(e.step)
                ys.append(v)
        elif isinstance(e, ControlApplied) and e.ok and e.command not in ("pause", "resume", "checkpoint"):
            args = ", ".join(f"{k}={v}" for k, v in e.args.items())
            c.changes.append({"step": e.step, "label": f"{e.command} {args}".strip(), "source": e.source})
    return c


@dataclass
class Comparison:
    """The curves of several runs; shows as one Bokeh figure (loss | eval metric) with an SVG fallback."""

    runs: list[RunCurves]
    metric: str

    @property
    def figure(self):
        from .ui.experiments import compare_figure

        return compare_figure(self.runs, self.metric)

    def svg(self) -> str:
        from .ui.experiments import compare_svg

        return compare_svg(self.runs, self.metric)

    def __str__(self) -> str:
        parts = []
        for r in self.runs:
            ys = r.evals.get(self.metric, ([], []))[1]
            last = f"{self.metric} {ys[-1]:.4g}" if ys else "no eval"
            parts.append(f"{r.name}: {len(r.loss[0])} steps, {last}, {len(r.changes)} live changes")
        return "compare: " + "; ".join(parts)

    def _repr_mimebundle_(self, include=None, exclude=None):
        from .ui.experiments import bundle

        return bundle(self.figure, self.svg(), str(self))


def compare(*runs, metric: str | None = None, output_dir: str | Path = "runs") -> Comparison:
    """Overlay loss and eval curves of runs (names, `Run`s or run directories), live changes marked.

    Example:
        >>> compare("base", "lora", "runs/big-lr")  # doctest: +SKIP
    """
    if not runs:
        raise FinetuneError("compare: name at least one run")
    curves = [load_curves(find_run_dir(r, output_dir)) for r in runs]
    if metric is None:
        have = [k for c in curves for k in c.evals]
        metric = next((m for m in ("eval_loss", *have) if m in have), "eval_loss")
    return Comparison(curves, metric)


# --------------------------------------------------------------------------------------------- the table
def _row(run_dir: Path, where: str, live_state: str | None = None) -> dict[str, Any]:
    rd = RunDir(run_dir)
    st = rd.status()
    try:
        cfg = yaml.safe_load((rd.path / "config.yaml").read_text(encoding="utf-8")) or {}
    except OSError:
        cfg = {}
    task = model = None
    started = finished = None
    for e in rd.read_events():
        if isinstance(e, RunStarted):
            task, started = e.task, e.time
        elif isinstance(e, RunFinished):
            finished = e.time
    best = read_json(rd.checkpoints_dir / "best.json") or {}
    metric = best.get("metric") or cfg.get("metric_for_best")
    best_value = best.get("value")
    if best_value is None and st.get("metrics"):
        best_value = st["metrics"].get(metric)
    model = cfg.get("model")
    if isinstance(model, str) and ("/" in model or "\\" in model) and Path(model).exists():
        model = Path(model).name
    end = finished or st.get("finished") or st.get("heartbeat")
    return {
        "name": rd.name,
        "task": task or cfg.get("task"),
        "model": model,
        "status": live_state or st.get("state"),
        **{k: cfg.get(k) for k in KEY_PARAMS},
        "metric": metric,
        "best": best_value,
        "duration_s": round(end - (started or st.get("started") or end), 1) if end else None,
        "steps": st.get("step"),
        "where": where,
        "dir": str(rd.path),
    }


def runs_table(include_dead: bool = True):
    """DataFrame of runs: this kernel's and those of the run index (other processes), one row each."""
    import pandas as pd

    from . import api

    rows, seen = [], set()
    for r in api.all_runs():
        seen.add(str(r.dir))
        rows.append(_row(r.dir, "this kernel", r.status))
    for r in list_runs(include_dead=include_dead):
        if r["run_dir"] in seen:
            continue
        seen.add(r["run_dir"])
        rows.append(_row(Path(r["run_dir"]), f"pid {r.get('pid')}", r.get("state")))
    cols = ["name", "task", "model", "status", *KEY_PARAMS, "metric", "best", "duration_s", "steps", "where", "dir"]
    return pd.DataFrame(rows, columns=cols)
