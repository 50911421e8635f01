"""Audio classification on synthetic tones (no espeak-ng needed): a stopped run resumed in a fresh process repeats an
uninterrupted one exactly (mid-epoch and across an epoch boundary), the dry run's activation estimate follows the
clip length and the trained layers, pre-flight reads headers only (clips decode when read), and a file that fails only
when decoded is skipped and counted (run.log, progress line) or stops the run naming itself, with or without
DataLoader workers."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fresh_process import run_py
from media_fixtures import tiny_wav2vec2_dir
from metrics_log import losses_by_step

from nb_finetune import finetune
from nb_finetune.core.config import FinetuneConfig
from nb_finetune.core.tasks.base import resolve_task


def audio_task(model, train, **over):
    cfg = FinetuneConfig.from_dict({"model": model, "data": {"train": train, "eval_split": 0.25}, **over})
    task = resolve_task(cfg)
    task.preflight()
    return task


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
    """Control: run "a" trains uninterrupted (3 epochs of 5 micro-batches, 2 per step: 3 steps). "mid" is stopped at
    its 3rd training forward (its checkpoint resumes at epoch 0, micro-batch 2: mid-epoch), "edge" at its 6th, the
    first of epoch 1 (the stop lands mid-accumulation: the checkpoint is step 3, resuming at epoch 1, micro-batch 0);
    both are resumed in another process and must log the same losses as "a", exactly. wav2vec2 in training mode draws dropout from torch and its SpecAugment
    time masks from numpy's global generator, which the task seeds from the run's torch stream."""
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
        from fresh_process import StopAtForward
        cfg = json.loads(os.environ["NB_FT_CFG"])
        run = finetune(cfg, name="a", wait=True)
        assert run.status == "finished" and run.task.name == "audio-classification", (run.status, run.error)
        for name, stop_at, want in (("mid", 3, 1), ("edge", 6, 3)):
            stop = StopAtForward(stop_at)
            run = stop.attach(finetune(cfg, name=name, callbacks=[stop], start=False)).start()
            run.wait()
            assert (run.status, run.reason, run.step) == ("stopped", "user", want), (run.status, run.step, run.error)
        """,
        env,
    )
    run_py(
        """
        import json, os
        from nb_finetune import finetune
        for name in ("mid", "edge"):
            run = finetune(json.loads(os.environ["NB_FT_CFG"]), name=name, resume_from="last", wait=True)
            assert run.status == "finished", run.error
        """,
        env,
    )
    runs = tmp_path / "runs"
    a = losses_by_step(runs / "a")
    assert len(a) == 9
    for name, at, step in (("mid", (0, 2), 1), ("edge", (1, 0), 3)):
        ck = json.loads((runs / name / "checkpoints" / f"step-{step:06d}" / "state.json").read_text())  # the stop's
        assert (ck["epoch"], ck["batch"]) == at
        b = losses_by_step(runs / name)
        assert [b[s] for s in sorted(b)] == [a[s] for s in sorted(a)], name  # exactly equal, not approximately


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


def _with_damaged_flac(root: Path) -> Path:
    """The tones, plus one FLAC cut in half: its header (rate, frames) reads, its samples do not decode."""
    shutil.copytree(tone_folder(root.parent / "src"), root)
    x, rate = sf.read(root / "mid" / "00.wav", dtype="float32")
    sf.write(root / "mid" / "cut.flac", x, rate)
    data = (root / "mid" / "cut.flac").read_bytes()
    (root / "mid" / "cut.flac").write_bytes(data[: len(data) // 2])
    return root


def test_preflight_reads_audio_headers_and_clips_are_decoded_when_read(w2v, tmp_path, monkeypatch):
    from nb_finetune.core.tasks import audio_data

    root = tone_folder(tmp_path / "train")
    sf.write(root / "low" / "long.wav", np.zeros(16000, np.float32), 16000)  # 1 s, the others 0.4 s
    sf.write(root / "high" / "slow.wav", np.full(16000, 0.1, np.float32), 8000)  # 2 s at 8 kHz
    calls = {"read": 0}
    read = audio_data._sf_read

    def counting_read(src):
        calls["read"] += 1
        return read(src)

    monkeypatch.setattr(audio_data, "_sf_read", counting_read)
    over = {"data": {"train": str(root), "eval_split": 0}}
    audio_task(w2v, str(root), **over)
    assert calls["read"] == 20  # control: by default pre-flight reads the first 32 files of a split through
    calls["read"] = 0
    monkeypatch.setattr(audio_data, "VERIFY_SAMPLE", 0)
    task = audio_task(w2v, str(root), max_duration=0.5, long_audio="drop", **over)
    train, _ = task.build_data()
    assert calls["read"] == 0  # 20 headers read, not one clip decoded
    assert task.num_train == 18 and any(line.startswith("dropped 2 audio example(s)") for line in task.describe())
    task = audio_task(w2v, str(root), max_duration=0.5, **over)
    train, _ = task.build_data()
    slow = next(i for i, f in enumerate(task.train["audio"]) if f.endswith("slow.wav"))
    assert calls["read"] == 0 and task.counts == {"resampled": 1, "cropped": 2}
    assert train.lengths[slow] == 8000 and task.longest_samples() == 8000  # from the header: 2 s at 16 kHz, cropped
    x = train[slow]["input_values"]
    assert calls["read"] == 1 and len(x) == 8000  # reading the example decodes it: resampled, then cropped
    direct, rate = read(root / "high" / "slow.wav")
    assert np.array_equal(x, audio_data.resample(direct, rate, 16000)[:8000])


def test_an_audio_file_failing_only_when_decoded_is_skipped_and_counted_or_names_itself(w2v, tmp_path, monkeypatch):
    from nb_finetune.core.events import Logged
    from nb_finetune.core.tasks import audio_data
    from nb_finetune.ui.progress import ProgressView

    root = _with_damaged_flac(tmp_path / "train")
    over = {"data": {"train": str(root), "eval_split": 0}}
    assert audio_task(w2v, str(root), **over).num_train == 18  # control: the verified sample finds it in pre-flight
    monkeypatch.setattr(audio_data, "VERIFY_SAMPLE", 0)  # headers only: it passes pre-flight
    task = audio_task(w2v, str(root), **over)
    assert task.num_train == 19
    bad = next(i for i, f in enumerate(task.train["audio"]) if f.endswith("cut.flac"))
    train, _ = task.build_data()
    item = train[bad]
    assert item["unreadable"] and train.num_unreadable == 1
    collate = task.collator()
    assert collate([train[bad - 1], item])["idx"] == [bad - 1]  # left out of its batch
    assert collate([item])["idx"] == [(bad + 1) % 19]  # a batch of none readable takes the next readable clip
    assert "skipped 1 more unreadable audio file(s) while reading" in task.describe()[-1]

    # whole runs, the file read in a DataLoader worker process at each of 2 epochs: counted once, in run.log and in
    # the progress line (control: a progress line with nothing skipped says nothing of it)
    quiet = ProgressView("tones")
    quiet.on_event(Logged(step=1, epoch=0.1, loss=1.0, lr=1e-3, grad_norm=None, samples_per_s=1, tokens_per_s=1))
    assert "unreadable" not in quiet.text()
    logged, view = [], ProgressView("tones")

    class Keep:
        def on_event(self, e):
            view.on_event(e)
            if isinstance(e, Logged):
                logged.append(e.unreadable)

    cfg = {
        "model": w2v,
        "data": {"train": str(root)},
        "epochs": 2,
        "batch_size": 4,
        "log_every": 1,
        "num_workers": 1,
        "save_every": None,
        "output_dir": str(tmp_path / "runs"),
    }
    run = finetune(cfg, wait=True, callbacks=[Keep()])
    assert run.status == "finished", run.error
    assert logged[-1] == 1 and set(logged) <= {0, 1}
    assert " | 1 unreadable file skipped" in view.text(), view.text()
    log = (run.run_dir.path / "run.log").read_text()
    assert log.count("(cut.flac) while reading") == 1, log
    assert "1 unreadable audio file(s) found while reading so far" in log

    # on_bad_example: error names the row and the file, the same message with and without worker processes
    errors = {}
    for workers in (0, 1):
        run = finetune({**cfg, "num_workers": workers, "on_bad_example": "error"}, wait=True)
        assert run.status == "failed"
        errors[workers] = run.error
    assert re.fullmatch(r"data.train: row \d+ \(cut.flac\) cannot be read: .*on_bad_example: skip.*", errors[0])
    assert errors[1] == errors[0], errors  # control: torch's own text starts "Caught DataError in DataLoader worker"
