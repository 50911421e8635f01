"""What a saved, exported or shared notebook shows of a run: the final output's HTML summary and evaluation table,
the SVG snapshot, `Run._repr_html_`; checked through nbconvert's own HTML exporter on the outputs a real run made."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("bokeh")
nbformat = pytest.importorskip("nbformat")
nbconvert = pytest.importorskip("nbconvert")

from nb_finetune import finetune  # noqa: E402
from nb_finetune.ui.panel import Panel  # noqa: E402
from nb_finetune.ui.summary import eval_table_html  # noqa: E402
from nb_finetune.ui.svg import nice_ticks, tick_labels  # noqa: E402


def _notebook(outputs: list[dict]) -> nbformat.NotebookNode:
    """One code cell holding `outputs` as display_data, as the notebook file saves them (no widget state)."""
    cell = nbformat.v4.new_code_cell("%%finetune exported\n...")
    cell.outputs = [nbformat.v4.new_output("display_data", data=o) for o in outputs if o]
    nb = nbformat.v4.new_notebook()
    nb.cells = [cell]
    return nb


def test_exported_html_of_a_finished_run_has_its_summary_and_evaluation_table(tiny_config, displays, monkeypatch):
    """Control: before this change the panel's output fell back to ipywidgets' `VBox(children=(HTML(value=...` repr
    and the final output held only the plots, with the model's local path as the SVG title."""
    run = finetune({**tiny_config, "name": "exported", "max_steps": 12, "eval_every": 4}, start=False)
    panel = Panel(run, renderer="widget", refresh_seconds=0.05)
    run.subscribe(panel)
    panel.display()
    run.start()
    panel.follow().join(0)
    run.wait(60)
    panel._thread.join(10)
    assert run.status == "finished"
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(_notebook(displays.outputs))
    text = re.sub(r"<[^>]+>", " ", body)
    assert "VBox(" not in body and "HTML(value=" not in body
    assert "exported" in text and "finished" in text
    acc = run.metrics["eval_accuracy"]
    assert f"{acc:.4f}" in text  # the final metrics
    assert body.count('class="nbft-eval-row') == 3  # the evaluation table: one row per evaluation (steps 4, 8, 12)
    assert body.count("★") >= 1  # the best one marked
    # the SVG: the run's name and final metrics in its title, no local path of this machine
    svg = displays.outputs[-1]["image/svg+xml"]
    ET.fromstring(svg)
    assert "exported — " in svg and f"accuracy {acc:.4f}" in svg
    assert str(tiny_config["model"]) not in svg and "/tmp" not in svg
    # text/plain (what a terminal or a text-only renderer shows): the summary, not a widget repr
    plain = displays.outputs[-1]["text/plain"]
    assert plain.startswith("exported: finished") and "eval loss" in plain
    # the live panel's own evaluation table had one row per evaluation too
    assert panel.eval_table.value.count('class="nbft-eval-row') == 3
    # Run's rich repr: state, progress, best metric, link to its directory
    rich = run._repr_html_()
    assert "finished" in rich and "step 12/12" in rich and "best accuracy" in rich and "<a href=" not in rich
    monkeypatch.chdir(run.run_dir.path.parent)  # a notebook beside its runs: a relative link that JupyterLab opens
    assert f'<a href="{run.run_dir.path.name}"' in run._repr_html_()


def test_eval_table_marks_the_best_row_and_names_losses_apart():
    rows = [
        {"step": 10, "epoch": 0.5, "train_loss": 0.9, "metrics": {"eval_loss": 0.8, "eval_f1": 0.5}, "best": False},
        {"step": 20, "epoch": 1.0, "train_loss": 0.7, "metrics": {"eval_loss": 0.6, "eval_f1": 0.7}, "best": True},
    ]
    out = eval_table_html(rows)
    assert out.count("<tr class") == 2 and "train loss" in out and "eval loss" in out
    best_row = [r for r in out.split("<tr") if "★" in r]
    assert len(best_row) == 1 and "0.7000" in best_row[0]
    # a see-through tint under the theme's own text colour (control: --jp-brand-color3 is a light blue in the dark
    # theme too, under its light text)
    assert re.search(r"background:rgba\(0, 114, 178, 0\.\d+\)", best_row[0]) and "brand-color3" not in out


def test_svg_ticks_are_round_and_cover_the_data():
    lo, hi, ticks = nice_ticks(0.6912, 0.6961)
    assert lo <= 0.6912 and hi >= 0.6961 and ticks == [0.69, 0.692, 0.694, 0.696, 0.698]
    assert nice_ticks(1, 24, 6)[2] == [0, 5, 10, 15, 20, 25]
    # one notation per axis (control: "4e-4, 6e-4, 8e-4, 0.001" before)
    assert tick_labels(nice_ticks(4e-4, 1e-3)[2]) == ["4e-4", "6e-4", "8e-4", "1e-3"]
    assert tick_labels([0.69, 0.695, 0.7]) == ["0.69", "0.695", "0.7"]
