"""notebooks/colab_check.ipynb is run by a person on Colab, never in CI: here its cells are checked to be valid
(Python after IPython's magic transforms, `%%finetune` configs the schema accepts, `%finetune` lines that parse)."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "colab_check.ipynb"


@pytest.fixture(scope="module")
def cells():
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    return [c.source for c in nb.cells if c.cell_type == "code"]


def test_every_code_cell_compiles(cells):
    from IPython.core.inputtransformer2 import TransformerManager

    tm = TransformerManager()
    for i, source in enumerate(cells):
        python = tm.transform_cell(source)
        compile(python, f"colab_check.ipynb cell {i}", "exec")


def test_finetune_cells_are_valid_configs_and_commands(cells):
    import pandas as pd

    from nb_finetune.core.config import FinetuneConfig
    from nb_finetune.magics.parsing import parse_cell_line, parse_line

    df = pd.DataFrame({"text": ["good", "bad"], "label": ["positive", "negative"]})
    namespace = {"model_path": "/content/model", "train": df, "test": df}
    configs, lines = [], []
    for source in cells:
        first, _, body = source.partition("\n")
        if first.startswith("%%finetune"):
            args = parse_cell_line(first.removeprefix("%%finetune"))
            configs.append((args, FinetuneConfig.from_cell(body, namespace)))
        else:
            lines += [ln.removeprefix("%finetune") for ln in source.splitlines() if ln.startswith("%finetune ")]
    assert [a.name for a, _ in configs] == ["sentiment", "waited"]
    assert [a.wait for a, _ in configs] == [False, True]
    assert configs[0][1].max_steps >= 1000, "long enough to try the controls before stopping it"
    commands = [parse_line(ln).command for ln in lines]
    assert {"help", "set", "show"} <= set(commands), commands


def test_both_install_routes_and_the_pin_comparison_are_there(cells):
    text = "\n".join(cells)
    assert 'target = f"{WHEEL}[notebook]"' in text
    assert 'target = f"nb-finetune[notebook] @ {GIT_URL}"' in text
    assert "before = pip_freeze()" in text and "after = pip_freeze()" in text
    assert "assert not moved and not removed" in text
