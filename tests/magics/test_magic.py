"""The magic through a real InteractiveShell (`ip.run_cell`), as a notebook user types it."""

from __future__ import annotations

import pytest

from nb_finetune.errors import FinetuneError
from nb_finetune.magics.parsing import parse_cell_line, parse_line


@pytest.fixture()
def ip(tmp_path, tiny_model_dir, tiny_df):
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()
    shell.run_line_magic("load_ext", "nb_finetune")
    shell.run_line_magic("config", f"FinetuneMagic.output_dir = {str(tmp_path / 'runs')!r}")
    shell.user_ns.update(model_dir=tiny_model_dir, df=tiny_df)
    yield shell
    from nb_finetune import api

    for r in api.active_runs():
        r.abort()
        r.wait(timeout=60)


def wait_for(cond, timeout=60.0):
    import time

    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.02)


def cell(ip, text):
    return ip.run_cell(text)


def test_cell_runs_in_background_and_binds_run(ip, tmp_path):
    res = cell(ip, "%%finetune demo\nmodel: {{model_dir}}\ndata: {{df}}\nepochs: 1\nlog_every: 1\n")
    assert res.success, res.error_in_exec
    run = ip.user_ns["demo"]
    assert type(run).__name__ == "Run"
    run.wait(timeout=120)
    assert run.status == "finished"
    assert run.dir.parent == tmp_path / "runs"
    assert run.metrics["eval_accuracy"] >= 0


def test_wait_flag_blocks_until_done(ip):
    res = cell(ip, "%%finetune waited --wait\nmodel: {{model_dir}}\ndata: {{df}}\nmax_steps: 3\n")
    assert res.success, res.error_in_exec
    assert ip.user_ns["waited"].done and ip.user_ns["waited"].step == 3


def test_dry_run_prints_layer_map_and_trains_nothing(ip, tmp_path, capsys):
    res = cell(ip, "%%finetune dry --dry-run\nmodel: {{model_dir}}\ndata: {{df}}\nfreeze: bottom 1\nbatch_size: 8\n")
    assert res.success, res.error_in_exec
    out = capsys.readouterr().out
    assert "blocks.0" in out and "frozen" in out and "trainable" in out
    assert "per epoch" in out and "memory estimate" in out
    assert "dry" not in ip.user_ns
    assert not (tmp_path / "runs" / "dry").exists()


def test_rerunning_an_active_run_is_a_usage_error(ip, capsys):
    body = "%%finetune busy\nmodel: {{model_dir}}\ndata: {{df}}\nmax_steps: 1000000\n"
    assert cell(ip, body).success
    run = ip.user_ns["busy"]
    res = cell(ip, body)
    assert not res.success
    err = type(res.error_in_exec).__name__
    assert err == "UsageError"
    assert "still" in str(res.error_in_exec) and "%finetune stop busy" in str(res.error_in_exec)
    assert cell(ip, "%finetune stop busy").success
    run.wait(timeout=60)
    assert run.status == "stopped" and run.reason == "user" and run.checkpoints


def test_finished_run_rerun_writes_versioned_dir(ip):
    body = "%%finetune again --wait\nmodel: {{model_dir}}\ndata: {{df}}\nmax_steps: 2\n"
    assert cell(ip, body).success
    first = ip.user_ns["again"].dir
    assert cell(ip, body).success
    second = ip.user_ns["again"].dir
    assert first.name == "again" and second.name == "again-2"


@pytest.mark.parametrize(
    "body, needle",
    [
        ("model: {{model_dir}}\ndata: {{df}}\nlrr: 1e-3\n", "line 4 (lrr): unknown key 'lrr'. Did you mean 'lr'?"),
        (
            "model: {{model_dir}}\ndata:\n  train: {{df}}\n  label: sentiment\n",
            "column 'sentiment' is not in data.train",
        ),
        ("model: {{nope}}\ndata: {{df}}\n", "no variable 'nope'"),
        ("model: /no/such/dir\ndata: {{df}}\n", "does not exist"),
        ("model: {{model_dir}}\ndata: missing.csv\n", "file 'missing.csv' does not exist"),
    ],
)
def test_bad_input_is_a_usage_error_without_traceback(ip, body, needle):
    res = cell(ip, "%%finetune bad\n" + body)
    assert not res.success
    assert type(res.error_in_exec).__name__ == "UsageError"
    assert needle in str(res.error_in_exec)


def test_line_commands_steer_a_run(ip):
    body = (
        "%%finetune steer\nmodel: {{model_dir}}\ndata: {{df}}\nmax_steps: 1000000\nlog_every: 1\nwarmup: 0\nlr: 1e-5\n"
    )
    assert cell(ip, body).success
    run = ip.user_ns["steer"]
    wait_for(lambda: run.step >= 2)
    assert cell(ip, "%finetune set steer lr=5e-4").success
    wait_for(lambda: run.history["lr"].dropna().max() > 1e-4)  # the new base lr reached the optimizer
    assert cell(ip, "%finetune pause steer").success
    wait_for(lambda: run.status == "paused")
    paused_at = run.step
    assert cell(ip, "%finetune resume steer").success
    wait_for(lambda: run.step > paused_at + 1)
    res = cell(ip, "%finetune set steer batch_size=3")
    assert not res.success and "cannot change during a run" in str(res.error_in_exec)
    assert cell(ip, "%finetune stop steer").success
    run.wait(timeout=60)
    assert run.status == "stopped"
    applied = [r for r in run.run_dir.read_metrics() if r.get("event") == "ControlApplied"]
    assert [r["command"] for r in applied] == ["set", "pause", "resume", "stop"]
    assert all(r["ok"] for r in applied)


def test_parse_line_and_cell_line():
    assert parse_line("set s lr=1e-5 epochs=4").options == {"lr": 1e-5, "epochs": 4}
    assert parse_line("stop s --no-save").options == {"save": False}
    assert parse_cell_line("name --wait --dry-run").wait
    with pytest.raises(FinetuneError, match="Did you mean --wait"):
        parse_cell_line("name --wiat")
    with pytest.raises(FinetuneError, match="Did you mean 'stop'"):
        parse_line("stpo x")
    with pytest.raises(FinetuneError, match="identifier"):
        parse_cell_line("my-run")
