"""The catalogue's cell rows typed into a real `%%finetune` cell: the user sees an IPython UsageError (no
traceback) with the same words and the same line numbers. Control: a valid body through the same shell succeeds."""

from __future__ import annotations

import pytest
from catalogue_rows import ROWS

CELL_ROWS = [r for r in ROWS if hasattr(r.act, "cell")]


@pytest.fixture(scope="module")
def ip():
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()
    shell.run_line_magic("load_ext", "nb_finetune")
    return shell


def test_there_are_cell_rows():
    assert len(CELL_ROWS) >= 25


@pytest.mark.parametrize("row", CELL_ROWS, ids=[r.id for r in CELL_ROWS])
def test_cell_row_through_the_magic(row, ip, tmp_path):
    from IPython.core.error import UsageError

    text, ns = row.act.cell
    ip.user_ns.update(ns)
    res = ip.run_cell(f"%%finetune --dry-run\noutput_dir: {tmp_path}\n" + text)
    err = res.error_in_exec
    assert isinstance(err, UsageError), repr(err)
    msg = str(err)
    # two lines were put in front of the row's body: its line numbers move by one (the magic line is line 1)
    words = [w.replace(f"line {n}", f"line {n + 1}") for w in row.words for n in [_line(w)]]
    assert all(w in msg for w in words), (words, msg)


def _line(word: str) -> int:
    import re

    m = re.search(r"line (\d+)", word)
    return int(m.group(1)) if m else -10


def test_a_valid_cell_through_the_same_shell(ip, tmp_path, tiny_model_dir, tiny_df):
    ip.user_ns.update(model_dir=tiny_model_dir, df=tiny_df)
    res = ip.run_cell(f"%%finetune --dry-run\noutput_dir: {tmp_path}\nmodel: {{{{model_dir}}}}\ndata: {{{{df}}}}\n")
    assert res.success, res.error_in_exec


@pytest.mark.parametrize("name", ["../../escape", "/tmp/abs", "a/b", ".."])
@pytest.mark.parametrize("where", ["line", "body"])
def test_a_run_name_that_leaves_output_dir_is_refused_in_the_cell(name, where, ip, tmp_path, tiny_model_dir, tiny_df):
    """`%%finetune ../../escape` or `name: ../../escape` in the body: a UsageError naming the run name; nothing is
    written anywhere under tmp_path. Control: the same cell with a plain name would train (test_magic.py)."""
    from IPython.core.error import UsageError

    ip.user_ns.update(model_dir=tiny_model_dir, df=tiny_df)
    out = tmp_path / "a" / "b" / "runs"
    head = f"%%finetune {name}\n" if where == "line" else f"%%finetune --dry-run\nname: '{name}'\n"
    res = ip.run_cell(f"{head}output_dir: {out}\nmodel: {{{{model_dir}}}}\ndata: {{{{df}}}}\n")
    assert isinstance(res.error_in_exec, UsageError) and "run name" in str(res.error_in_exec), res.error_in_exec
    assert not (tmp_path / "a").exists() and not (tmp_path / "escape").exists()
