"""Audio classification on the task seam, on speech synthesised here with espeak-ng: clips at another rate are
resampled (length checked), `max_duration` crops or drops (counted), unreadable files are skipped, a tiny wav2vec2
trains (loss goes down), a tiny AST runs, predict's shape, and throughput counted in seconds of audio."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from media_fixtures import spoken_words, tiny_ast_dir, tiny_wav2vec2_dir
from metrics_log import losses_by_step

from nb_finetune import finetune
from nb_finetune.core.config import FinetuneConfig
from nb_finetune.core.events import RunStarted
from nb_finetune.core.tasks.base import resolve_task
from nb_finetune.errors import DataError

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs Debian's espeak-ng")


@pytest.fixture(scope="module")
def words(tmp_path_factory):
    return spoken_words(tmp_path_factory.mktemp("speech") / "words")


@pytest.fixture(scope="module")
def w2v(tmp_path_factory):
    return tiny_wav2vec2_dir(tmp_path_factory.mktemp("w2v"))


def audio_task(model, train, **over):
    cfg = FinetuneConfig.from_dict({"model": model, "data": {"train": train, "eval_split": 0.25}, **over})
    task = resolve_task(cfg)
    task.preflight()
    return task


def test_clips_at_another_rate_are_resampled_to_the_extractors_rate(w2v, words):
    task = audio_task(w2v, str(words))
    assert task.name == "audio-classification" and task.rate == 16000
    assert task.label_names == ["no", "stop", "yes"]
    train, _ = task.build_data()
    first = task.train[0]["audio"]
    n_in = sf.info(first).frames
    assert sf.info(first).samplerate == 22050  # espeak-ng's own rate (control: a 16 kHz file is not resampled)
    assert abs(len(train[0]["input_values"]) - round(n_in * 16000 / 22050)) <= 1
    assert any(line.startswith("resampled 24 clip(s) to 16000 Hz") for line in task.describe())
    x, rate = sf.read(first, dtype="float32")
    arr = audio_task(
        w2v,
        {"audio": [x[:16000]] * 4, "label": ["a", "b"] * 2},
        data={"train": {"audio": [x[:16000]] * 4, "label": ["a", "b"] * 2}, "sampling_rate": 16000, "eval_split": 0},
    )
    assert arr.counts["resampled"] == 0 and len(arr.build_data()[0][0]["input_values"]) == 16000
    import datasets

    paths = [str(p) for p in sorted(Path(words).rglob("*.wav"))]
    ds = datasets.Dataset.from_dict({"speech": paths, "word": [Path(p).parent.name for p in paths]})
    feat = audio_task(
        w2v,
        ds.cast_column("speech", datasets.Audio()),
        data={"train": ds.cast_column("speech", datasets.Audio()), "label": "word"},
    )  # an Audio feature, decoded here by soundfile
    assert feat.audio_col == "speech" and feat.counts["resampled"] == 24
    with pytest.raises(DataError, match="sampling_rate"):
        audio_task(w2v, {"audio": [x[:100]] * 4, "label": ["a", "b"] * 2})


def test_max_duration_crops_or_drops_and_bad_files_are_skipped(w2v, words, tmp_path):
    root = tmp_path / "w"
    shutil.copytree(words, root)
    (root / "yes" / "broken.wav").write_bytes(b"RIFF not really")
    lengths = [sf.info(p).duration for p in root.rglob("*.wav") if p.name != "broken.wav"]
    cut = float(np.median(lengths))
    crop = audio_task(w2v, str(root), max_duration=cut, data={"train": str(root), "eval_split": 0})
    train, _ = crop.build_data()
    assert max(len(train[i]["input_values"]) for i in range(len(train))) <= int(cut * 16000)
    longer = sum(d > cut + 1e-3 for d in lengths)
    assert crop.counts["cropped"] == longer and len(train) == 24
    assert any("skipped 1 unreadable audio file(s)" in line and "broken.wav" in line for line in crop.describe())
    drop = audio_task(w2v, str(root), max_duration=cut, long_audio="drop", data={"train": str(root), "eval_split": 0})
    assert drop.num_train == 24 - longer
    assert any(line.startswith(f"dropped {longer} audio example(s)") for line in drop.describe())
    with pytest.raises(DataError, match=r"broken.wav\) cannot be read"):
        audio_task(w2v, str(root), on_bad_example="error")


def test_a_tiny_wav2vec2_learns_spoken_words_and_predicts_top_k(w2v, words, tmp_path):
    events = []

    class Keep:
        def on_event(self, e):
            if isinstance(e, RunStarted):
                events.append(e)

    cfg = {
        "model": w2v,
        "data": {"train": str(words), "eval_split": 0.25},
        "epochs": 6,
        "batch_size": 6,
        "lr": 3e-3,
        "log_every": 1,
        "precision": "fp32",
        "output_dir": str(tmp_path / "runs"),
    }
    run = finetune(cfg, wait=True, callbacks=[Keep()])
    assert run.status == "finished", run.error
    assert events[0].throughput_unit == "seconds of audio"
    losses = losses_by_step(run.run_dir.path)
    assert np.mean([losses[s] for s in sorted(losses)[-3:]]) < np.mean([losses[s] for s in sorted(losses)[:3]])
    assert {"eval_accuracy", "eval_f1"} <= set(run.metrics)
    clip = next((Path(words) / "yes").glob("*.wav"))
    one = run.predict(str(clip), top_k=2)
    assert len(one) == 2 and set(one[0]) == {"label", "score"} and one[0]["score"] >= one[1]["score"]
    x, rate = sf.read(clip, dtype="float32")
    two = run.predict([x, x], sampling_rate=rate)
    assert len(two) == 2 and len(two[0]) == 3
    lm = run.task.layer_map(run.model)
    assert lm.num_blocks == 2 and lm.names[0] == "embeddings"  # the conv feature encoder is the embeddings group


def test_a_tiny_ast_trains_on_its_spectrogram_features(words, tmp_path):
    ast = tiny_ast_dir(tmp_path / "ast")
    cfg = {
        "model": ast,
        "data": {"train": str(words), "eval_split": 0.25},
        "max_steps": 2,
        "batch_size": 6,
        "precision": "fp32",
        "output_dir": str(tmp_path / "runs"),
    }
    run = finetune(cfg, wait=True)
    assert run.status == "finished", run.error
    assert run.task.extractor.__class__.__name__ == "ASTFeatureExtractor"
    assert "eval_accuracy" in run.metrics


def test_cli_runs_audio_classification(w2v, words, tmp_path):
    import os
    import subprocess
    import sys

    import yaml

    root = Path(__file__).resolve().parents[3]
    cfg = {
        "model": w2v,
        "data": {"train": str(words), "eval_split": 0.25},
        "max_steps": 2,
        "eval_every": 2,
        "batch_size": 6,
        "save_every": None,
        "output_dir": str(tmp_path / "runs"),
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    out = subprocess.run(
        [sys.executable, "-m", "nb_finetune.cli", "run", str(tmp_path / "cfg.yaml"), "--name", "cli"],
        env={**os.environ, "PYTHONPATH": str(root), "NB_FINETUNE_INDEX_DIR": str(tmp_path / "index")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "task: audio-classification (auto: audio in 'audio')" in out.stdout, out.stdout
    assert " accuracy " in out.stdout and "seconds of audio/s" in out.stdout, out.stdout
