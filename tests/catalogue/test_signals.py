"""The CLI in a real subprocess under the signals a runtime sends: SIGTERM (stop with a checkpoint, exit cleanly)
and SIGKILL (nothing to catch: resume from the last checkpoint loses at most one interval and repeats an
uninterrupted run exactly)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from metrics_log import losses_by_step

from nb_finetune.core.runs import list_runs, read_json

ROOT = Path(__file__).resolve().parents[2]


def _cfg(tmp_path, tiny_df, **kw) -> Path:
    csv = tmp_path / "train.csv"
    tiny_df.head(96).to_csv(csv, index=False)
    cfg = {
        "data": {"train": str(csv), "eval_split": 0},
        "batch_size": 8,
        "lr": 1e-3,
        "dropout": 0.1,
        "precision": "fp32",
        "seed": 5,
        "log_every": 1,
        "output_dir": str(tmp_path / "runs"),
        **kw,
    }
    path = tmp_path / f"cfg-{len(list(tmp_path.glob('cfg-*')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cli(cfg: Path, name: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "nb_finetune.cli", "run", str(cfg), "--name", name, *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _until(proc, cond, what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, f"exited before {what}: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.05)


def _steps_done(run_dir: Path) -> list[int]:
    return sorted(losses_by_step(run_dir)) if (run_dir / "metrics.jsonl").exists() else []


def _checkpoint_steps(run_dir: Path) -> list[int]:
    ck = run_dir / "checkpoints"
    return sorted(int(p.name[5:]) for p in ck.glob("step-*") if (p / "state.json").is_file()) if ck.is_dir() else []


def _check_sigterm(proc, run_dir: Path) -> None:
    """SIGTERM mid-run: exit code 0, status stopped (SIGTERM), a checkpoint of the last step. Control: the run was still
    training when the signal came (it was set to a million steps)."""
    _until(proc, lambda: len(_steps_done(run_dir)) >= 3, "three logged steps")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "SIGTERM: stopping run 'term'" in err and "Traceback" not in err
    st = read_json(run_dir / "status.json")
    assert (st["state"], st["reason"]) == ("stopped", "SIGTERM") and st["step"] < 1_000_000
    assert _checkpoint_steps(run_dir)[-1] == st["step"]


def test_sigterm_and_kill_9_in_the_cli(tmp_path, tiny_model_dir, tiny_df):
    """Four CLI processes, three at once (their start-up, most of the cost, overlaps): an uninterrupted run, one
    killed with SIGKILL after its step-8 checkpoint and then resumed, and one stopped with SIGTERM.

    SIGKILL: the index shows the run dead at once; `resume_from: last` (the same command, a fresh process) continues
    from the last checkpoint, having lost fewer than `save_every` steps, and every loss after it equals the
    uninterrupted run's exactly (fp32, fixed seed). Control: the kill did lose logged steps."""
    every = 4
    cfg = _cfg(tmp_path, tiny_df, model=tiny_model_dir, max_steps=48, save_every=every, save_total_limit=None)
    term_cfg = _cfg(tmp_path, tiny_df, model=tiny_model_dir, max_steps=1_000_000, save_every=None)
    base, killed, term = _cli(cfg, "base"), _cli(cfg, "k"), _cli(term_cfg, "term")
    run_dir = tmp_path / "runs" / "k"
    _until(killed, lambda: _checkpoint_steps(run_dir) and _checkpoint_steps(run_dir)[-1] >= 8, "a step-8 checkpoint")
    _until(killed, lambda: _steps_done(run_dir)[-1] > _checkpoint_steps(run_dir)[-1], "a step past it", 60)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    t_dead = time.monotonic()
    row = next(r for r in list_runs() if r["name"] == "k")
    assert row["state"] == "dead" and not row["alive"] and time.monotonic() - t_dead < 5
    last_ck, last_logged = _checkpoint_steps(run_dir)[-1], _steps_done(run_dir)[-1]
    assert 0 < last_logged - last_ck < every, (last_ck, last_logged)  # lost: at most one interval

    resumed = _cli(cfg, "k", "--set", "resume_from=last")
    _check_sigterm(term, tmp_path / "runs" / "term")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    _, err = base.communicate(timeout=300)
    assert base.returncode == 0, err[-2000:]
    a, b = losses_by_step(tmp_path / "runs" / "base"), losses_by_step(run_dir)
    assert sorted(a) == sorted(b) == list(range(1, 49))
    assert [b[s] for s in range(last_ck + 1, 49)] == [a[s] for s in range(last_ck + 1, 49)]
    assert read_json(run_dir / "status.json")["state"] == "finished"
