"""Run comparison on three tiny runs (one with a live lr change, one read as a run of another process through its
directory only): `%finetune compare` and `nb_finetune.compare` draw three loss and three eval curves, read back
from the figure's data sources, with the live change marked; `%finetune runs` lists them with their settings.
Control case: each curve holds that run's own steps (the runs differ in length)."""

from __future__ import annotations

import pytest

from nb_finetune import finetune
from nb_finetune.core.events import StepEnded

pytest.importorskip("bokeh")


class SetAt:
    def __init__(self, step, **values):
        self.step, self.values, self.run = step, values, None

    def on_event(self, e):
        if isinstance(e, StepEnded) and e.step == self.step:
            self.run.set(**self.values)


@pytest.fixture()
def three_runs(tiny_config):
    out = []
    for name, steps in (("a", 2), ("b", 3), ("c", 4)):
        setter = SetAt(1, lr=5e-4)
        cfg = {**tiny_config, "name": name, "max_steps": steps, "eval_every": 1}
        run = finetune(cfg, callbacks=[setter] if name == "b" else [], start=False)
        setter.run = run
        run.start().wait(timeout=120)
        assert run.status == "finished", run.error
        out.append(run)
    return out


def _sources(fig):
    from bokeh.models import ColumnDataSource

    return {s.name: s.data for s in fig.select({"type": ColumnDataSource}) if s.name}


def test_compare_draws_three_curves_each(three_runs, tiny_config):
    from nb_finetune.compare import compare

    a, b, c = three_runs
    cmp = compare("a", b, str(c.dir))  # by name, as a Run, as a directory (another process's run)
    src = _sources(cmp.figure)
    assert sorted(k for k in src if k.startswith("loss:")) == ["loss:a", "loss:b", "loss:c"]
    assert sorted(k for k in src if k.startswith("eval:")) == ["eval:a", "eval:b", "eval:c"]
    assert [src[f"loss:{n}"]["step"] for n in "abc"] == [[1, 2], [1, 2, 3], [1, 2, 3, 4]]
    assert [len(src[f"eval:{n}"]["value"]) for n in "abc"] == [2, 3, 4]
    assert src["changes:b"]["step"] == [1] and "lr=0.0005" in src["changes:b"]["label"][0]
    assert "changes:a" not in src
    bundle = cmp._repr_mimebundle_()
    assert bundle["image/svg+xml"].count("<polyline") >= 6


def test_magic_compare_and_runs_table(three_runs, tiny_config):
    from IPython.testing.globalipapp import get_ipython

    ip = get_ipython()
    ip.run_line_magic("load_ext", "nb_finetune")
    cmp = ip.run_line_magic("finetune", "compare a b c")
    src = _sources(cmp.figure)
    assert len([k for k in src if k.startswith("eval:")]) == 3
    table = ip.run_line_magic("finetune", "runs")
    rows = table.set_index("name").loc[["a", "b", "c"]]
    assert rows["status"].tolist() == ["finished"] * 3 and rows["steps"].tolist() == [2, 3, 4]
    assert rows["lr"].tolist() == [1e-3] * 3 and rows["metric"].tolist() == ["eval_loss"] * 3
    assert rows["best"].notna().all() and (rows["duration_s"] >= 0).all()
    assert rows["task"].tolist() == ["text-classification"] * 3
