"""The LLM benchmark's table and ratios, computed from raw results (no training here)."""

from __future__ import annotations

from benchmarks.llm import summarize
from benchmarks.llm_common import LLMSpec


def test_llm_summary_is_computed_from_raw_runs():
    """Control: N's ratio against an arm twice as fast is 0.5x, not 2x (the ratio is N / arm in tokens/s)."""
    spec = LLMSpec(work_dir="/tmp/x")
    runs = []
    for rep in range(2):
        for arm, tps in {"T0": 100.0, "T1": 50.0, "P": 200.0, "N": 100.0 + rep * 20}.items():
            runs.append(
                {
                    "arm": arm,
                    "rep": rep,
                    "wall_s": 10.0,
                    "tokens_per_s": tps,
                    "padding_share": 0.25 if arm == "T0" else 0.0,
                    "steps": 8,
                    "peak_rss_mb": 500.0,
                    "syncs_per_100_steps": 10.0,
                    "train_loss": 2.0,
                }
            )
    from dataclasses import asdict

    table, line = summarize({"spec": asdict(spec), "reps": 2, "machine": {"cpu_count": 2}, "runs": runs})
    assert "N/T0 1.10x" in table and "N/T1 2.20x" in table and "N/P 0.55x" in table
    assert "| 25% |" in table
    assert line == "N/T0: 1.10x | N/T1: 2.20x | N/P: 0.55x"
