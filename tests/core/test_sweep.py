"""Sweeps on the tiny BERT: four trials through Optuna, the third made deliberately bad (lr 1.0, queued) and pruned
by the median rule at its first evaluation; the process running the sweep is killed after trial 2 and a fresh
process (the CLI, `nb-finetune run cfg.yaml --sweep --resume`) resumes it, running trials 3-4 only; the promoted cell parses and dry-runs. Control cases: the two good
trials finish as `done` (not pruned), and trials 1-2 keep their run directories untouched by the second process.
Also: the search-space strings are parsed without evaluation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nb_finetune.core.sweep_space import parse_dist
from nb_finetune.errors import ConfigError

SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys
    from nb_finetune.sweeps import sweep
    cfg, mode = json.loads(sys.argv[1]), sys.argv[2]
    ran = []

    def ended(s, row):
        ran.append(row["run"])
        print("TRIAL", json.dumps(row), flush=True)
        if mode == "first" and len(ran) == 2:
            os.kill(os.getpid(), signal.SIGKILL)  # killed between trials, as a dead kernel would be

    enqueue = [{"lr": 3e-3}, {"lr": 3e-3}, {"lr": 1.0}]
    s = sweep(cfg, enqueue=enqueue, on_trial_end=ended)
    """
)


def _run(args, env):
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )


def test_sweep_prunes_survives_a_kill_and_promotes(tiny_model_dir, tiny_df, tmp_path):
    optuna = pytest.importorskip("optuna")
    data = tmp_path / "train.csv"
    tiny_df.to_csv(data, index=False)
    out = tmp_path / "runs"
    cfg = {
        "name": "sw",
        "model": tiny_model_dir,
        "data": {"train": str(data), "eval_split": 0.25},
        "max_steps": 4,
        "eval_every": 2,
        "save_every": None,
        "batch_size": 16,
        "warmup": 0,
        "output_dir": str(out),
        "sweep": {"lr": "loguniform(1e-4, 1.0)", "n_trials": 4, "sampler": "random", "pruner": "median", "seed": 0},
    }
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    first = _run([json.dumps(cfg), "first"], env)
    assert first.returncode == -9, first.stderr[-2000:]
    rows1 = [json.loads(line[6:]) for line in first.stdout.splitlines() if line.startswith("TRIAL ")]
    assert [r["run"] for r in rows1] == ["trial-000", "trial-001"]
    assert [r["state"] for r in rows1] == ["done", "done"]
    stamps = {p: p.stat().st_mtime_ns for p in (out / "sw").glob("trial-00[01]/metrics.jsonl")}
    assert len(stamps) == 2

    # the second process is the CLI: `nb-finetune run cfg.yaml --sweep --resume`
    import yaml

    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(cfg))
    second = subprocess.run(
        [sys.executable, "-m", "nb_finetune.cli", "run", str(tmp_path / "sweep.yaml"), "--sweep", "--resume"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    lines = [ln for ln in second.stdout.splitlines() if ln.startswith("trial-")]
    assert [ln.split(":")[0] for ln in lines] == ["trial-002", "trial-003"]  # 1-2 not repeated
    assert lines[0].startswith("trial-002: pruned (lr=1.0)")
    assert "<Sweep 'sw' finished 4/4 trials" in second.stdout
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert sorted(p.name for p in (out / "sw").iterdir() if p.is_dir()) == [f"trial-00{i}" for i in range(4)]

    study = optuna.load_study(study_name="nb_finetune-sw", storage=f"sqlite:///{out / 'sw' / 'sweep.db'}")
    states = [t.state.name for t in study.trials]
    assert states[:3] == ["COMPLETE", "COMPLETE", "PRUNED"] and len(states) == 4
    assert (out / "sw" / "trial-002" / "checkpoints").is_dir()  # the pruned trial stopped with a checkpoint
    assert any((out / "sw" / "trial-002" / "checkpoints").glob("step-*"))

    assert len(study.trials[2].intermediate_values) == 1  # the bad trial stopped at its first evaluation
    cell = second.stdout.split("best trial as a %%finetune cell:\n", 1)[1]
    head, body = cell.split("\n", 1)
    assert head == "%%finetune sw_best" and "\nsweep:" not in "\n" + body
    from nb_finetune import finetune
    from nb_finetune.core.config import FinetuneConfig

    promoted = FinetuneConfig.from_cell(body)
    best = min((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert promoted.lr == pytest.approx(best.params["lr"]) and promoted.max_steps == 4
    report = finetune(promoted.replace(name="sw_best"), dry_run=True)
    assert report.total_steps == 4


def test_distribution_strings_are_parsed_not_evaluated():
    assert parse_dist("lr", "loguniform(1e-5, 1e-3)").args == (1e-5, 1e-3)
    assert parse_dist("freeze", "choice(0, 2, 'bottom 4')").args == (0, 2, "bottom 4")
    assert parse_dist("bs", [16, 32]).kind == "choice"
    for bad in ("__import__('os').system('x')", "uniform(1)", "loguniform(-1, 1)", "choice()", "int(1.5, 3)"):
        with pytest.raises(ValueError):
            parse_dist("lr", bad)
    from nb_finetune.core.config import FinetuneConfig

    with pytest.raises(ConfigError, match="sweep.*lrr: not a config key.*Did you mean 'lr'"):
        FinetuneConfig.from_dict({"sweep": {"lrr": "uniform(0, 1)"}})
