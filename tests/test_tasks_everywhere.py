"""Every task through the three doors a user has: `%%finetune` in a real InteractiveShell, `finetune()` and
`nb-finetune run` in a subprocess. Same data file, same YAML, `task: auto` each time: the run finishes, the
task's own metric keys are recorded, the dry run names the task and its head."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# the word lists of tests/conftest.py, by path: `from conftest import` may find tests/kernel/conftest.py first
_spec = importlib.util.spec_from_file_location("_root_conftest", ROOT / "tests" / "conftest.py")
_root = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_root)
FILL, NEG, POS = _root.FILL, _root.NEG, _root.POS


def _text(rng, pos: int, neg: int) -> tuple[str, list[str]]:
    words = [rng.choice(FILL) for _ in range(rng.randint(3, 8))]
    for w in [rng.choice(POS) for _ in range(pos)] + [rng.choice(NEG) for _ in range(neg)]:
        words.insert(rng.randrange(len(words) + 1), w)
    return " ".join(words), words


def records(task: str, n: int = 48, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        pos, neg = rng.randint(0, 2), rng.randint(0, 1)
        text, words = _text(rng, pos, neg)
        if task == "regression":
            out.append({"text": text, "score": (pos - neg) / 2 + 0.25})
        elif task == "multi-label-classification":
            out.append({"text": text, "labels": [t for t, k in (("pos", pos), ("neg", neg)) if k]})
        elif task == "text-classification":  # sentence pairs: does the second text agree with the first?
            other, _ = _text(rng, rng.randint(0, 1), 0)
            out.append(
                {"premise": text, "hypothesis": other, "label": "same" if (pos > 0) == (POS[0] in other) else "other"}
            )
        elif task == "token-classification":
            tags = ["B-POS" if w in POS else "B-NEG" if w in NEG else "O" for w in words]
            out.append({"tokens": words, "tags": tags})
        elif task == "causal-lm":  # chat records: name the sentiment word
            word = next((w for w in words if w in POS + NEG), "none")
            out.append(
                {
                    "messages": [
                        {"role": "user", "content": text},
                        {"role": "assistant", "content": f"ANSWER: {word}"},
                    ]
                }
            )
        else:  # question answering: which word carries the sentiment
            word = rng.choice(POS + NEG)
            ctx_words = words[:2] + [word] + words[2:]
            start = len(" ".join(ctx_words[:2])) + 1
            out.append(
                {
                    "question": "which word?",
                    "context": " ".join(ctx_words),
                    "answers": {"text": [word], "answer_start": [start]},
                }
            )
    return out


TASKS = {
    "text-classification": ({"text": "premise", "text_pair": "hypothesis"}, "eval_accuracy"),
    "regression": ({}, "eval_r2"),
    "multi-label-classification": ({}, "eval_f1_micro"),
    "token-classification": ({}, "eval_f1"),
    "question-answering": ({}, "eval_exact_match"),
    "causal-lm": ({}, "eval_perplexity"),
}


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A tiny chat Llama (ChatML template) for the causal-lm rows."""
    from nb_finetune.examples import tiny_chat_llama

    return tiny_chat_llama(tmp_path_factory.mktemp("llama"), [" ".join(FILL + POS + NEG) + " ANSWER: none"])


@pytest.fixture()
def task_config(tmp_path, tiny_model_dir, llama_dir):
    def make(task: str) -> dict:
        path = tmp_path / f"{task}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records(task)))
        columns, _ = TASKS[task]
        return {
            "model": llama_dir if task == "causal-lm" else tiny_model_dir,
            "data": {"train": str(path), "eval_split": 0.25, **columns},
            "max_steps": 3,
            "batch_size": 8,
            "eval_every": 3,
            "save_every": None,
            "output_dir": str(tmp_path / "runs"),
        }

    return make


@pytest.mark.parametrize("task", list(TASKS))
def test_api_auto_picks_the_task_and_reports_its_metrics(task, task_config):
    from nb_finetune import finetune

    cfg = task_config(task)
    report = finetune(cfg, dry_run=True, name="dry")
    text = str(report)
    assert f"task: {task} (auto: " in text and "head: " in text, text
    run = finetune(cfg, name=f"api-{task}", wait=True)
    assert run.status == "finished", run.error
    assert run.task.name == task
    assert TASKS[task][1] in run.metrics, run.metrics


@pytest.mark.parametrize("task", list(TASKS))
def test_cli_runs_every_task(task, task_config, tmp_path):
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(task_config(task)))
    out = subprocess.run(
        [sys.executable, "-m", "nb_finetune.cli", "run", str(cfg_path), "--name", "cli"],
        env={**os.environ, "PYTHONPATH": str(ROOT), "NB_FINETUNE_INDEX_DIR": str(tmp_path / "index")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"task: {task} (auto: " in out.stdout, out.stdout
    metric = TASKS[task][1].removeprefix("eval_")
    assert f" {metric} " in out.stdout, out.stdout
    evals = [json.loads(x) for x in (tmp_path / "runs" / "cli" / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("event") == "eval" and TASKS[task][1] in r for r in evals)


@pytest.fixture()
def ip(tmp_path):
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()
    shell.run_line_magic("load_ext", "nb_finetune")
    shell.run_line_magic("config", "FinetuneMagic.renderer = 'text'")
    yield shell
    from nb_finetune import api

    for r in api.active_runs():
        r.abort()
        r.wait(timeout=60)


@pytest.mark.parametrize("task", list(TASKS))
def test_magic_runs_every_task(task, task_config, ip):
    cfg = task_config(task)
    body = yaml.safe_dump({k: v for k, v in cfg.items() if k != "model"})
    ip.user_ns["model_dir"] = cfg["model"]
    res = ip.run_cell(f"%%finetune magic_{task.replace('-', '_')} --wait\nmodel: {{{{model_dir}}}}\n{body}")
    assert res.success, res.error_in_exec
    run = ip.user_ns[f"magic_{task.replace('-', '_')}"]
    assert run.status == "finished", run.error
    assert TASKS[task][1] in run.metrics
