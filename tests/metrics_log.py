"""Test helper: read a run's metrics.jsonl the way the resume tests compare runs."""

from __future__ import annotations

from pathlib import Path

from nb_finetune.core.records import read_events


def losses_by_step(run_dir: Path) -> dict[int, float]:
    """{optimizer step: loss} for every step a run logged (a log record carries the losses since the last one)."""
    out = {}
    for e in read_events(Path(run_dir) / "metrics.jsonl"):
        if e.kind == "Logged":
            first = e.step - len(e.losses) + 1
            out.update({first + i: v for i, v in enumerate(e.losses)})
    return out
