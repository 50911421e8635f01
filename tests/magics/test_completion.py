"""Completion inside `%%finetune` cells: the IPython >= 8.6 matcher through a real InteractiveShell, the fallback
for older IPython (7.34 on Colab) through the same shell and through a completer shaped like 7.34's, and a real
kernel's complete_reply. The whole file also runs under IPython 7.34 (`.venv-colab`), where the fallback is the
path every test takes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nb_finetune.core.config import FinetuneConfig, task_specific_keys
from nb_finetune.core.tasks.base import registry, task_names
from nb_finetune.magics import completion
from nb_finetune.magics.completion import MATCHER_ID, finetune_completions

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def shell():
    from IPython.testing.globalipapp import get_ipython

    ip = get_ipython()
    ip.run_line_magic("load_ext", "nb_finetune")
    completion.install(ip)  # `load_ext` is a no-op when another test loaded it already
    yield ip
    completion.install(ip)  # leave the default API installed for the tests after this one


def complete(ip, text: str, offset: int | None = None) -> list[tuple[str, str, str]]:
    """(replaced text, completion text, type) for each completion, as a frontend applies them."""
    from IPython.core.completer import provisionalcompleter

    offset = len(text) if offset is None else offset
    with provisionalcompleter():
        return [(text[c.start : c.end], c.text, c.type) for c in ip.Completer.completions(text, offset)]


def texts(ip, text: str) -> list[str]:
    return [t for _, t, _ in complete(ip, text)]


# ------------------------------------------------------------------------------------------------- v2 (IPython >= 8.6)
def test_key_prefix_completes_to_key_colon_with_help(shell):
    got = complete(shell, "%%finetune demo\nmodel: x\nmax_st")
    assert got == [("max_st", "max_steps: ", got[0][2])]
    help_text = FinetuneConfig.model_fields["max_steps"].description
    assert got[0][2].startswith("int, live · ") and help_text[:40] in got[0][2]


def test_alias_is_offered_with_its_canonical_name(shell):
    got = {t: ty for _, t, ty in complete(shell, "%%finetune\nlearning_")}
    assert got["learning_rate: "].startswith("alias of lr · Peak learning rate")
    got = {t: ty for _, t, ty in complete(shell, "%%finetune\nlr")}
    assert list(got)[0] == "lr: "  # canonical prefix matches first
    assert got["lr_scheduler: "].startswith("alias of scheduler")


def test_every_schema_key_and_alias_completes(shell):
    for name, f in FinetuneConfig.model_fields.items():
        for key in (name, *(f.json_schema_extra or {}).get("aliases", [])):
            got = {t: ty for _, t, ty in complete(shell, f"%%finetune\n{key[:-1]}")}
            assert any(t.rstrip(": ") == key for t in got), (key, list(got))
            ty = next(ty for t, ty in got.items() if t.rstrip(": ") == key)
            assert ty.startswith(f"alias of {name} ") if key != name else not ty.startswith("alias"), ty


def test_values_after_an_enum_key(shell):
    got = complete(shell, "%%finetune\nprecision: ")
    assert [t for _, t, _ in got] == ["auto", "fp32", "bf16", "fp16"]
    assert got[0][2] == "precision value (default)" and got[1][2] == "precision value"
    assert texts(shell, "%%finetune\nprecision: bf") == ["bf16"]
    assert texts(shell, "%%finetune\nmixed_precision: f") == ["fp32", "fp16"]  # through an alias too
    assert texts(shell, "%%finetune\nprecision:") == [" auto", " fp32", " bf16", " fp16"]  # YAML needs the space


def test_values_of_booleans_choices_and_documented_words(shell):
    assert texts(shell, "%%finetune\ncompile: ") == ["true", "false"]
    assert texts(shell, "%%finetune\nscheduler: c") == ["cosine", "constant"]
    assert "last" in texts(shell, "%%finetune\nresume_from: ")
    assert finetune_completions("%%finetune\nmodel: ", 1, 7) is None  # free text: nothing invented


def test_nested_keys_and_values(shell):
    got = texts(shell, "%%finetune\ndata:\n  train: x.csv\n  te")
    assert got[:3] == ["text: ", "text_pair: ", "test: "]  # prefix matches first, then substrings ("context: ")
    assert all("te" in t for t in got) and "train: " not in got
    assert texts(shell, "%%finetune\nearly_stopping:\n  metric: eval_f1\n  mode: ") == ["auto", "min", "max"]
    assert finetune_completions("%%finetune\ndata:", 1, 5) is None  # nothing after the colon of a mapping key
    assert texts(shell, "%%finetune\nd")[0] == "data:"  # a mapping key opens a block


def test_keys_already_given_are_not_offered_again(shell):
    assert "max_steps: " not in texts(shell, "%%finetune\nmax_steps: 5\nmax_")
    assert "max_steps: " in texts(shell, "%%finetune\ndata:\n  max_steps: 5\nmax_")  # other mapping: not a sibling


def test_notebook_variables_complete_inside_placeholders(shell):
    shell.user_ns["reviews_df"] = [1, 2]
    got = complete(shell, "%%finetune\ndata: {{revi")
    assert got == [("revi", "reviews_df", "variable · list")]


def test_python_completions_are_suppressed_inside_the_cell_only(shell):
    shell.user_ns["max_stuff"] = 1
    assert texts(shell, "%%finetune\nmax_st") == ["max_steps: "]
    assert "max_stuff" in texts(shell, "max_st")
    assert "max_stuff" in texts(shell, "x = 1\nmax_st")


def test_no_completion_outside_the_body(shell):
    for cell in ["%%finetune run max_st", "%%finetune\n# max_st", "%%finetune\nlr: 1e-5  # prec", "%%time\nmax_st"]:
        assert not any(t.startswith("max_steps") for t in texts(shell, cell)), cell
    ours = [c for c in complete(shell, "%finetune max_st")]
    assert not any(t == "max_steps: " for _, t, _ in ours)
    # the matcher returns nothing and suppresses nothing in Python code
    shell.user_ns["my_path_var"] = 1
    assert "my_path_var" in texts(shell, "import os\nmy_path_v")


def test_cell_may_start_after_blank_lines_and_cursor_mid_cell(shell):
    text = "\n%%finetune\nmax_st\nlr: 1e-5\n"
    offset = text.index("max_st") + len("max_st")
    assert [t for _, t, _ in complete(shell, text, offset)] == ["max_steps: "]


def test_unload_removes_the_matcher(shell):
    shell.run_line_magic("unload_ext", "nb_finetune")
    try:
        assert not any(getattr(m, "matcher_identifier", None) == MATCHER_ID for m in shell.Completer.custom_matchers)
        assert "max_steps: " not in texts(shell, "%%finetune\nmax_st")
    finally:
        shell.run_line_magic("load_ext", "nb_finetune")
    assert texts(shell, "%%finetune\nmax_st") == ["max_steps: "]


# ------------------------------------------------------------------------------------------------- the task registry
def test_task_values_are_auto_then_names_then_aliases_with_titles(shell):
    tasks = registry()
    got = complete(shell, "%%finetune\nmodel: m\ntask: ")
    values = [t for _, t, _ in got]
    names = task_names()
    aliases = [a for cls in tasks.values() for a in cls.aliases]
    assert {"token-classification", "question-answering"} <= set(names) and {"ner", "qa"} <= set(aliases)
    assert values == ["auto", *names, *aliases]
    types = {t: ty for _, t, ty in got}
    assert types["auto"].endswith("(default)")
    for name, cls in tasks.items():
        assert types[name] == cls.title
    assert types["ner"] == f"alias of token-classification · {tasks['token-classification'].title}"
    assert texts(shell, "%%finetune\ntask:")[:2] == [" auto", f" {names[0]}"]  # YAML needs the space


def test_task_values_match_a_prefix_or_a_word_names_first(shell):
    assert texts(shell, "%%finetune\ntask: to") == ["token-classification"]
    assert texts(shell, "%%finetune\ntask: token_") == ["token-classification"]  # _ reads as -
    assert texts(shell, "%%finetune\ntask: q") == ["question-answering", "qa", "extractive-qa"]
    got = texts(shell, "%%finetune\ntask: answ")
    assert got == ["question-answering"]  # the start of a later word
    got = texts(shell, "%%finetune\ntask: class")
    assert got.index("text-classification") < got.index("classification")  # names before aliases
    assert "regression" not in got
    assert texts(shell, "%%finetune\ntask: ner") == []  # already complete
    assert texts(shell, "%%finetune\ntask: qa") == ["extractive-qa"]
    assert finetune_completions("%%finetune\ndata:\n  task: ", 2, 8) is None  # not the top-level key


def test_named_task_hides_keys_it_does_not_read(shell):
    assert texts(shell, "%%finetune\ntask: qa\ndoc_") == ["doc_stride: "]
    assert texts(shell, "%%finetune\ntask: question-answering\nn_be") == ["n_best: ", "n_best_size: "]
    assert texts(shell, "%%finetune\ntask: text-classification\ndoc_") == []
    assert texts(shell, "%%finetune\ntask: ner\ndoc_") == []
    assert "stride: " not in texts(shell, "%%finetune\ntask: ner\nstri")
    label = texts(shell, "%%finetune\ntask: ner\nlabel")
    assert label[:2] == ["label_all_tokens: ", "labels: "] and "label_sep: " not in label
    assert texts(shell, "%%finetune\ntask: qa\nlabel") == []
    assert texts(shell, "%%finetune\ntask: multi-label\nthre") == ["threshold: "]
    assert texts(shell, "%%finetune\ntask: regression\nthre") == []
    # common keys stay, every task's own keys are there, and nothing another task reads
    for name, cls in registry().items():
        got = {t.rstrip(": ") for t in texts(shell, f"%%finetune\ntask: {name}\n")}
        own = {k for k in cls.keys() if "." not in k}
        assert own <= got and {"lr", "model", "data"} <= got and "task" not in got, name  # task: given
        others = {k for k, users in task_specific_keys().items() if "." not in k and name not in users}
        assert not got & others, (name, got & others)


def test_task_line_anywhere_in_the_cell_and_by_alias(shell):
    text = "%%finetune\ndoc_\nmodel: m\ntask: 'QA'  # extractive\n"
    offset = text.index("doc_") + 4
    assert [t for _, t, _ in complete(shell, text, offset)] == ["doc_stride: "]
    text = "%%finetune\ndoc_\ntask: token_classification\n"
    assert [t for _, t, _ in complete(shell, text, text.index("doc_") + 4)] == []
    assert texts(shell, "%%finetune\ndata:\n  task: qa\nlabel_all") == ["label_all_tokens: "]  # nested: no task


def test_auto_unknown_or_no_task_offers_every_key_task_specific_last(shell):
    for cell in ["%%finetune\n", "%%finetune\ntask: auto\n", "%%finetune\ntask: {{t}}\n", "%%finetune\ntask: nerr\n"]:
        got = [t.rstrip(": ") for t in texts(shell, cell)]
        assert set(got) >= set(FinetuneConfig.model_fields) - {"task"}, cell
        canonical = [k for k in got if k in FinetuneConfig.model_fields]
        specific = [k for k in canonical if k in task_specific_keys()]
        assert specific and canonical[-len(specific) :] == specific, cell  # after the common ones
    assert texts(shell, "%%finetune\ntask: auto\ndoc_") == ["doc_stride: "]
    assert set(texts(shell, "%%finetune\nlabel")) >= {"labels: ", "label_all_tokens: ", "label_sep: "}


def test_nested_data_keys_follow_the_task(shell):
    def data_keys(task_line: str, frag: str = "") -> list[str]:
        return [t.rstrip(": ") for t in texts(shell, f"%%finetune\n{task_line}data:\n  train: x.csv\n  {frag}")]

    assert data_keys("task: ner\n", "to") == ["tokens"]
    assert data_keys("task: qa\n", "to") == []
    assert "tags" in data_keys("task: ner\n", "ta") and "tags" not in data_keys("task: qa\n", "ta")
    qa = set(data_keys("task: qa\n"))
    assert {"question", "context", "answers", "eval", "eval_split"} <= qa
    assert not qa & {"text", "text_pair", "label", "tokens"}
    tc = set(data_keys("task: text-classification\n"))
    assert {"text", "text_pair", "label"} <= tc and not tc & {"tokens", "question", "context", "answers"}
    ner = set(data_keys("task: ner\n"))
    assert {"tokens", "label"} <= ner and not ner & {"text", "text_pair", "question"}
    every = data_keys("")
    assert {"text", "tokens", "question", "context", "answers"} <= set(every)
    assert every.index("eval_split") < every.index("answers")  # common keys first
    # the task line may come after the block
    text = "%%finetune\ndata:\n  que\ntask: text-classification\n"
    assert [t for _, t, _ in complete(shell, text, text.index("que") + 3)] == []


# ------------------------------------------------------------------------------------------------- IPython < 8.6
def test_legacy_path_in_a_real_shell(shell):
    completion.install(shell, api="legacy")
    assert not any(getattr(m, "matcher_identifier", None) == MATCHER_ID for m in shell.Completer.custom_matchers)
    shell.user_ns["max_stuff"] = 1
    got = complete(shell, "%%finetune\nmodel: x\nmax_st")
    assert [(a, b) for a, b, _ in got] == [("max_st", "max_steps: ")]  # typed, and no Python names
    assert got[0][2].startswith("int, live · ")
    assert texts(shell, "%%finetune\nprecision: b") == ["bf16"]
    assert "max_stuff" in texts(shell, "x = 1\nmax_st")  # other cells: IPython as usual
    completion.uninstall(shell)
    assert "completions" not in vars(shell.Completer)  # the instance wrapper is gone again


class Completer734:
    """The part of IPython 7.34's IPCompleter the legacy path relies on: `completions(cell, offset)` is what
    ipykernel calls, matchers get only the line; `Completion` objects carry start, end, text and type."""

    def __init__(self):
        self.custom_matchers = []
        self.calls = []

    def completions(self, text, offset):
        from IPython.core.completer import Completion

        self.calls.append((text, offset))
        return iter([Completion(offset, offset, "python_name", type="instance")])


def test_legacy_path_with_a_734_style_completer():
    class Shell:
        Completer = Completer734()
        user_ns = {"df": 1}

    ip, c = Shell(), Shell.Completer
    completion.install(ip, api="legacy")

    def ask(text, offset=None):
        from IPython.core.completer import provisionalcompleter

        offset = len(text) if offset is None else offset
        with provisionalcompleter():
            return [(text[x.start : x.end], x.text, x.type) for x in c.completions(text, offset)]

    got = ask("%%finetune\nmax_st")
    assert [(a, b) for a, b, _ in got] == [("max_st", "max_steps: ")] and "optimizer steps" in got[0][2]
    assert [b for _, b, _ in ask("%%finetune\nprecision: ")] == ["auto", "fp32", "bf16", "fp16"]
    assert [b for _, b, _ in ask("%%finetune\ndata:\n  tr")] == ["train: "]
    assert [b for _, b, _ in ask("%%finetune\ndata: {{d")] == ["df"]
    assert [b for _, b, _ in ask("%%finetune\ntask: q")] == ["question-answering", "qa", "extractive-qa"]
    assert [b for _, b, _ in ask("%%finetune\ntask: ner\ndata:\n  to")] == ["tokens: "]
    assert c.calls == []  # all answered from the schema
    assert ask("x = 1\nmax_st") == [("", "python_name", "instance")]  # anything else goes to IPython
    assert ask("%%finetune\nmodel: ") == [("", "python_name", "instance")]  # nothing to offer: IPython's turn
    assert c.calls == [("x = 1\nmax_st", 12), ("%%finetune\nmodel: ", 18)]
    completion.install(ip, api="legacy")  # idempotent: one wrapper, not two
    assert ask("x") == [("", "python_name", "instance")] and len(c.calls) == 3
    completion.uninstall(ip)
    assert "completions" not in vars(c)


# ------------------------------------------------------------------------------------------------- pure function
def test_pure_function_positions_and_fragments():
    frag, items = finetune_completions("%%finetune\nmax_st\nlr: 1", 1, 6)
    assert frag == "max_st" and [i.text for i in items] == ["max_steps: "]
    assert finetune_completions("%%finetune\nmax_st", 0, 5) is None  # the magic line
    assert finetune_completions("print(1)\nmax_st", 1, 6) is None
    assert finetune_completions("%%finetune\n  ", 1, 2) is None  # indented under nothing
    frag, items = finetune_completions("%%finetune\n", 1, 0)  # an empty line: every key
    assert frag == "" and {i.text.rstrip(": ") for i in items} >= set(FinetuneConfig.model_fields)


def test_completion_never_imports_torch():
    code = (
        "import sys\n"
        "from nb_finetune.magics.completion import finetune_completions\n"
        "assert finetune_completions('%%finetune\\nmax_st', 1, 6)[1]\n"
        "assert finetune_completions('%%finetune\\ntask: ', 1, 6)[1]\n"
        "assert finetune_completions('%%finetune\\ntask: ner\\ndata:\\n  to', 3, 4)[1]\n"
        "print([m for m in ('torch', 'transformers') if m in sys.modules])\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONSTARTUP", "PYTHONPATH")}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------------------- real kernel
@pytest.mark.kernel
def test_complete_request_through_a_real_kernel(tmp_path):
    from jupyter_client.manager import KernelManager

    env = {**os.environ, "PYTHONPATH": str(ROOT), "NB_FINETUNE_INDEX_DIR": str(tmp_path / "index")}
    km = KernelManager(kernel_cmd=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"])
    km.start_kernel(env=env, cwd=str(tmp_path))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=120)
        reply = kc.execute_interactive("%load_ext nb_finetune", timeout=120)
        assert reply["content"]["status"] == "ok"

        def ask(code: str) -> dict:
            return kc.complete(code, len(code), reply=True, timeout=60)["content"]

        code = "%%finetune demo\nmodel: m\nmax_st"
        r = ask(code)
        assert r["status"] == "ok" and r["matches"] == ["max_steps: "]
        assert (r["cursor_start"], r["cursor_end"]) == (len(code) - len("max_st"), len(code))
        # ipykernel >= 6 sends IPython's typed completions under this key; ours carry the field's help
        types = r["metadata"]["_jupyter_types_experimental"]
        assert types[0]["text"] == "max_steps: " and "optimizer steps" in types[0]["type"]

        r = ask("%%finetune\nprecision: ")
        assert r["matches"] == ["auto", "fp32", "bf16", "fp16"]
        types = r["metadata"]["_jupyter_types_experimental"]
        assert [t["type"] for t in types] == ["precision value (default)"] + ["precision value"] * 3

        r = ask("%%finetune\ntask: q")
        assert r["matches"] == ["question-answering", "qa", "extractive-qa"]
        types = r["metadata"]["_jupyter_types_experimental"]
        assert types[0]["type"] == "question answering" and types[1]["type"].startswith("alias of question-answering")
        assert ask("%%finetune\ntask: qa\ndoc_")["matches"] == ["doc_stride: "]

        assert kc.execute_interactive("import os", timeout=60)["content"]["status"] == "ok"
        r = ask("x = 1\nos.pa")  # ordinary cells still complete Python (`path` with Jedi, `os.path` without)
        assert any(m.endswith("path") for m in r["matches"]), r["matches"]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
