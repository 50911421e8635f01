"""`make demo`'s runner (scripts/run_demo.py) end to end on a small notebook of the demo's shape: a real kernel
through nbclient, a background run with its panel, `wait()`, `predict`, then the runner's shutdown path. A newcomer's
first command must end cleanly: exit code 0 and nothing on stderr that looks like a traceback, from the runner or
from the kernel (whose stderr the runner's process inherits)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"

CELLS = [
    f"import sys; sys.path.insert(0, {str(TESTS)!r})\n"
    "from conftest import build_tiny_model, make_texts\n"
    "import pandas as pd\n"
    "model_dir = build_tiny_model('model')\n"
    "texts, labels = make_texts(192, seed=1)\n"
    "df = pd.DataFrame({'text': texts, 'label': labels})",
    "%load_ext nb_finetune",
    "%%finetune demo\nmodel: {{model_dir}}\ndata: {{df}}\nmax_steps: 20\neval_every: 10\noutput_dir: runs\n",
    "demo.wait()\nprint(demo.status)",
    "demo.predict(['a great film', 'a dull plot'])",
]


def test_the_demo_runner_ends_cleanly(tmp_path):
    """Control: the runner did execute every cell (the run finished and its summary was echoed), so a clean stderr
    is not a runner that stopped early."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in CELLS]
    path = tmp_path / "demo.ipynb"
    nbformat.write(nb, path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NB_FINETUNE_INDEX_DIR": str(tmp_path / "index")}
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "run_demo.py"), str(path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "finished" in r.stdout and f"-> {tmp_path / 'executed' / 'demo.ipynb'}" in r.stdout, r.stdout[-3000:]
    for bad in ("Traceback", "RuntimeError", "zmq gc socket", "Exception ignored", "Exception in thread"):
        assert bad not in r.stderr, r.stderr[-3000:]
