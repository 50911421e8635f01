"""The Python API: queueing, early stopping, errors a newcomer meets, Run's non-blocking properties."""

from __future__ import annotations

import time

import pytest

from nb_finetune import finetune
from nb_finetune.errors import DataError, ModelError, RunStateError


def wait_for(cond, timeout=60.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.02)


def test_second_run_is_queued_until_the_first_ends(tiny_config):
    a = finetune({**tiny_config, "name": "first", "max_steps": 1_000_000})
    b = finetune({**tiny_config, "name": "second", "max_steps": 3})
    wait_for(lambda: a.step >= 2)
    assert b.status == "queued" and b.step == 0
    a.stop()
    b.wait(timeout=120)
    assert a.status == "stopped" and b.status == "finished" and b.step == 3


def test_stop_while_queued_never_trains(tiny_config):
    a = finetune({**tiny_config, "name": "blocker", "max_steps": 1_000_000})
    b = finetune({**tiny_config, "name": "never", "max_steps": 3})
    b.stop()
    a.stop()
    b.wait(timeout=60)
    assert (b.status, b.reason, b.step) == ("stopped", "user", 0)
    assert b.model is None


def test_early_stopping_restores_best(tiny_config):
    from safetensors.torch import load_file

    run = finetune(
        {
            **tiny_config,
            "eval_every": 2,
            "max_steps": 50,
            "log_every": 1,
            "early_stopping": {"metric": "eval_loss", "patience": 1, "min_delta": 100.0},
        },
        wait=True,
    )
    assert (run.status, run.reason, run.step) == ("finished", "early_stopping", 4)
    best = run.best_checkpoint
    assert best is not None and best.name == "step-000002"
    saved = load_file(str(best / "model.safetensors"))
    assert (run.model.classifier.weight.detach() == saved["classifier.weight"]).all()


def test_properties_never_block_while_training(tiny_config):
    run = finetune({**tiny_config, "max_steps": 1_000_000})
    wait_for(lambda: run.step >= 1)
    t0 = time.monotonic()
    _ = (run.status, run.history, run.metrics, run.model, run.checkpoints, run.layer_map(), repr(run))
    assert time.monotonic() - t0 < 1.0
    with pytest.raises(RunStateError, match="still training"):
        finetune({**tiny_config, "max_steps": 5})
    run.stop(save=False)
    run.wait(timeout=60)
    assert run.checkpoints == []  # stop(save=False) writes none


def test_unknown_hub_model_offline_is_one_clear_error(tiny_config):
    with pytest.raises(ModelError) as e:
        finetune({**tiny_config, "model": "bert-base-uncased"})
    msg = str(e.value)
    assert "could not load 'bert-base-uncased'" in msg and "local directory" in msg
    assert len(msg.splitlines()) == 1


def test_hub_dataset_offline_is_one_clear_error(tiny_config):
    with pytest.raises(DataError) as e:
        finetune({**tiny_config, "data": {"train": "imdb:train[:2000]"}})
    assert "data.train: could not load 'imdb:train'" in str(e.value)


def test_local_files_with_slices_and_label_inference(tiny_config, tiny_df, tmp_path):
    tiny_df.to_json(tmp_path / "train.jsonl", orient="records", lines=True)
    tiny_df.iloc[:40].to_parquet(tmp_path / "eval.parquet")
    run = finetune(
        {
            **tiny_config,
            "data": {"train": str(tmp_path / "train.jsonl") + "[:100]", "eval": str(tmp_path / "eval.parquet")},
            "max_steps": 2,
        },
        wait=True,
    )
    assert run.status == "finished", run.error
    assert run.labels == ["negative", "positive"]
    assert run._prep.train.num_rows == 100 and run._prep.eval.num_rows == 40


def test_eval_labels_unknown_to_train_are_named(tiny_config, tiny_df):
    bad = tiny_df.copy()
    bad.loc[:3, "label"] = "neutral"
    with pytest.raises(DataError, match=r"data.eval has labels \['neutral'\]"):
        finetune({**tiny_config, "data": {"train": tiny_df.iloc[10:], "eval": bad.iloc[:10]}})


def test_evaluate_predict_save_roundtrip(tiny_config, tmp_path):
    from transformers import AutoModelForSequenceClassification

    run = finetune({**tiny_config, "max_steps": 4}, wait=True)
    m = run.evaluate()
    assert set(m) == {"eval_loss", "eval_accuracy", "eval_f1"}
    out = run.save(tmp_path / "saved")
    assert (out / "model.safetensors").is_file() and (out / "finetune_config.yaml").is_file()
    reloaded = AutoModelForSequenceClassification.from_pretrained(out)
    assert reloaded.config.id2label == {0: "negative", 1: "positive"}
