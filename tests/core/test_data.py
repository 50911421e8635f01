"""Batching and data loading: the length-grouped plan, dynamic padding, sources, column detection."""

from __future__ import annotations

import numpy as np
import pytest

from nb_finetune.core import data as D
from nb_finetune.errors import DataError


@pytest.mark.parametrize("n, bs", [(1, 4), (37, 8), (1000, 32), (1601, 32)])
@pytest.mark.parametrize("grouped", [True, False])
def test_every_example_once_per_epoch(n, bs, grouped):
    lengths = np.random.default_rng(0).integers(3, 60, size=n)
    for epoch in range(3):
        plan = D.epoch_batches(lengths, bs, seed=5, epoch=epoch, group_by_length=grouped)
        flat = np.concatenate(plan)
        assert sorted(flat.tolist()) == list(range(n))
        assert all(1 <= len(b) <= bs for b in plan)


def test_plan_is_seeded_changes_per_epoch_and_puts_the_longest_batch_first():
    lengths = np.random.default_rng(1).integers(3, 60, size=500)
    a = D.epoch_batches(lengths, 16, seed=3, epoch=0, group_by_length=True)
    b = D.epoch_batches(lengths, 16, seed=3, epoch=0, group_by_length=True)
    c = D.epoch_batches(lengths, 16, seed=3, epoch=1, group_by_length=True)
    assert all((x == y).all() for x, y in zip(a, b))
    assert any(len(x) != len(y) or (x != y).any() for x, y in zip(a, c))
    assert lengths[a[0]].max() == lengths.max()


def test_grouping_cuts_padding():
    lengths = np.random.default_rng(2).integers(3, 60, size=3200)

    def padded(plan):
        return sum(len(b) * lengths[b].max() for b in plan)

    grouped = padded(D.epoch_batches(lengths, 32, 0, 0, True))
    shuffled = padded(D.epoch_batches(lengths, 32, 0, 0, False))
    assert grouped < 0.7 * shuffled
    assert grouped < 1.1 * lengths.sum()


def test_collator_pads_dynamically_and_reports_host_counts():
    c = D.Collator(pad_token_id=0)
    out = c(
        [
            {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": 1, "idx": 4},
            {"input_ids": [8], "attention_mask": [1], "labels": 0, "idx": 9},
        ]
    )
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out["labels"].tolist() == [1, 0]
    assert (out["num_tokens"], out["lengths"], out["idx"]) == (4, [3, 1], [4, 9])


def test_column_detection_and_errors():
    import datasets

    ds = datasets.Dataset.from_dict({"review": ["a", "b"], "stars": ["x", "y"], "id": [1, 2]})
    assert D.detect_columns(ds, None, "stars") == ("review", "stars", None)
    with pytest.raises(DataError, match="no label column found"):
        D.detect_columns(ds, None, None)
    with pytest.raises(DataError, match="Did you mean 'review'"):
        D.detect_columns(ds, "reviw", "stars")
    with pytest.raises(DataError, match="does not hold text"):
        D.detect_columns(ds, "id", "stars")


def test_slices_on_local_files(tmp_path):
    import pandas as pd

    pd.DataFrame({"text": [f"t{i}" for i in range(10)], "label": [0, 1] * 5}).to_csv(tmp_path / "d.csv", index=False)
    assert len(D.load_source(str(tmp_path / "d.csv") + "[:4]")) == 4
    assert len(D.load_source(str(tmp_path / "d.csv") + "[50%:]")) == 5
    assert D.load_source(str(tmp_path / "d.csv") + "[-2:]")["text"] == ["t8", "t9"]
    with pytest.raises(DataError, match="slice"):
        D.load_source(str(tmp_path / "d.csv") + "[a:b]")
