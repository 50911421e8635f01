"""The benchmark's arithmetic and its table, computed from raw results (no training here)."""

from __future__ import annotations

import json

import pytest

from benchmarks.__main__ import summarize
from benchmarks.common import flop_bound


def test_flop_bound_matches_the_issue_example():
    assert flop_bound(6, 4, 3) == pytest.approx(1.36, abs=0.005)
    assert flop_bound(6, 0, 3) == pytest.approx(1.0)
    assert flop_bound(6, 4, 1) == pytest.approx(1.0)


def test_summary_is_computed_from_raw_runs():
    runs = []
    for rep, walls in enumerate([{"B0": 40, "B1": 20, "B2": 19, "N": 18}, {"B0": 44, "B1": 22, "B2": 21, "N": 22}]):
        for arm, wall in walls.items():
            runs.append(
                {
                    "arm": arm,
                    "k": 0,
                    "rep": rep,
                    "wall_s": wall,
                    "cpu_s": 2 * wall,
                    "samples_per_s": 1.0,
                    "tokens_per_s": 1.0,
                    "peak_rss_mb": 1.0,
                    "syncs_per_100_steps": 1.0,
                    "train_loss": 0.7,
                    "accuracy": 0.5,
                }
            )
    runs += [{**runs[1], "k": 4, "wall_s": 10.0}, {**runs[3], "k": 4, "wall_s": 8.0}]
    doc = {
        "spec": {"layers": 6, "epochs": 3, "hidden": 256, "n_train": 512, "batch_size": 32, "max_length": 64},
        "reps": 2,
        "machine": {"cpu_count": 2},
        "runs": runs,
    }
    table, line = summarize(json.loads(json.dumps(doc)))
    assert line == "N/B1 k=0: 1.05x | N/B2 k=0: 1.00x | k=2L/3 cached: 1.25x (bound 1.36x)"  # 21/20, 20/20, 10/8
    assert "N/B0 2.10x" in table and "| 4 | B1" in table


def test_arms_and_k_select_a_focused_plan():
    """`--arms B2,N --k 0` keeps the k=0 runs of those arms, in the plan's order; an unknown arm is refused by name.
    Control: the unfiltered quick plan has every arm at k=0 and B1, N deeper."""
    from benchmarks.__main__ import _plan, main
    from benchmarks.common import Spec

    spec = Spec(work_dir="unused")
    full = _plan(spec, True)
    assert [a for k, a in full if k == 0] == ["B0", "B1", "B2", "N"] and {a for k, a in full if k > 0} == {"B1", "N"}
    assert _plan(spec, True, ("N", "B2"), (0,)) == [(0, "B2"), (0, "N")]
    with pytest.raises(SystemExit):
        main(["--arms", "B9,N"])
