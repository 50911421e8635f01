"""What the stop-and-resume tests share: a fresh Python process, and a callback that stops a run mid-way.

Each task's test trains once uninterrupted, once stopped at a chosen training forward (a micro-batch: mid-epoch or
mid-accumulation where it falls there), then resumes in a fresh process and compares the losses step by step.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_py(code: str, env: dict | None = None, timeout: int = 300) -> None:
    """Run `code` in a fresh Python process (the repository and tests/ importable, one OpenMP thread); it must
    exit 0, else the assertion shows the end of its stderr."""
    res = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
            "OMP_NUM_THREADS": "1",
            **(env or {}),
        },
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert res.returncode == 0, res.stderr[-3000:]


class StopAtForward:
    """A callback that stops its run at the `n`-th training forward of the model (evaluation forwards not counted).

    stop = StopAtForward(13)
    run = stop.attach(finetune(cfg, callbacks=[stop], start=False)).start()
    """

    def __init__(self, n: int):
        self.n = n
        self.calls = 0
        self.run = None

    def attach(self, run):
        self.run = run
        return run

    def on_event(self, e):
        from nb_finetune.core.events import RunStarted

        if isinstance(e, RunStarted):
            self.run.model.register_forward_hook(self._forward)

    def _forward(self, mod, args, out):
        if mod.training:
            self.calls += 1
            if self.calls == self.n:
                self.run.stop()
