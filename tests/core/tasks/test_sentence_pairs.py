"""Sentence pairs (`data.text_pair`: NLI, paraphrase, similarity) through the sequence tasks: both texts reach the
model as one input with segment ids, `predict(texts, pairs)` scores pairs, and a pair model refuses single texts.
Classification (is either sentence positive?) and regression (the pair's overall polarity) train end to end to
scores that reading one of the two texts cannot reach. (Relations such as "do they agree" are XOR-like and take
the 2-block test model far longer than a fast test may run.)"""

from __future__ import annotations

import random

import pytest

from nb_finetune.core.config import FinetuneConfig
from nb_finetune.core.tasks.base import resolve_task
from nb_finetune.errors import DataError

POS = "good great fine superb lovely wonderful excellent brilliant".split()
NEG = "bad awful poor terrible boring dull horrible weak".split()
FILL = "the a film movie plot actor story scene was is and it this very quite".split()


def _sentence(rng, polarity: int) -> str:
    words = [rng.choice(FILL) for _ in range(rng.randint(2, 6))]
    if polarity:
        words.insert(rng.randrange(len(words) + 1), rng.choice(POS if polarity > 0 else NEG))
    return " ".join(words)


def pairs_df(n: int, seed: int = 0):
    """sentence1, sentence2 (each positive, negative or neutral), `any_positive` (yes / no) and `score`: the pair's
    overall polarity, (a + b) / 4 + 0.5 for polarities a, b in {-1, 0, 1}."""
    import pandas as pd

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.choice((-1, 0, 1)), rng.choice((-1, 0, 1))
        rows.append((_sentence(rng, a), _sentence(rng, b), "yes" if max(a, b) > 0 else "no", (a + b) / 4 + 0.5))
    return pd.DataFrame(rows, columns=["sentence1", "sentence2", "any_positive", "score"])


def pair_task(model_dir, label: str, n=80, **over):
    df = pairs_df(n).drop(columns=[c for c in ("any_positive", "score") if c != label])
    cfg = FinetuneConfig.from_dict(
        {"model": model_dir, "data": {"train": df, "text_pair": "sentence2", "label": label}, **over}
    )
    task = resolve_task(cfg)
    task.preflight()
    return task


@pytest.mark.parametrize(("label", "task_name"), [("any_positive", "text-classification"), ("score", "regression")])
def test_both_sentences_reach_the_model_as_one_input(tiny_model_dir, label, task_name):
    task = pair_task(tiny_model_dir, label)
    assert task.name == task_name  # task: auto, from the label column
    assert (task.text_col, task.pair_col, task.label_col) == ("sentence1", "sentence2", label)
    assert "pair column 'sentence2'" in "\n".join(task.describe())
    train, _ = task.build_data()
    row = task.train[0]
    ids = task.tokenizer(row["sentence1"], row["sentence2"])["input_ids"]
    assert train.features["input_ids"][0] == ids  # [CLS] a [SEP] b [SEP]
    assert set(train.features["token_type_ids"][0]) == {0, 1}
    batch = task.collator()([train[i] for i in range(4)])
    assert batch["token_type_ids"].shape == batch["input_ids"].shape


def test_predict_scores_pairs_and_refuses_single_texts(tiny_model_dir):
    cls_task, reg_task = pair_task(tiny_model_dir, "any_positive"), pair_task(tiny_model_dir, "score")
    texts, pairs = ["a good film", "the plot was dull", "it is"], ["a great story", "a lovely scene", "the actor"]
    labels = cls_task.predict(cls_task.build_model(), texts, pairs)
    assert len(labels) == 3 and all(p["label"] in ("no", "yes") for p in labels)
    model = reg_task.build_model()
    scores = reg_task.predict(model, texts, pairs)
    assert len(scores) == 3 and all(isinstance(s, float) for s in scores)
    assert isinstance(reg_task.predict(model, "a good film", "a great story"), float)
    # the order of the two texts matters to a pair model: (a, b) and (b, a) are different inputs
    assert reg_task.predict(model, pairs[:1], texts[:1]) != scores[:1]
    with pytest.raises(
        DataError, match=r"reads text pairs \('sentence1', 'sentence2'\); pass predict\(texts, pairs\)"
    ):
        reg_task.predict(model, texts)
    with pytest.raises(DataError, match="3 texts but 2 text pairs"):
        reg_task.predict(model, texts, pairs[:2])


def test_data_eval_needs_the_pair_column_too(tiny_model_dir):
    ev = pairs_df(10, seed=3).drop(columns=["sentence2", "any_positive"])
    cfg = FinetuneConfig.from_dict(
        {
            "model": tiny_model_dir,
            "data": {
                "train": pairs_df(20).drop(columns=["any_positive"]),
                "eval": ev,
                "text_pair": "sentence2",
                "label": "score",
            },
        }
    )
    with pytest.raises(DataError, match=r"data.eval lacks column\(s\) \['sentence2'\]"):
        resolve_task(cfg).preflight()


@pytest.mark.parametrize(
    ("label", "metric", "bar", "epochs"),
    # reading one text alone tops out at accuracy 7/9 (any_positive) and r2 0.5 (score): both texts are used
    [("any_positive", "eval_accuracy", 0.9, 6), ("score", "eval_r2", 0.6, 8)],
)
def test_pairs_train_end_to_end(tiny_model_dir, tmp_path, label, metric, bar, epochs):
    from nb_finetune import finetune

    drop = [c for c in ("any_positive", "score") if c != label]
    run = finetune(
        {
            "model": tiny_model_dir,
            "data": {
                "train": pairs_df(320, seed=1).drop(columns=drop),
                "eval": pairs_df(80, seed=2).drop(columns=drop),
                "text_pair": "sentence2",
                "label": label,
            },
            "epochs": epochs,
            "batch_size": 16,
            "lr": 2e-3,
            "log_every": 2,
            "eval_at_start": True,
            "seed": 0,
            "output_dir": str(tmp_path),
            "name": f"pairs-{label}",
        },
        wait=True,
    )
    assert run.status == "finished", run.error
    losses = run.history["loss"].dropna().to_numpy()
    assert losses[-4:].mean() < 0.7 * losses[:4].mean()
    evals = run.history.dropna(subset=[metric])[metric].to_numpy()
    assert evals[0] < bar - 0.2 and evals[-1] > bar, evals
    out = run.predict(["a superb film", "a superb film"], ["a lovely story", "a dull story"])
    assert len(out) == 2
    if label == "score":
        assert out[0] > out[1] + 0.2, out
    else:
        assert [p["label"] for p in out] == ["yes", "yes"]
        assert run.predict(["a dull film"], ["a weak story"])[0]["label"] == "no"
