"""Multi-label classification on the task seam: F1 micro / macro and subset accuracy against hand-computed values,
the label column in its forms (lists, ids, `label_sep` strings, lists saved as text), label names and their errors,
the sigmoid head and BCE loss, predict above the threshold, `task: auto`, and whole runs through `finetune()`."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest

from nb_finetune.core import data as D
from nb_finetune.core.config import FinetuneConfig
from nb_finetune.core.tasks.base import resolve_task
from nb_finetune.core.tasks.multi_label import MultiLabelClassification, MultiLabelMetric, multi_label_scores
from nb_finetune.errors import DataError

POS = "good great fine superb lovely wonderful excellent brilliant".split()
NEG = "bad awful poor terrible boring dull horrible weak".split()
ACT = "actor scene story".split()
FILL = "the a film movie plot was is and it this very quite".split()


def tagged_texts(n: int, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """Texts with a positive word, a negative word or neither, and maybe a word about the acting; tags say which
    (none, one or two per text)."""
    rng = random.Random(seed)
    texts, tags = [], []
    for _ in range(n):
        sentiment = rng.choice(("positive", "negative", None, "positive", "negative"))
        t = ([sentiment] if sentiment else []) + (["acting"] if rng.random() < 0.4 else [])
        words = [rng.choice(FILL) for _ in range(rng.randint(3, 9))]
        for k, vocab in (("positive", POS), ("negative", NEG), ("acting", ACT)):
            if k in t:
                words.insert(rng.randrange(len(words) + 1), rng.choice(vocab))
        texts.append(" ".join(words))
        tags.append(t)
    return texts, tags


def ml_df(n=160, seed=0):
    import pandas as pd

    texts, tags = tagged_texts(n, seed)
    return pd.DataFrame({"text": texts, "labels": tags})


def ml_task(model_dir, train, **over):
    data = {"train": train, "eval_split": 0.25, **over.pop("data", {})}
    task = resolve_task(FinetuneConfig.from_dict({"model": model_dir, "data": data, **over}))
    task.preflight()
    return task


def logits_for(pred: np.ndarray):
    """Logits whose sigmoid is 0.95 where `pred` is 1 and 0.05 where it is 0."""
    import torch

    return torch.tensor(np.where(pred > 0, 3.0, -3.0), dtype=torch.float32)


TRUE = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
PRED = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])


# --------------------------------------------------------------------------------------------- metrics
def test_scores_match_hand_computed_values():
    # label 0: tp 2 -> F1 1; label 1: tp 1, fn 1 -> 2/3; label 2: fp 1, fn 1 -> 0; label 3: never true, never
    # predicted -> no F1 (skipped by the macro average). Pooled: tp 3, fp 1, fn 2 -> 6/9. Exact rows: 1 and 3.
    tp, fp, fn = (TRUE & PRED).sum(0), (~TRUE.astype(bool) & PRED.astype(bool)).sum(0), (TRUE & (1 - PRED)).sum(0)
    scores, f1, defined = multi_label_scores(tp, fp, fn, exact=2, n=4)
    assert scores["f1_micro"] == pytest.approx(6 / 9)
    assert scores["f1_macro"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert scores["subset_accuracy"] == 0.5
    assert defined.tolist() == [True, True, True, False] and f1[:3] == pytest.approx([1, 2 / 3, 0])


def test_streaming_metric_counts_batch_by_batch_and_draws_f1_by_label():
    import torch

    m = MultiLabelMetric(["a", "b", "c", "d"], threshold=0.5)
    for lo, hi in ((0, 1), (1, 4)):
        out = SimpleNamespace(logits=logits_for(PRED[lo:hi]))
        m.update(out, {"labels": torch.tensor(TRUE[lo:hi], dtype=torch.float32)}, {"idx": list(range(lo, hi))})
    got = m.compute()
    assert got == pytest.approx({"f1_micro": 6 / 9, "f1_macro": 5 / 9, "subset_accuracy": 0.5})
    bars = m.extras()["label_f1"]
    assert bars["kind"] == "bars" and bars["title"] == "F1 by label"
    assert bars["labels"] == ["a", "b", "c"] and bars["values"] == pytest.approx([1, 2 / 3, 0])


def test_threshold_decides_what_counts_as_predicted():
    import torch

    logits = torch.logit(torch.tensor([[0.6, 0.2]]))  # scores 0.6 and 0.2; the truth is label 0 only
    labels = {"labels": torch.tensor([[1.0, 0.0]])}
    low, high = MultiLabelMetric(["x", "y"], 0.5), MultiLabelMetric(["x", "y"], 0.7)
    for m in (low, high):
        m.update(SimpleNamespace(logits=logits), labels, {"idx": [0]})
    assert low.compute()["subset_accuracy"] == 1.0 and high.compute()["subset_accuracy"] == 0.0
    assert high.compute()["f1_micro"] == 0.0


# --------------------------------------------------------------------------------------------- labels
def test_auto_picks_multi_label_for_label_lists(tiny_model_dir):
    task = resolve_task(FinetuneConfig.from_dict({"model": tiny_model_dir, "data": {"train": ml_df(20)}}))
    assert task.name == "multi-label-classification" and task.picked == "label lists in 'labels'"
    for alias in ("multi-label", "multilabel", "multi_label"):
        assert resolve_task(FinetuneConfig.from_dict({"task": alias})).name == "multi-label-classification"
    strings = ml_df(20).assign(labels=lambda d: d.labels.map(",".join))
    cfg = FinetuneConfig.from_dict({"data": {"train": strings}, "label_sep": ","})
    assert MultiLabelClassification.detect(D.load_source(strings), cfg) == "labels separated by ',' in 'labels'"
    # control: without label_sep the same strings are single class names
    assert MultiLabelClassification.detect(D.load_source(strings), FinetuneConfig.from_dict({})) is None


def test_names_are_the_sorted_union_and_rows_become_multi_hot(tiny_model_dir):
    task = ml_task(tiny_model_dir, ml_df())
    assert task.label_names == ["acting", "negative", "positive"]
    rows = task.train["labels"]
    hot = task.labels_of(task.train, "train")
    assert hot[:5] == [[float(n in r) for n in task.label_names] for r in rows[:5]]
    assert any(sum(v) == 0 for v in hot) and any(sum(v) >= 2 for v in hot)  # empty and several labels occur
    text = "\n".join(task.describe())
    assert "3 sigmoids over [CLS] (binary cross-entropy)" in text and "threshold 0.5" in text
    assert "labels per text: " in text


def test_label_column_forms_give_the_same_vectors(tiny_model_dir):
    base = ml_task(tiny_model_dir, ml_df(40))
    want = base.labels_of(base.train, "train")
    sep = ml_df(40).assign(labels=lambda d: d.labels.map(" | ".join))
    got = ml_task(tiny_model_dir, sep, task="multi-label", label_sep="|")
    assert got.label_names == base.label_names and got.labels_of(got.train, "train") == want
    as_text = ml_df(40).assign(labels=lambda d: d.labels.map(str))  # "['positive', 'acting']": a list saved in a CSV
    got = ml_task(tiny_model_dir, as_text, task="multi-label")
    assert got.labels_of(got.train, "train") == want
    ids = ml_df(40).assign(labels=lambda d: d.labels.map(lambda t: [base.label_names.index(x) for x in t]))
    got = ml_task(tiny_model_dir, ids, labels=base.label_names)
    assert got.label_names == base.label_names and got.labels_of(got.train, "train") == want


def test_labels_key_sets_the_order_and_refuses_unknown_labels(tiny_model_dir):
    task = ml_task(tiny_model_dir, ml_df(40), labels=["positive", "negative", "acting", "plot"])
    assert task.label_names == ["positive", "negative", "acting", "plot"] and task.head_kwargs()["num_labels"] == 4
    df = ml_df(40)
    df.at[17, "labels"] = ["positive", "funny"]
    with pytest.raises(DataError, match=r"row 17 of data.train has label 'funny', which is not in labels:"):
        ml_task(tiny_model_dir, df, labels=["positive", "negative", "acting"])


def test_unknown_label_in_eval_names_the_row(tiny_model_dir):
    ev = ml_df(10, seed=4)
    ev.at[6, "labels"] = ["acting", "music"]
    with pytest.raises(DataError, match=r"row 6 of data.eval has label 'music', which is not in data.train"):
        ml_task(tiny_model_dir, ml_df(40), data={"eval": ev})


def test_a_label_seen_only_in_the_held_out_rows_is_still_a_label(tiny_model_dir):
    df = ml_df(40)
    _, held = D.holdout_split(D.load_source(df), 0.25, 0)  # the split pre-flight makes (seed 0)
    row = next(i for i in range(len(df)) if df.text[i] in set(held["text"]))
    df.at[row, "labels"] = ["rare"]
    task = ml_task(tiny_model_dir, df, seed=0)
    assert "rare" in task.label_names and "rare" not in {x for r in task.train["labels"] for x in r}


def test_strings_without_label_sep_and_bad_ids_are_errors(tiny_model_dir):
    strings = ml_df(20).assign(labels=lambda d: d.labels.map(",".join))
    with pytest.raises(DataError, match=r"row 0 of data.train has label .*not a list of labels; set `label_sep"):
        ml_task(tiny_model_dir, strings, task="multi-label")
    ids = ml_df(20).assign(labels=lambda d: [[0, 1]] * 20)
    ids.at[12, "labels"] = [0, 5]
    with pytest.raises(DataError, match=r"row 12 of data.train has class id 5, but `labels:` names only 2 labels"):
        ml_task(tiny_model_dir, ids, labels=["x", "y"])
    empty = ml_df(20).assign(labels=lambda d: [[] for _ in range(20)])
    with pytest.raises(DataError, match="only empty label lists"):
        ml_task(tiny_model_dir, empty, task="multi-label")


# --------------------------------------------------------------------------------------------- head, loss, predict
def test_head_has_one_sigmoid_per_label_and_bce_loss(tiny_model_dir):
    import torch

    task = ml_task(tiny_model_dir, ml_df())
    assert task.build_model(meta=True).classifier.weight.shape[0] == 3
    model = task.build_model()
    assert model.config.problem_type == "multi_label_classification"
    assert model.config.id2label == {0: "acting", 1: "negative", 2: "positive"}
    train, _ = task.build_data()
    batch = task.collator()([train[i] for i in range(6)])
    assert batch["labels"].dtype == torch.float32 and batch["labels"].shape == (6, 3)
    inputs = {k: v for k, v in batch.items() if k not in ("num_tokens", "lengths", "idx")}
    loss, out = task.forward(model, inputs)
    want = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, batch["labels"])
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)


def test_predict_lists_the_labels_above_the_threshold_best_first(tiny_model_dir):
    import torch

    task = ml_task(tiny_model_dir, ml_df())
    model = task.build_model()
    with torch.no_grad():  # a head that scores 'positive' 0.88, 'acting' 0.73, 'negative' 0.12 for any text
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([1.0, -2.0, 2.0]))
    one = task.predict(model, "a good film")
    assert [p["label"] for p in one] == ["positive", "acting"]
    assert one[0]["score"] == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item(), rel=1e-4)
    many = task.predict(model, ["good", "bad", "the cast"], batch_size=2)
    assert len(many) == 3 and all(r == many[0] for r in many)
    assert [p["label"] for p in task.predict(model, "x", threshold=0.8)] == ["positive"]
    assert task.predict(model, ["x"], threshold=0.9) == [[]]


# --------------------------------------------------------------------------------------------- whole runs
def test_finetune_learns_the_tags(tiny_model_dir, tmp_path):
    from nb_finetune import finetune

    run = finetune(
        {
            "model": tiny_model_dir,
            "data": {"train": ml_df(256, seed=1), "eval": ml_df(64, seed=2)},
            "epochs": 10,
            "batch_size": 16,
            "lr": 2e-3,
            "log_every": 2,
            "eval_at_start": True,
            "seed": 0,
            "output_dir": str(tmp_path),
            "name": "tags",
        },
        wait=True,
    )
    assert run.status == "finished", run.error
    assert run.task.name == "multi-label-classification" and run.labels == ["acting", "negative", "positive"]
    evals = run.history.dropna(subset=["eval_f1_micro"])
    for key in ("eval_loss", "eval_f1_micro", "eval_f1_macro", "eval_subset_accuracy"):
        assert key in evals.columns, key
    first, last = evals.iloc[0], evals.iloc[-1]
    assert last["eval_f1_micro"] > max(0.8, first["eval_f1_micro"] + 0.3), (first, last)
    assert last["eval_f1_macro"] > 0.75 and last["eval_subset_accuracy"] > 0.6, last
    losses = run.history["loss"].dropna().to_numpy()
    assert losses[-4:].mean() < 0.7 * losses[:4].mean()
    # predict agrees with the held-out labels as often as the eval's subset accuracy says (specific hand-written
    # sentences would depend on the tiny tokenizer's vocabulary, which differs from process to process)
    held = ml_df(64, seed=2)
    got = run.predict(list(held["text"]))
    assert len(got) == 64 and all(p["score"] > 0.5 for ps in got for p in ps)
    assert all([p["score"] for p in ps] == sorted((p["score"] for p in ps), reverse=True) for ps in got)
    same = np.mean([{p["label"] for p in ps} == set(y) for ps, y in zip(got, held["labels"])])
    assert abs(same - last["eval_subset_accuracy"]) < 1e-9, (same, last["eval_subset_accuracy"])
