"""The in-process magic tests (tests/magics: `%%finetune`, `%finetune`, completion) pass on Colab's IPython 7.34 too.

They run in a pytest of `.venv-colab` (pytest is one of Colab's packages): the magics, their `UsageError`s,
`%config` traits and the completion fallback for IPython < 8.6 are exercised on the old stack, in process,
where the kernel tests (tests/kernel, `colab` ids) cover the same through a real kernel.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COLAB_PYTHON = ROOT / ".venv-colab" / "bin" / "python"


@pytest.mark.compat
def test_magic_tests_pass_on_the_colab_stack():
    if not COLAB_PYTHON.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{COLAB_PYTHON} is missing: `make test` builds it with `make venv-colab`")
        pytest.skip(f"{COLAB_PYTHON} is missing: run `make venv-colab`")
    cmd = [
        str(COLAB_PYTHON),
        "-m",
        "pytest",
        "tests/magics",
        "-q",
        "-p",
        "no:cacheprovider",
        "-m",
        "not slow and not gpu",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("VIRTUAL_ENV", None)
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    tail = (p.stdout + p.stderr)[-6000:]
    assert p.returncode == 0, f"tests/magics fail on IPython 7.34 / ipykernel 6.17.1 / ipywidgets 7.7.1:\n{tail}"
    assert " passed" in tail, tail
