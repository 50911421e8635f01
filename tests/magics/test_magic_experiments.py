"""The experiment verbs through a real InteractiveShell: `%%finetune NAME --sweep --wait` runs the trials and binds
the Sweep, `%%finetune lr_find NAME` binds the range test, `--lr-find` parses, and `%finetune stop` stops a sweep.
Control case: a cell without a sweep: block is refused with --sweep."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError

from nb_finetune.magics.parsing import parse_cell_line, parse_line

pytest.importorskip("optuna")


@pytest.fixture()
def ip(tmp_path, tiny_model_dir, tiny_df):
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()
    shell.run_line_magic("load_ext", "nb_finetune")
    shell.run_line_magic("config", f"FinetuneMagic.output_dir = {str(tmp_path / 'runs')!r}")
    shell.run_line_magic("config", "FinetuneMagic.renderer = 'static'")
    shell.user_ns.update(model_dir=tiny_model_dir, df=tiny_df)
    return shell


BODY = """model: {{model_dir}}
data: {{df}}
max_steps: 2
eval_every: 1
save_every: null
"""


def test_parse_experiment_verbs():
    assert parse_cell_line("lr_find sent").lr_find and parse_cell_line("lr_find sent").name == "sent"
    assert parse_cell_line("sent --sweep --resume --wait").sweep
    assert parse_cell_line("lr_find").name == "lr_find"  # alone it is a run name
    assert parse_line("compare a b c").args == ["a", "b", "c"]


def test_sweep_cell_wait_and_lr_find_cell(ip, tmp_path):
    from nb_finetune.sweeps import Sweep

    ip.run_cell_magic(
        "finetune", "sw --sweep --wait", BODY + "sweep: {lr: 'choice(1e-3, 3e-3)', n_trials: 2, sampler: grid}\n"
    )
    s = ip.user_ns["sw"]
    assert isinstance(s, Sweep) and s.status == "finished", s.error
    assert sorted(r["params"]["lr"] for r in s.trials) == [1e-3, 3e-3]
    assert (tmp_path / "runs" / "sw" / "sweep.db").is_file()
    cell = s.promote()
    assert "train: {{df}}" in cell  # an object written back as the variable that holds it
    from nb_finetune import finetune
    from nb_finetune.core.config import FinetuneConfig

    promoted = FinetuneConfig.from_cell(cell.split("\n", 1)[1], ip.user_ns)
    assert promoted.lr == s.best["params"]["lr"] and promoted.data.train is ip.user_ns["df"]
    assert finetune(promoted.replace(name="sw_best"), dry_run=True).total_steps == 2
    ip.run_line_magic("finetune", "stop sw")  # a finished sweep: nothing to stop, no error

    ip.run_cell_magic("finetune", "lr_find lf", BODY)
    res = ip.user_ns["lf_lr_find"]
    assert res.lrs and res.settings["num_steps"] >= 20
    assert not (tmp_path / "runs" / "lf").exists()  # the range test trains no run

    with pytest.raises(UsageError, match="no sweep: block"):
        ip.run_cell_magic("finetune", "nosweep --sweep", BODY)
