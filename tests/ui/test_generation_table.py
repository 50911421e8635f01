"""A causal LM's `generations` extra (kind "table"): a small prompt / first / latest table in the panel (HTML under
the plots), updated in place at each evaluation, and in what a finished run leaves behind (the SVG snapshot and the HTML summary), as the
confusion matrix is for classification."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

pytest.importorskip("bokeh")

pytest.importorskip("ipywidgets")

from nb_finetune import finetune  # noqa: E402
from nb_finetune.core.events import EvalEnded  # noqa: E402
from nb_finetune.ui.panel import Panel  # noqa: E402
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


def test_generation_table_is_html_in_the_panel_and_updated(tiny_config):
    """Control: a Bokeh DataTable (and a Div) in the plots: BokehJS's core bundle, the only one the panel loads, has
    neither model, so the browser refused the whole document ("could not resolve type 'Div'") and every plot went
    blank at the first evaluation of a causal LM. Now the table is the panel's HTML, updated at each evaluation."""
    plots = PlotSet()
    plots.set_extras({"generations": table("Eight.")})
    assert plots.extras["generations"]["rows"][0][2] == "Eight."  # kept for the snapshot
    assert plots.extras_row.children == [] and plots.root.children == [plots.grid]  # no Bokeh model for it
    assert not any(type(m).__name__ in ("DataTable", "Div") for m in plots.root.references())
    run = finetune({**tiny_config, "name": "gens"}, start=False)
    panel = Panel(run, renderer="static")
    panel.state.on_event(
        EvalEnded(step=4, epoch=0.5, metrics={"eval_loss": 1.0}, extras={"generations": table("Eight.")})
    )
    panel._render_text(force=True)
    shown = panel.task_tables.value
    assert "Generations" in shown and "What is 4 &lt;b&gt;plus&lt;/b&gt; 4?" in shown and "<b>plus" not in shown
    assert shown.count('class="nbft-table-row"') == 1
    later = table("ANSWER: 8 | CONFIDENCE: high")
    panel.state.on_event(EvalEnded(step=8, epoch=1.0, metrics={"eval_loss": 0.5}, extras={"generations": later}))
    panel._render_text(force=True)
    # the latest column moved on, the first one stays
    assert "ANSWER: 8 | CONFIDENCE: high" in panel.task_tables.value and panel.task_tables.value.count("Eight.") == 1


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
