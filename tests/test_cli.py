"""The CLI in a real subprocess: a foreground run, steered through control.jsonl by a second command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _env(tmp_path):
    return {**os.environ, "PYTHONPATH": str(ROOT), "NB_FINETUNE_INDEX_DIR": str(tmp_path / "index")}


def _has_logged(run_dir: Path) -> bool:
    p = run_dir / "metrics.jsonl"
    return p.exists() and '"event": "log"' in p.read_text()


def test_cli_run_then_stop_from_another_process(tmp_path, tiny_model_dir, tiny_df):
    csv = tmp_path / "train.csv"
    tiny_df.to_csv(csv, index=False)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "model": tiny_model_dir,
                "data": {"train": str(csv)},
                "max_steps": 1000000,
                "log_every": 5,
                "save_every": None,
                "output_dir": str(tmp_path / "runs"),
            }
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "nb_finetune.cli", "run", str(cfg), "--name", "cli"],
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run_dir = tmp_path / "runs" / "cli"
    deadline = time.monotonic() + 120
    while not _has_logged(run_dir):
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    listed = subprocess.run(
        [sys.executable, "-m", "nb_finetune.cli", "runs"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "cli" in listed.stdout and "training" in listed.stdout
    out = subprocess.run(
        [sys.executable, "-m", "nb_finetune.cli", "stop", str(run_dir)],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "command 1 (stop)" in out.stdout
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-2000:]
    assert "stopped (user)" in stdout and "checkpoint (stop)" in stdout
    st = json.loads((run_dir / "status.json").read_text())
    assert st["state"] == "stopped" and st["last_command"] == 1


def test_cli_bad_config_is_one_clear_line(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model: x\nlrr: 1\n")
    out = subprocess.run(
        [sys.executable, "-m", "nb_finetune.cli", "run", str(cfg)],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == "error: Invalid finetune config: line 2 (lrr): unknown key 'lrr'. Did you mean 'lr'?"
