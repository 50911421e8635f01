"""The panel through the magic, in a real InteractiveShell: `--paused`, `%finetune show`, the renderer setting."""

from __future__ import annotations

import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("bokeh")


@pytest.fixture()
def ip(tmp_path, tiny_model_dir, tiny_df, displays):
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()
    shell.run_line_magic("load_ext", "nb_finetune")
    shell.run_line_magic("config", f"FinetuneMagic.output_dir = {str(tmp_path / 'runs')!r}")
    shell.run_line_magic("config", "FinetuneMagic.renderer = 'static'")
    shell.user_ns.update(model_dir=tiny_model_dir, df=tiny_df)
    yield shell
    shell.run_line_magic("config", "FinetuneMagic.renderer = 'auto'")
    from nb_finetune import api

    for r in api.active_runs():
        if r.started:
            r.abort()
            r.wait(timeout=60)


def test_paused_cell_waits_for_start(ip):
    res = ip.run_cell("%%finetune later --paused\nmodel: {{model_dir}}\ndata: {{df}}\nmax_steps: 4\n")
    assert res.success, res.error_in_exec
    run = ip.user_ns["later"]
    assert not run.started and run.status == "queued"
    with pytest.raises(Exception, match="has not started"):
        run.wait(timeout=1)
    run.configure(lr=5e-4)
    run.start()
    run.wait(timeout=120)
    assert run.status == "finished" and run.config.lr == 5e-4


def test_paused_with_wait_is_refused(ip):
    res = ip.run_cell("%%finetune both --paused --wait\nmodel: {{model_dir}}\ndata: {{df}}\n")
    assert not res.success and "--paused" in str(res.error_in_exec)


def test_show_rebuilds_the_panel_of_a_finished_run(ip, displays):
    assert ip.run_cell("%%finetune shown\nmodel: {{model_dir}}\ndata: {{df}}\nmax_steps: 12\nlog_every: 2\n").success
    run = ip.user_ns["shown"]
    run.wait(timeout=120)
    n = len(displays.calls)
    res = ip.run_cell("%finetune show shown")
    assert res.success, res.error_in_exec
    new = displays.calls[n:]
    widget = [c for c in new if "application/vnd.jupyter.widget-view+json" in c["data"]]
    assert widget, "the panel is shown again"
    import time

    end = time.monotonic() + 30
    while not any("image/svg+xml" in c["data"] for c in displays.calls[n:]):
        assert time.monotonic() < end, "the re-attached panel of a finished run ends with its final plots"
        time.sleep(0.05)
    svg = next(c["data"]["image/svg+xml"] for c in displays.calls[n:] if "image/svg+xml" in c["data"])
    assert "shown" in svg and "finished" in svg and svg.count("<polyline") >= 2


def test_show_of_an_unknown_run_names_it(ip):
    res = ip.run_cell("%finetune show nosuchrun")
    assert not res.success and "nosuchrun" in str(res.error_in_exec)


def test_bad_renderer_is_a_usage_error(ip):
    ip.run_line_magic("config", "FinetuneMagic.renderer = 'fancy'")
    res = ip.run_cell("%%finetune r\nmodel: {{model_dir}}\ndata: {{df}}\nmax_steps: 2\n")
    assert (
        not res.success
        and "renderer" in str(res.error_in_exec)
        and "auto, widget, display, static" in str(res.error_in_exec)
    )
    from nb_finetune import api

    assert "r" not in [x.name for x in api.all_runs()]  # refused before the run was created
