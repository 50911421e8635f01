"""Stop mid-epoch and mid-accumulation, resume in a fresh process: the losses that follow equal an
uninterrupted run's exactly (fp32, fixed seed, dropout on, grad_accum 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from metrics_log import losses_by_step

ROOT = Path(__file__).resolve().parents[2]


def run_py(code: str, env_extra: dict) -> None:
    env = {**os.environ, **env_extra, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]


def test_resume_in_fresh_process_matches_uninterrupted(tmp_path, tiny_model_dir, tiny_df):
    csv = tmp_path / "train.csv"
    tiny_df.to_csv(csv, index=False)
    cfg = {
        "model": tiny_model_dir,
        "data": {"train": str(csv), "eval_split": 0.2},
        "epochs": 3,
        "batch_size": 8,
        "grad_accum": 2,
        "lr": 1e-3,
        "dropout": 0.1,
        "precision": "fp32",
        "seed": 7,
        "log_every": 1,
        "save_every": None,
        "output_dir": str(tmp_path / "runs"),
    }
    env = {"NB_FT_CFG": json.dumps(cfg)}
    # A: uninterrupted
    run_py(
        """
        import json, os
        from nb_finetune import finetune
        run = finetune(json.loads(os.environ["NB_FT_CFG"]), name="a", wait=True)
        assert run.status == "finished", run.error
    """,
        env,
    )
    # B: stopped in the 23rd training forward pass: mid-accumulation (odd count) and mid-epoch (20 batches per epoch)
    run_py(
        """
        import json, os
        from nb_finetune import finetune
        from nb_finetune.core.events import RunStarted
        calls = {"n": 0}
        holder = {}
        class Hook:
            def on_event(self, e):
                if isinstance(e, RunStarted):
                    def fwd(mod, args, out):
                        if not mod.training:
                            return  # evaluation passes do not count
                        calls["n"] += 1
                        if calls["n"] == 23:
                            holder["run"].stop()
                    holder["run"].model.register_forward_hook(fwd)
        run = finetune(json.loads(os.environ["NB_FT_CFG"]), name="b", callbacks=[Hook()])
        holder["run"] = run
        run.wait()
        assert (run.status, run.reason) == ("stopped", "user"), (run.status, run.error)
        assert run.step == 11, run.step   # 22 forwards = 11 steps; the 23rd micro-batch's gradient is discarded
    """,
        env,
    )
    runs = tmp_path / "runs"
    b_steps_before = max(losses_by_step(runs / "b"))
    assert b_steps_before == 11
    state = json.loads((runs / "b" / "checkpoints" / "step-000011" / "state.json").read_text())
    assert (state["epoch"], state["batch"]) == (1, 2)  # mid-epoch, at the last optimizer step
    # B resumed in a fresh process
    run_py(
        """
        import json, os
        from nb_finetune import finetune
        run = finetune(json.loads(os.environ["NB_FT_CFG"]), name="b", resume_from="last", wait=True)
        assert run.status == "finished", run.error
        assert run.dir.name == "b"
    """,
        env,
    )
    a, b = losses_by_step(runs / "a"), losses_by_step(runs / "b")
    assert len(a) > 20 and sorted(a) == sorted(b)
    assert [b[s] for s in sorted(b)] == [a[s] for s in sorted(a)]  # exactly equal, not approximately
