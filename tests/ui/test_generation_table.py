"""A causal LM's `generations` extra (kind "table") in the panel: a small prompt / first / latest table, updated in
place at each evaluation."""

from __future__ import annotations

import pytest

pytest.importorskip("bokeh")

from nb_finetune.ui.plots import PlotSet  # noqa: E402


def table(latest: str):
    return {
        "kind": "table",
        "title": "Generations",
        "columns": ["prompt", "first", "latest"],
        "rows": [["What is 4 plus 4?", "Eight.", latest]],
    }


def test_generation_table_is_drawn_and_updated():
    """Control: a second evaluation replaces the cells of the same table (no second table is added)."""
    plots = PlotSet()
    plots.set_extras({"generations": table("Eight.")})
    kind, box, src = plots.extra_figs["generations"]
    assert kind == "table" and src.data["c0"] == ["What is 4 plus 4?"] and src.data["c2"] == ["Eight."]
    assert box in plots.extras_row.children
    plots.set_extras({"generations": table("ANSWER: 8 | CONFIDENCE: high")})
    assert plots.extra_figs["generations"][1] is box and len(plots.extras_row.children) == 1
    assert src.data["c2"] == ["ANSWER: 8 | CONFIDENCE: high"]
    assert plots.extras["generations"]["rows"][0][2].startswith("ANSWER")
