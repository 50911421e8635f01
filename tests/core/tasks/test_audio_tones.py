"""Audio classification on synthetic tones (no espeak-ng needed): a stopped run resumed in a fresh process repeats an
uninterrupted one exactly, and the dry run's activation estimate follows the clip length and the trained layers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from media_fixtures import run_py, tiny_wav2vec2_dir
from metrics_log import losses_by_step

from nb_finetune import finetune

TONES = {"low": 330.0, "mid": 660.0, "high": 1320.0}


def tone_folder(root: Path, per_class: int = 6, seconds: float = 0.4, rate: int = 16000) -> Path:
    """One sub-folder per pitch, one wav per clip: a sine with a random phase, loudness and a little noise."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    for name, hz in TONES.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            x = rng.uniform(0.3, 0.8) * np.sin(2 * np.pi * hz * t + rng.uniform(0, 2 * np.pi))
            x = x + 0.02 * rng.standard_normal(len(t))
            sf.write(root / name / f"{i:02d}.wav", x.astype(np.float32), rate)
    return root


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    return tone_folder(tmp_path_factory.mktemp("tones") / "train")


@pytest.fixture(scope="module")
def w2v(tmp_path_factory):
    return tiny_wav2vec2_dir(tmp_path_factory.mktemp("w2v"))


def test_stop_and_resume_in_a_fresh_process_repeats_an_uninterrupted_audio_run(w2v, tones, tmp_path):
    """Control: run "a" trains uninterrupted; "b" is stopped at its 7th micro-batch and resumed in another process.
    wav2vec2 in training mode draws dropout from torch and its SpecAugment time masks from numpy."""
    cfg = {
        "model": w2v,
        "data": {"train": str(tones), "eval_split": 0.25},
        "epochs": 3,
        "batch_size": 3,
        "grad_accum": 2,
        "lr": 3e-3,
        "seed": 5,
        "log_every": 1,
        "precision": "fp32",
        "save_every": None,
        "output_dir": str(tmp_path / "runs"),
    }
    env = {"NB_FT_CFG": json.dumps(cfg)}
    run_py(
        """
        import json, os
        from nb_finetune import finetune
        from nb_finetune.core.events import RunStarted
        cfg = json.loads(os.environ["NB_FT_CFG"])
        run = finetune(cfg, name="a", wait=True)
        assert run.status == "finished" and run.task.name == "audio-classification", (run.status, run.error)
        calls, holder = {"n": 0}, {}
        class Hook:
            def on_event(self, e):
                if isinstance(e, RunStarted):
                    def fwd(mod, args, out):
                        if mod.training:
                            calls["n"] += 1
                            if calls["n"] == 7:
                                holder["run"].stop()
                    holder["run"].model.register_forward_hook(fwd)
        run = finetune(cfg, name="b", callbacks=[Hook()])
        holder["run"] = run
        run.wait()
        assert (run.status, run.reason) == ("stopped", "user"), (run.status, run.error)
        assert 0 < run.step < 9, run.step  # mid-run (3 epochs of 3 steps)
        """,
        env,
    )
    run_py(
        """
        import json, os
        from nb_finetune import finetune
        run = finetune(json.loads(os.environ["NB_FT_CFG"]), name="b", resume_from="last", wait=True)
        assert run.status == "finished", run.error
        """,
        env,
    )
    runs = tmp_path / "runs"
    a, b = losses_by_step(runs / "a"), losses_by_step(runs / "b")
    assert len(a) > 3 and sorted(a) == sorted(b)
    assert [b[s] for s in sorted(b)] == [a[s] for s in sorted(a)]  # exactly equal, not approximately


def test_the_dry_run_counts_audio_activations_by_clip_length_and_freezing(w2v, tones, tmp_path):
    def activations(**over):
        cfg = {
            "model": w2v,
            "data": {"train": str(tones), "eval_split": 0.25},
            "batch_size": 4,
            "precision": "fp32",
            "output_dir": str(tmp_path / "runs"),
            **over,
        }
        report = finetune(cfg, dry_run=True)
        return report.memory_bytes["activations"], str(report)

    full, text = activations()
    assert full > 0 and "activations ~" in text
    half, _ = activations(max_duration=0.2)  # clips cropped to half their length (0.4 s)
    assert 0.35 * full < half < 0.65 * full
    assert activations(batch_size=8)[0] == pytest.approx(2 * full, abs=2)
    assert activations(freeze=["embeddings", "blocks.0"])[0] < full
