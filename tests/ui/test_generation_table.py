"""A causal LM's `generations` extra (kind "table"): a small prompt / first / latest table in the panel, updated in
place at each evaluation, and in what a finished run leaves behind (the SVG snapshot and the HTML summary), as the
confusion matrix is for classification."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

pytest.importorskip("bokeh")

from bokeh.models import Div  # noqa: E402

from nb_finetune.ui.plots import PlotSet  # noqa: E402
from nb_finetune.ui.summary import summary_html  # noqa: E402
from nb_finetune.ui.svg import run_svg  # noqa: E402


def table(latest: str):
    return {
        "kind": "table",
        "title": "Generations",
        "columns": ["prompt", "first", "latest"],
        "rows": [["What is 4 <b>plus</b> 4?", "Eight.", latest]],
    }


def test_generation_table_is_drawn_and_updated():
    """Control: a second evaluation replaces the text of the same table (no second table is added). The table is
    HTML in a Div: a Bokeh DataTable needs the tables bundle of BokehJS, which the panel does not load."""
    plots = PlotSet()
    plots.set_extras({"generations": table("Eight.")})
    kind, box, _ = plots.extra_figs["generations"]
    assert kind == "table" and isinstance(box, Div)
    assert "What is 4 &lt;b&gt;plus&lt;/b&gt; 4?" in box.text and "<b>plus" not in box.text  # escaped
    assert box in plots.extras_row.children
    before = plots.structure
    plots.set_extras({"generations": table("ANSWER: 8 | CONFIDENCE: high")})
    assert plots.extra_figs["generations"][1] is box and len(plots.extras_row.children) == 1
    assert "ANSWER: 8 | CONFIDENCE: high" in box.text and plots.structure > before
    assert plots.extras["generations"]["rows"][0][2].startswith("ANSWER")
    assert not any(m.__class__.__name__ == "DataTable" for m in plots.root.references())


def test_generations_are_in_the_svg_snapshot_and_the_html_summary():
    """Control: a "table" entry was skipped by both (only "matrix" and "bars" were drawn)."""
    long = "Eight, because four and four make eight. " * 10
    extras = {"generations": table(long)}
    svg = run_svg({"extras": extras}, title="lm", state="finished")
    root = ET.fromstring(svg)
    # what each text element shows (its hover title apart)
    texts = [(t.text or "") + "".join(c.tail or "" for c in t) for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "Generations" in texts and "prompt" in texts and "latest" in texts
    cut = [t for t in texts if t.startswith("Eight, because") and t != "Eight, because"]
    assert cut and all(len(t) < len(long) for t in cut)  # cut to its column ...
    titles = ["".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}title")]
    assert long.strip() in titles  # ... the whole text on hover
    html = summary_html("lm", {"state": "finished", "extras": extras})
    assert html.count('class="nbft-table-row"') == 1 and "What is 4 &lt;b&gt;plus&lt;/b&gt; 4?" in html
    assert long.strip() in html and "Generations" in html
    # a matrix is not a table
    matrix = {"kind": "matrix", "title": "Confusion", "rows": ["a"], "cols": ["a"], "values": [[1]]}
    assert "nbft-table-row" not in summary_html("c", {"state": "finished", "extras": {"confusion": matrix}})
