"""`nb-finetune`: the same runs from a shell.

nb-finetune run cfg.yaml [--set lr=1e-5 ...] [--name NAME]    train in the foreground, text progress
nb-finetune stop|pause|resume|checkpoint RUN_DIR               steer a run of any process via control.jsonl
nb-finetune set RUN_DIR lr=1e-5 [...]                          change live fields
nb-finetune runs                                               runs on this machine (from the run index)
nb-finetune schema [--json]                                    the config reference / JSON schema
"""

from __future__ import annotations

import argparse
import json
import sys

from .core.controls import SIMPLE_COMMANDS
from .errors import FinetuneError


class TextProgress:
    """Prints one line per log point and per evaluation."""

    def __init__(self, out=sys.stdout):
        self.out = out
        self.unit = "tokens"  # what tokens_per_s counts (RunStarted.throughput_unit)
        self.nonfinite = 0  # steps with a NaN / Inf loss so far

    def on_event(self, e) -> None:
        k = e.kind
        if k == "RunStarted":
            self.unit = e.throughput_unit
            print(
                f"{e.name} ({e.task_title or e.task}): {e.num_train:,} train / {e.num_eval:,} eval examples, "
                f"{e.total_steps:,} steps, {e.params_trainable:,} of {e.params_total:,} parameters trainable, "
                f"{e.device}, {e.precision}",
                file=self.out,
                flush=True,
            )
            for line in e.task_detail:
                print(f"  {line}", file=self.out, flush=True)
        elif k == "Logged":
            speed = f"{e.samples_per_s:7.1f} samples/s"
            if self.unit != "samples" and e.tokens_per_s:
                speed += f"  {e.tokens_per_s:9,.0f} {self.unit}/s"
            self.nonfinite += e.nonfinite_steps
            skipped = f"  {self.nonfinite} NaN/Inf steps skipped" if self.nonfinite else ""
            if e.unreadable:
                skipped += f"  {e.unreadable:,} unreadable file{'' if e.unreadable == 1 else 's'} skipped"
            print(
                f"step {e.step:>6}  epoch {e.epoch:6.2f}  loss {e.loss:.4f}  lr {e.lr:.2e}  {speed}{skipped}",
                file=self.out,
                flush=True,
            )
        elif k == "EvalEnded":
            ms = "  ".join(f"{n.removeprefix('eval_')} {v:.4f}" for n, v in e.metrics.items())
            print(f"eval at step {e.step}: {ms}{'  (best)' if e.is_best else ''}", file=self.out, flush=True)
        elif k == "ControlApplied":
            from .ui.state import change_line  # plain text helpers: no widget or plotting library

            print(change_line(e), file=self.out, flush=True)
        elif k == "CheckpointSaved":
            print(f"checkpoint ({e.reason}): {e.path}", file=self.out, flush=True)
        elif k == "RunFinished":
            print(
                f"{e.state} ({e.reason}) at step {e.step}" + (f": {e.error}" if e.error else ""),
                file=self.out,
                flush=True,
            )


def _parse_sets(items: list[str]) -> dict:
    from .magics.parsing import scalar

    out = {}
    for it in items:
        if "=" not in it:
            raise FinetuneError(f"{it!r} is not key=value")
        k, v = it.split("=", 1)
        out[k.strip()] = scalar(v.strip())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nb-finetune", description="Fine-tune pretrained models; steer running jobs.")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train from a YAML config in the foreground")
    r.add_argument("config")
    r.add_argument("--name")
    r.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config fields")
    r.add_argument("--dry-run", action="store_true")
    r.add_argument("--overwrite", action="store_true")
    r.add_argument("--sweep", action="store_true", help="run the config's sweep: block as Optuna trials")
    r.add_argument("--resume", action="store_true", help="with --sweep: continue the sweep of this name")
    for c in SIMPLE_COMMANDS:
        s = sub.add_parser(c, help=f"{c} a run (any process) through its control file")
        s.add_argument("run_dir")
    s = sub.add_parser("set", help="change live fields of a running run")
    s.add_argument("run_dir")
    s.add_argument("values", nargs="+", metavar="KEY=VALUE")
    sub.add_parser("runs", help="list runs on this machine")
    sc = sub.add_parser("schema", help="print the config reference")
    sc.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        return _dispatch(args)
    except FinetuneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _stop_on_sigterm(run) -> None:
    """SIGTERM (a container or a Colab runtime going away) asks the run to stop with a checkpoint, like a first
    Ctrl-C; the process then exits cleanly once the checkpoint is written. The CLI owns the main thread, so the
    handler lives here: the core only exposes the stop request."""
    import signal

    def handler(signum, frame):
        print(f"SIGTERM: stopping run '{run.name}' after a checkpoint", file=sys.stderr, flush=True)
        run.stop(save=True, reason="SIGTERM")

    signal.signal(signal.SIGTERM, handler)


def _dispatch(args) -> int:
    from .core import runs

    if args.cmd == "run":
        from .api import finetune

        overrides = _parse_sets(args.set)
        if args.name:
            overrides["name"] = args.name
        from .core.config import FinetuneConfig

        cfg = (
            FinetuneConfig.from_yaml(args.config).replace(**overrides)
            if overrides
            else FinetuneConfig.from_yaml(args.config)
        )
        if args.dry_run:
            print(finetune(cfg, dry_run=True))
            return 0
        if args.sweep:
            return _sweep(cfg, args.resume)
        run = finetune(cfg, callbacks=[TextProgress()], overwrite=args.overwrite)
        print(f"run directory: {run.dir}", flush=True)
        _stop_on_sigterm(run)
        run.wait()  # Ctrl-C: graceful stop with a checkpoint; twice: abort
        return 0 if run.status in ("finished", "stopped") else 1
    if args.cmd in (*SIMPLE_COMMANDS, "set"):
        values = _parse_sets(args.values) if args.cmd == "set" else {}
        seq = runs.append_command(args.run_dir, args.cmd, source="cli", **values)
        print(f"command {seq} ({args.cmd}) written to {args.run_dir}/control.jsonl")
        return 0
    if args.cmd == "runs":
        rows = runs.list_runs()
        if not rows:
            print("no runs registered")
        for r in rows:
            print(f"{r.get('name', '?'):<24} {r.get('state', '?'):<10} step {r.get('step', 0):>7}  {r['run_dir']}")
        return 0
    if args.cmd == "schema":
        from .core.config import FinetuneConfig, config_reference_markdown

        print(json.dumps(FinetuneConfig.json_schema(), indent=1) if args.json else config_reference_markdown())
        return 0
    return 2


def _sweep(cfg, resume: bool) -> int:
    from .sweeps import sweep

    def ended(s, row):
        value = "-" if row["value"] is None else f"{row['value']:.6g}"
        params = ", ".join(f"{k}={v}" for k, v in row["params"].items())
        print(f"{row['run']}: {row['state']} ({params}) {s.metric}={value}", flush=True)

    s = sweep(cfg, resume=resume, on_trial_end=ended)  # Ctrl-C: the trial stops with a checkpoint, then the sweep
    print(repr(s))
    if s.best is not None:
        print("best trial as a %%finetune cell:")
        print(s.promote())
    return 0 if s.status in ("finished", "stopped") else 1


if __name__ == "__main__":
    sys.exit(main())
