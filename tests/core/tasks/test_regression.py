"""Regression on the task seam: metrics against hand-computed values, labels checked row by row, the head and its
loss, predict's shapes, `task: auto`, and whole runs through `finetune()` (loss goes down, lower-is-better metrics
drive early stopping, a stopped run resumed in a fresh process repeats an uninterrupted one exactly)."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import numpy as np
import pytest
from fresh_process import run_py
from metrics_log import losses_by_step

from nb_finetune.core.config import FinetuneConfig
from nb_finetune.core.tasks.base import resolve_task
from nb_finetune.core.tasks.regression import Regression, RegressionMetric, average_ranks, regression_scores
from nb_finetune.errors import ConfigError, DataError

POS = "good great fine superb lovely wonderful excellent brilliant".split()
NEG = "bad awful poor terrible boring dull horrible weak".split()
FILL = "the a film movie plot actor story scene was is and it this very quite".split()


def scored_texts(n: int, seed: int = 0) -> tuple[list[str], list[float]]:
    """Texts with 0-2 positive and 0-2 negative words; target = (positives - negatives) / 2 (non-integer)."""
    rng = random.Random(seed)
    texts, ys = [], []
    for _ in range(n):
        n_pos, n_neg = rng.randint(0, 2), rng.randint(0, 2)
        words = [rng.choice(FILL) for _ in range(rng.randint(3, 9))]
        for w in [rng.choice(POS) for _ in range(n_pos)] + [rng.choice(NEG) for _ in range(n_neg)]:
            words.insert(rng.randrange(len(words) + 1), w)
        texts.append(" ".join(words))
        ys.append((n_pos - n_neg) / 2)
    return texts, ys


def reg_df(n=160, seed=0):
    import pandas as pd

    texts, ys = scored_texts(n, seed)
    return pd.DataFrame({"text": texts, "score": ys})


def reg_task(model_dir, train, **over):
    cfg = FinetuneConfig.from_dict({"model": model_dir, "data": {"train": train, "eval_split": 0.25}, **over})
    task = resolve_task(cfg)
    task.preflight()
    return task


# --------------------------------------------------------------------------------------------- metrics
def test_scores_match_hand_computed_values():
    s = regression_scores([1, 2, 3, 4], [1, 3, 2, 5])
    # errors 0, -1, 1, -1; labels' mean 2.75, total sum of squares 8.75; centred products sum to 5.5
    assert s["mse"] == pytest.approx(0.75) and s["mae"] == pytest.approx(0.75)
    assert s["r2"] == pytest.approx(1 - 3 / 8.75)
    assert s["pearson"] == pytest.approx(5.5 / np.sqrt(5 * 8.75))
    assert s["spearman"] == pytest.approx(0.8)  # ranks 1,2,3,4 vs 1,3,2,4: 1 - 6*2/(4*15)


def test_spearman_averages_tied_ranks():
    np.testing.assert_allclose(average_ranks(np.array([2.0, 1.0, 4.0, 4.0, 3.0])), [2, 1, 4.5, 4.5, 3])
    np.testing.assert_allclose(average_ranks(np.array([5.0, 5.0, 5.0, 1.0])), [3, 3, 3, 1])
    s = regression_scores([1, 2, 2, 3, 5], [2, 1, 4, 4, 3])
    # ranks [1, 2.5, 2.5, 4, 5] vs [2, 1, 4.5, 4.5, 3]: centred products 3.75, each side's squares 9.5
    assert s["spearman"] == pytest.approx(3.75 / 9.5)
    stats = pytest.importorskip("scipy.stats")
    rho = stats.spearmanr([1, 2, 2, 3, 5], [2, 1, 4, 4, 3]).statistic
    assert s["spearman"] == pytest.approx(rho)


def test_undefined_scores_are_zero_not_nan():
    s = regression_scores([1.0, 2.0, 3.0], [2.0, 2.0, 2.0])  # constant labels: r2 and correlations undefined
    assert (s["r2"], s["pearson"], s["spearman"]) == (0.0, 0.0, 0.0)
    assert regression_scores([2.0, 2.0], [2.0, 2.0])["r2"] == 1.0
    assert all(np.isfinite(v) for v in s.values())


def test_streaming_metric_over_batches_of_different_sizes_equals_the_whole():
    import torch

    rng = np.random.default_rng(0)
    preds, labels = rng.normal(size=23), rng.normal(size=23)
    m = RegressionMetric()
    for lo, hi in ((0, 8), (8, 9), (9, 23)):  # a batch of one too: (1, 1) logits
        out = SimpleNamespace(logits=torch.tensor(preds[lo:hi], dtype=torch.float32).reshape(-1, 1))
        m.update(out, {"labels": torch.tensor(labels[lo:hi], dtype=torch.float32)}, {"idx": list(range(lo, hi))})
    got, want = m.compute(), regression_scores(preds, labels)
    assert got == pytest.approx(want, rel=1e-5)
    matrix = m.extras()["pred_vs_true"]
    assert matrix["kind"] == "matrix" and np.sum(matrix["values"]) == 23
    assert len(matrix["rows"]) == len(matrix["values"]) == RegressionMetric.BINS


def test_mse_and_mae_are_lower_is_better_the_correlations_higher():
    task = Regression(FinetuneConfig.from_dict({}))
    assert [task.higher_is_better(f"eval_{k}") for k in ("mse", "mae", "loss")] == [False, False, False]
    assert [task.higher_is_better(f"eval_{k}") for k in ("r2", "pearson", "spearman")] == [True, True, True]
    assert not task.higher_is_better(Regression.default_metric)


# --------------------------------------------------------------------------------------------- pre-flight
def test_auto_picks_regression_for_float_labels_and_classification_for_whole_numbers(tiny_model_dir):
    task = resolve_task(FinetuneConfig.from_dict({"model": tiny_model_dir, "data": {"train": reg_df(20)}}))
    assert task.name == "regression" and task.picked == "float labels in 'score'"
    ints = reg_df(20).assign(score=lambda d: (d.score * 2).astype(float))  # 1.0, -2.0: class ids, not amounts
    assert resolve_task(FinetuneConfig.from_dict({"data": {"train": ints}})).name == "text-classification"
    for alias in ("regression", "text-regression", "similarity"):
        assert resolve_task(FinetuneConfig.from_dict({"task": alias})).name == "regression"


def test_describe_reports_the_label_spread(tiny_model_dir):
    task = reg_task(tiny_model_dir, reg_df())
    text = "\n".join(task.describe())
    y = np.array(task.labels_of(task.train, "train"))
    assert f"mean {y.mean():.4g}, std {y.std():.4g}" in text
    assert "1 linear output over [CLS] (mean squared error)" in text and "label column 'score'" in text
    assert task.label_names == [] and len(task.train) == 120 and len(task.eval) == 40


def test_a_non_numeric_label_names_its_row_and_value_in_the_users_data(tiny_model_dir, tmp_path):
    csv = tmp_path / "scores.csv"
    df = reg_df(40).astype({"score": object})
    df.loc[29, "score"] = "?"
    df.to_csv(csv, index=False)  # pandas reads the column back as text: '0.5', ..., '?'
    # row 29 of the data as given, although eval_split shuffles a quarter of it away before training
    with pytest.raises(
        DataError, match=r"row 29 of data.train has label '\?', which is not a number, in column 'score'"
    ):
        reg_task(tiny_model_dir, str(csv), task="regression")
    df.loc[29, "score"] = None
    df.to_csv(csv, index=False)  # an empty cell: NaN in a float column
    with pytest.raises(DataError, match=r"row 29 of data.train has no label \(an empty cell\) in column 'score'"):
        reg_task(tiny_model_dir, str(csv), task="regression")
    # control: numbers written as text are numbers
    df.loc[29, "score"] = " 1.5"
    task = reg_task(tiny_model_dir, df.astype({"score": str}), task="regression")
    assert task.labels_of(task.train, "train") + task.labels_of(task.eval, "eval") != []
    assert 1.5 in task.labels_of(task.train, "train") + task.labels_of(task.eval, "eval")


def test_bad_label_in_data_eval_names_data_eval(tiny_model_dir):
    ev = reg_df(10, seed=5).astype({"score": str})  # as pandas reads a CSV column with a word in it
    ev.loc[3, "score"] = "high"
    cfg = FinetuneConfig.from_dict(
        {"model": tiny_model_dir, "task": "regression", "data": {"train": reg_df(20), "eval": ev}}
    )
    task = resolve_task(cfg)
    with pytest.raises(DataError, match="row 3 of data.eval has label 'high'"):
        task.preflight()


def test_keys_of_other_tasks_and_wrong_model_objects_are_refused(tiny_model_dir):
    with pytest.raises(ConfigError, match="`labels` is not used by task regression"):
        resolve_task(
            FinetuneConfig.from_dict({"task": "regression", "labels": ["a", "b"], "data": {"train": reg_df(8)}})
        )
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    two = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    cfg = {"model": two, "tokenizer": AutoTokenizer.from_pretrained(tiny_model_dir), "task": "regression"}
    with pytest.raises(
        DataError, match="the model object has 2 outputs; regression needs one: build it with num_labels=1"
    ):
        reg_task(tiny_model_dir, reg_df(20), **cfg)


# --------------------------------------------------------------------------------------------- head, loss, predict
def test_head_is_one_output_with_mse_loss_and_float_labels(tiny_model_dir):
    import torch

    task = reg_task(tiny_model_dir, reg_df())
    meta = task.build_model(meta=True)
    assert meta.config.num_labels == 1 and meta.classifier.weight.shape[0] == 1
    model = task.build_model()
    assert model.config.problem_type == "regression"
    train, ev = task.build_data()
    batch = task.collator()([train[i] for i in range(5)])
    assert batch["labels"].dtype == torch.float32 and batch["labels"].shape == (5,)
    inputs = {k: v for k, v in batch.items() if k not in ("num_tokens", "lengths", "idx")}
    loss, out = task.forward(model, inputs)
    want = ((out.logits[:, 0] - batch["labels"]) ** 2).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert batch["labels"].tolist() == [train.labels[i] for i in range(5)]


def test_predict_gives_one_float_per_text(tiny_model_dir):
    task = reg_task(tiny_model_dir, reg_df())
    model = task.build_model()
    one = task.predict(model, "a good film")
    many = task.predict(model, ["a good film", "bad", "the plot was dull and weak"], batch_size=2)
    assert isinstance(one, float) and isinstance(many, list) and len(many) == 3
    assert all(isinstance(x, float) for x in many) and many[0] == pytest.approx(one, abs=1e-5)


# --------------------------------------------------------------------------------------------- whole runs
def _history_evals(run, key):
    return run.history.dropna(subset=[key])


def test_finetune_learns_the_scores_and_reports_every_key(tiny_model_dir, tmp_path):
    from nb_finetune import finetune

    run = finetune(
        {
            "model": tiny_model_dir,
            "data": {"train": reg_df(256, seed=1), "eval": reg_df(64, seed=2)},
            "epochs": 10,
            "batch_size": 16,
            "lr": 1e-3,
            "log_every": 2,
            "eval_at_start": True,
            "seed": 0,
            "output_dir": str(tmp_path),
            "name": "reg",
        },
        wait=True,
    )
    assert run.status == "finished", run.error
    assert run.task.name == "regression" and run.task.picked == "float labels in 'score'"
    evals = _history_evals(run, "eval_mse")
    for key in ("eval_loss", "eval_mse", "eval_mae", "eval_r2", "eval_pearson", "eval_spearman"):
        assert key in evals.columns, key
    first, last = evals.iloc[0], evals.iloc[-1]
    assert first["eval_r2"] < 0.05  # control: the fresh head predicts about the mean
    assert last["eval_mse"] < 0.5 * first["eval_mse"], (first["eval_mse"], last["eval_mse"])
    assert last["eval_r2"] > 0.6 and last["eval_pearson"] > 0.8 and last["eval_spearman"] > 0.7, last
    assert last["eval_loss"] == pytest.approx(last["eval_mse"], rel=1e-4)  # the loss is the MSE
    losses = run.history["loss"].dropna().to_numpy()
    assert losses[-5:].mean() < 0.5 * losses[:5].mean()
    pred = run.predict(["good great superb film", "awful terrible boring film"])
    assert pred[0] > pred[1]


def test_freezing_applies_to_a_regression_run(tiny_model_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from nb_finetune import finetune

    run = finetune(
        {
            "model": tiny_model_dir,
            "data": {"train": reg_df(64, seed=1), "eval_split": 0},
            "max_steps": 4,
            "batch_size": 16,
            "lr": 1e-3,
            "freeze": "embeddings",
            "output_dir": str(tmp_path),
            "name": "frozen",
        },
        wait=True,
    )
    assert run.status == "finished", run.error
    base, tuned = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).bert, run.model.bert
    assert tuned.embeddings.word_embeddings.weight.detach().cpu().equal(base.embeddings.word_embeddings.weight)
    q, q0 = tuned.encoder.layer[0].attention.self.query.weight, base.encoder.layer[0].attention.self.query.weight
    assert not q.detach().cpu().equal(q0)  # control: what is not frozen moved


def _mae_run(model_dir, out, **over):
    from nb_finetune import finetune

    cfg = {
        "model": model_dir,
        "data": {"train": reg_df(128, seed=1), "eval": reg_df(48, seed=2)},
        "epochs": 30,
        "batch_size": 16,
        "lr": 5e-3,
        "eval_every": 4,
        "seed": 0,
        "output_dir": str(out),
        "name": "mae",
        **over,
    }
    run = finetune(cfg, wait=True)
    assert run.status == "finished", run.error
    evals = _history_evals(run, "eval_mae")
    return run, evals["eval_mae"].to_numpy(), evals["step"].to_numpy()


def test_early_stopping_on_mae_watches_for_the_minimum(tiny_model_dir, tmp_path):
    # mode auto: eval_mae is lower-is-better, so the run stops `patience` evaluations after the LOWEST value
    run, maes, steps = _mae_run(tiny_model_dir, tmp_path, early_stopping={"metric": "eval_mae", "patience": 2})
    assert run.step < 30 * 8, "early stopping never triggered"
    best = int(np.argmin(maes))
    assert len(maes) - 1 - best == 2 and maes[best] < maes[0], maes
    assert run.best_checkpoint.name == f"step-{steps[best]:06d}", (run.best_checkpoint, steps, maes)


def test_metric_for_best_on_mae_keeps_the_lowest(tiny_model_dir, tmp_path):
    run, maes, steps = _mae_run(tiny_model_dir, tmp_path, epochs=4, metric_for_best="mae")
    assert len(maes) == 8 and maes.min() < maes.max()
    assert run.best_checkpoint.name == f"step-{steps[int(np.argmin(maes))]:06d}", (run.best_checkpoint, maes)


def test_stop_and_resume_in_a_fresh_process_repeats_an_uninterrupted_run(tiny_model_dir, tmp_path):
    csv = tmp_path / "scores.csv"
    reg_df(100, seed=3).to_csv(csv, index=False)
    cfg = {
        "model": tiny_model_dir,
        "data": {"train": str(csv), "eval_split": 0.2},
        "epochs": 3,
        "batch_size": 8,
        "grad_accum": 2,
        "lr": 1e-3,
        "dropout": 0.1,
        "precision": "fp32",
        "seed": 11,
        "log_every": 1,
        "save_every": None,
        "output_dir": str(tmp_path / "runs"),
    }
    env = {"NB_FT_CFG": json.dumps(cfg)}
    # one process runs A uninterrupted, then B stopped in its 13th training forward pass: mid-accumulation and
    # mid-epoch (10 micro-batches, 5 optimizer steps an epoch)
    run_py(
        """
        import json, os
        from fresh_process import StopAtForward
        from nb_finetune import finetune
        cfg = json.loads(os.environ["NB_FT_CFG"])
        run = finetune(cfg, name="a", wait=True)
        assert run.status == "finished" and run.task.name == "regression", (run.status, run.error)
        stop = StopAtForward(13)
        run = stop.attach(finetune(cfg, name="b", callbacks=[stop], start=False)).start()
        run.wait()
        assert (run.status, run.reason) == ("stopped", "user"), (run.status, run.error)
        assert run.step == 6, run.step  # the 13th micro-batch's gradient is discarded
        """,
        env,
    )
    runs = tmp_path / "runs"
    assert max(losses_by_step(runs / "b")) == 6
    run_py(
        """
        import json, os
        from nb_finetune import finetune
        run = finetune(json.loads(os.environ["NB_FT_CFG"]), name="b", resume_from="last", wait=True)
        assert run.status == "finished", run.error
        """,
        env,
    )
    a, b = losses_by_step(runs / "a"), losses_by_step(runs / "b")
    assert len(a) == 15 and sorted(a) == sorted(b)
    assert [b[s] for s in sorted(b)] == [a[s] for s in sorted(a)]  # exactly equal, not approximately
