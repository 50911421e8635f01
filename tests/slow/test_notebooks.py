"""The notebooks in notebooks/ run end to end in a real kernel (what `make demo` does)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


# notebooks that need what CI has not; tests/compat/test_colab_notebook.py checks that their cells are valid
NEEDS = {"colab_check.ipynb": "a checklist for a person on a Colab GPU runtime (installs, GPU, button clicks)"}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.skip(reason=NEEDS[name])) if name in NEEDS else name
        for name in sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    ],
)
def test_notebook_runs(name, tmp_path, monkeypatch):
    import shutil

    import nbformat

    sys.path.insert(0, str(ROOT / "scripts"))
    import run_demo

    if name == "llm.ipynb":  # the tiny Llama through the notebook's one variable; tests/slow/test_llm_real.py: real
        monkeypatch.setenv("NB_FT_LLM_MODEL", "tiny")
    nb_path = tmp_path / name  # run a copy, so runs/ and saved models land in tmp_path
    shutil.copy(ROOT / "notebooks" / name, nb_path)
    assert run_demo.main(str(nb_path)) == 0
    nb = nbformat.read(tmp_path / "executed" / name, as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    if name == "01_quickstart.ipynb":
        before = float(re.search(r"accuracy before fine-tuning: ([0-9.]+)", text).group(1))
        after = float(re.search(r"accuracy after \d+ steps: ([0-9.]+)", text).group(1))
        assert after >= before + 0.10, (before, after)
    if name == "ner.ipynb":
        before = float(re.search(r"entity F1 before fine-tuning: ([0-9.]+)", text).group(1))
        after = float(re.search(r"entity F1 after \d+ steps: ([0-9.]+)", text).group(1))
        assert after >= before + 0.15, (before, after)
    if name == "qa.ipynb":
        before = float(re.search(r"f1 before fine-tuning: ([0-9.]+)", text).group(1))
        after = float(re.search(r"f1 after \d+ steps: ([0-9.]+)", text).group(1))
        assert after >= before + 0.4, (before, after)
    if name == "regression.ipynb":
        before = float(re.search(r"R2 before fine-tuning: (-?[0-9.]+)", text).group(1))
        after = float(re.search(r"R2 after \d+ steps: (-?[0-9.]+)", text).group(1))
        assert before < 0.1 and after >= 0.3, (before, after)
    if name == "llm.ipynb":
        assert re.search(r"format followed before fine-tuning: \d/3; after 30 steps: \d/3", text), text[-2000:]
        assert "adapter_config.json" in text and "model.safetensors" in text
    if name in ("image_classification.ipynb", "audio_classification.ipynb"):
        before = float(re.search(r"accuracy before fine-tuning: ([0-9.]+)", text).group(1))
        after = float(re.search(r"accuracy after \d+ steps: ([0-9.]+)", text).group(1))
        assert after >= before + 0.3, (name, before, after)
    if name == "multi_label.ipynb":
        before = float(re.search(r"f1_micro before fine-tuning: ([0-9.]+)", text).group(1))
        after = float(re.search(r"f1_micro after \d+ steps: ([0-9.]+)", text).group(1))
        assert after >= max(0.7, before + 0.2), (before, after)
