"""The experiment plots: the LR range test figure carries the curve and the suggestions; its SVG fallback draws
the lines. Control case: a result without suggestions draws no marker lines."""

from __future__ import annotations

import pytest

pytest.importorskip("bokeh")

from bokeh.models import ColumnDataSource, Span  # noqa: E402

from nb_finetune.core.lr_find import LRFindResult  # noqa: E402
from nb_finetune.ui.experiments import bundle, lr_find_figure, lr_find_svg  # noqa: E402


def _result(valley=1e-3, steepest=3e-3):
    lrs = [1e-6 * 1.5**i for i in range(30)]
    sm = [1.0 - 0.02 * i for i in range(30)]
    return LRFindResult(lrs, sm, sm, steepest, valley, 1e-3, "diverged")


def test_lr_find_figure_has_curve_and_markers():
    res = _result()
    f = lr_find_figure(res)
    srcs = {s.name: s for s in f.select(type=ColumnDataSource)}
    assert srcs["smoothed"].data["lr"] == res.lrs and srcs["smoothed"].data["loss"] == res.smoothed
    spans = sorted(s.location for s in f.select(type=Span))
    assert spans == [1e-3, 3e-3]
    svg = lr_find_svg(res)
    assert svg.count("<polyline") == 2 and "valley" in svg
    b = bundle(f, svg, str(res))
    assert set(b) == {"text/html", "image/svg+xml", "text/plain"}
    # control: no suggestions, no markers
    assert not list(lr_find_figure(_result(None, None)).select(type=Span))


def test_sweep_view_one_curve_per_trial():
    from nb_finetune.ui.sweep_view import sweep_figure, trials_html

    rows = [
        {
            "trial": 0,
            "run": "trial-000",
            "state": "done",
            "value": 0.5,
            "params": {"lr": 1e-3},
            "curve": [(2, 0.6), (4, 0.5)],
        },
        {"trial": 1, "run": "trial-001", "state": "pruned", "value": None, "params": {"lr": 1.0}, "curve": [(2, 9.0)]},
    ]
    f = sweep_figure(rows, "eval_loss")
    srcs = {s.name: s.data for s in f.select(type=ColumnDataSource)}
    assert srcs["trial:0"]["value"] == [0.6, 0.5] and srcs["trial:1"]["step"] == [2]
    table = trials_html(rows, "eval_loss", rows[0])
    assert table.count("<tr") == 3 and "pruned" in table and "font-weight:bold" in table
    with_bars = sweep_figure(rows, "eval_loss", {"lr": 1.0})
    assert {s.name for s in with_bars.select({"type": ColumnDataSource})} >= {"trial:0", "trial:1", "importance"}
