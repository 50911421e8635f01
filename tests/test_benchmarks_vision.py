"""The vision benchmark's arithmetic and table, from raw results (no training here)."""

from __future__ import annotations

import pytest

from benchmarks.vision import cache_bound, summarize


def test_cache_bound_counts_the_prefix_once():
    # prefix 6, tail 1 (forward FLOPs): every epoch costs 6 + 3 = 9; cached epochs cost 3
    assert cache_bound({"total": 7, "tail": 1}, 3) == pytest.approx(27 / 15)
    assert cache_bound({"total": 7, "tail": 1}, 1) == pytest.approx(1.0)  # one pass: nothing to reuse (control)
    assert cache_bound({"total": 5, "tail": 5}, 3) == pytest.approx(1.0)  # nothing frozen


def test_summary_is_computed_from_raw_runs():
    runs = [
        {"arm": a, "k": k, "images_per_s": v, "rep": r}
        for r, scale in enumerate((1.0, 1.2))
        for k, vals in ((0, {"T": 10, "P": 20, "N": 19}), (15, {"T": 30, "P": 40, "N": 50}))
        for a, v in vals.items()
        for v in [v * scale]
    ]
    doc = {
        "spec": {"n_train": 128, "image_size": 128, "epochs": 2, "batch_size": 32, "threads": 1},
        "reps": 2,
        "bounds": {"0": 1.0, "15": 1.4},
        "machine": {"cpu_count": 2},
        "runs": runs,
    }
    table, line = summarize(doc)
    assert "k=0: N/P 0.95x (target >= 0.97), N/T 1.90x (target >= 1.2)" in line
    assert "k=15: N/P 1.25x = 0.89 of the bound 1.40x" in line
    assert "| 0 | P plain PyTorch loop | 22.0 | 20.0-24.0 | 0.95x |" in table
