"""The core is headless (STYLE.md 6): importing it pulls in no notebook or plotting package, and ruff's banned-api
rule in `nb_finetune/core/ruff.toml` keeps it that way."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BANNED = ["IPython", "ipywidgets", "bokeh", "jupyter_bokeh", "traitlets"]
HEADLESS_MODULES = [
    "nb_finetune.core",
    "nb_finetune.core.config",
    "nb_finetune.core.events",
    "nb_finetune.core.freezing",
    "nb_finetune.core.data",
    "nb_finetune.core.runs",
    "nb_finetune.core.records",
    "nb_finetune.core.controls",
    "nb_finetune.core.train",
    "nb_finetune.core.tasks.base",
    "nb_finetune.core.tasks.text_classification",
    "nb_finetune.core.tasks.regression",
    "nb_finetune.core.tasks.multi_label",
    "nb_finetune.core.tasks.token_classification",
    "nb_finetune.core.tasks.question_answering",
    "nb_finetune.api",
]

_PROBE = """
import importlib, json, sys
for name in sys.argv[2:]:
    importlib.import_module(name)
print(json.dumps(sorted(m for m in json.loads(sys.argv[1]) if m in sys.modules)))
"""


def loaded_after_import(modules: list[str]) -> list[str]:
    """Which banned top-level packages a fresh interpreter has loaded after importing `modules`."""
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(BANNED), *modules],
        cwd=ROOT,
        env={**_clean_env(), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _clean_env():
    # no PYTHONSTARTUP or inherited PYTHONPATH that could import anything before the probe
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONSTARTUP", "PYTHONPATH")}


def test_core_and_api_import_headless():
    assert loaded_after_import(HEADLESS_MODULES) == []


@pytest.mark.skipif(importlib.util.find_spec("IPython") is None, reason="IPython not installed")
def test_probe_sees_a_banned_import():
    """Negative control: the same probe does report IPython when something imports it."""
    assert "IPython" in loaded_after_import(["nb_finetune.core", "IPython"])


# ------------------------------------------------------------------------------------------------ ruff
requires_ruff = pytest.mark.skipif(importlib.util.find_spec("ruff") is None, reason="ruff not installed")


def ruff_check(path: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", str(path)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@requires_ruff
def test_ruff_passes_on_core():
    proc = ruff_check(ROOT / "nb_finetune" / "core", ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture()
def core_copy(tmp_path):
    """The lint setup of the repository (pyproject + core/ruff.toml) in a temp tree with an empty core package."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    core = tmp_path / "nb_finetune" / "core"
    core.mkdir(parents=True)
    shutil.copy(ROOT / "nb_finetune" / "core" / "ruff.toml", core / "ruff.toml")
    (tmp_path / "nb_finetune" / "__init__.py").write_text("")
    (core / "__init__.py").write_text('"""Headless core."""\n')
    return core


@requires_ruff
@pytest.mark.parametrize(
    "source, banned",
    [
        ("import IPython\n\nprint(IPython)\n", "IPython"),
        ("from IPython.display import display\n\ndisplay(1)\n", "IPython"),
        ("import ipywidgets as w\n\nprint(w)\n", "ipywidgets"),
        ("from bokeh.plotting import figure\n\nprint(figure)\n", "bokeh"),
        ("import jupyter_bokeh\n\nprint(jupyter_bokeh)\n", "jupyter_bokeh"),
        ("from traitlets import Float\n\nprint(Float)\n", "traitlets"),
    ],
)
def test_banned_api_rule_fires_in_core(core_copy, source, banned):
    bad = core_copy / "widgets.py"
    bad.write_text(source)
    proc = ruff_check(core_copy, core_copy.parents[1])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "TID251" in proc.stdout and f"`{banned}` is banned" in proc.stdout, proc.stdout
    assert "nb_finetune.core is headless" in proc.stdout
    # the same file passes outside core/, and the clean copy of core passes: the ban alone made it fail
    bad.unlink()
    assert ruff_check(core_copy, core_copy.parents[1]).returncode == 0
    elsewhere = core_copy.parent / "ui.py"
    elsewhere.write_text(source)
    proc = ruff_check(elsewhere, core_copy.parents[1])
    assert proc.returncode == 0, proc.stdout + proc.stderr
