"""The catalogue of bad inputs and faults: what a user did, what they are told, and what is left on disk.

Each `Row` is one parametrized case of tests/catalogue/test_catalogue.py and one line of docs/catalogue.md
(`python scripts/update_readme.py` regenerates it). `act(c)` does what the user did and must raise `error`; the
message must contain every word of `words` and fit in `max_lines` lines. `state` says what is on disk afterwards;
`check(c)` (optional) asserts it.

This module imports only the standard library and nb_finetune at top level: the README script reads the table.
"""

from __future__ import annotations

import os  # noqa: F401 - rows name `os` in placeholders
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NOTHING = "nothing: no run directory is created"


@dataclass(frozen=True)
class Row:
    id: str
    area: str  # config, data, model, task: <name>, runtime, environment, security, fault
    did: str  # what the user did
    act: Callable[[Any], Any]
    error: str  # the FinetuneError subclass's name
    words: tuple[str, ...]
    state: str = NOTHING
    max_lines: int = 3
    check: Callable[[Any], None] | None = None
    marks: tuple[str, ...] = field(default_factory=tuple)  # pytest marks by name (kernel, slow)
    varies: str | None = None  # a regex of the message's part that differs between builds (not compared)


# --------------------------------------------------------------------------------------------- helpers
def cell(text: str, ns: dict | None = None):
    from nb_finetune.core.config import FinetuneConfig

    def act(c):
        return FinetuneConfig.from_cell(text, {**c.ns, **(ns or {})})

    act.cell = (text, ns or {})  # test_magic_rows.py types the same body into a `%%finetune` cell
    return act


def run(first_line_overrides: dict | None = None, *, data=None, dry: bool = True, wait: bool = False, **kw):
    """finetune() on the tiny model (dry run unless `dry=False`), with `kw` on top of the base config."""

    def act(c):
        from nb_finetune import finetune

        cfg = c.config(**kw)
        if data is not None:
            cfg["data"] = data(c)
        if first_line_overrides:
            cfg.update(first_line_overrides)
        return finetune(cfg, dry_run=dry, wait=wait)

    return act


def no_run_dir(c) -> None:
    runs = Path(c.tmp) / "runs"
    assert not runs.exists() or not any(runs.iterdir()), f"left {list(runs.iterdir())}"


def _ner(c, **cols):
    import pandas as pd

    base = {"tokens": [["Ann", "lives", "in", "Rome"], ["Bob", "works"]] * 10}
    base["tags"] = [["B-PER", "O", "O", "B-LOC"], ["B-PER", "O"]] * 10
    base.update(cols)
    return {"train": pd.DataFrame(base)}


def _qa(c, answers=None):
    import pandas as pd

    ctx = "The cat sat on the mat near the door."
    return {
        "train": pd.DataFrame(
            {
                "question": ["Where did the cat sit?"] * 10,
                "context": [ctx] * 10,
                "answers": [answers or {"text": ["the mat"], "answer_start": [15]}] * 10,
            }
        )
    }


def _df(c, **cols):
    return {"train": c.df.assign(**cols)}


def _llama_without_template(c) -> str:
    from lm_tiny import build_tiny_llama

    return build_tiny_llama(Path(c.tmp) / "llama-no-template", num_layers=1, chat_template=False)


def _chats(c):
    import pandas as pd
    from lm_tiny import facts

    return {"train": pd.DataFrame(facts(16))}


def _tiny_vit(c) -> str:
    from transformers import ViTConfig, ViTForImageClassification

    d = Path(c.tmp) / "vit"
    conf = ViTConfig(image_size=24, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    ViTForImageClassification(conf).save_pretrained(d)
    return str(d)


def _images_one_truncated(c):
    """Two class folders of 4 small PNGs each, and one file cut short after the PNG signature (row 7 in order)."""
    import numpy as np
    from PIL import Image

    root = Path(c.tmp) / "images"
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(4):
            Image.fromarray(np.full((24, 24, 3), 40 * i, np.uint8)).save(root / name / f"{i}.png")
    (root / "dog" / "9.png").write_bytes(b"\x89PNG\r\n\x1a\n and then nothing")
    return {"train": str(root)}


class _Obj:
    @property
    def computed(self):
        return "ran"


# --------------------------------------------------------------------------------------------- rows
ROWS: list[Row] = [
    # ---- config: syntax
    Row(
        "yaml-syntax",
        "config",
        "an unclosed bracket in the cell",
        cell("lr: 2e-5\nepochs: [1, 2"),
        "ConfigError",
        ("line", "YAML"),
    ),
    Row(
        "yaml-python-tag",
        "security",
        "`model: !!python/object/apply:os.system [ls]`",
        cell("lr: 1e-5\nmodel: !!python/object/apply:os.system [ls]"),
        "ConfigError",
        ("line 3", "!!python/object/apply", "not allowed"),
    ),
    Row(
        "yaml-custom-tag",
        "security",
        "a custom YAML tag (`!foo bar`)",
        cell("model: !foo bar"),
        "ConfigError",
        ("line 2", "!foo", "safe loader"),
    ),
    Row(
        "yaml-bad-tagged-scalar",
        "config",
        "`lr: !!float abc`",
        cell("lr: !!float abc"),
        "ConfigError",
        ("line 2", "abc"),
    ),
    Row(
        "yaml-list-key",
        "config",
        "a list as a key (`[a]: 1`)",
        cell("[a]: 1"),
        "ConfigError",
        ("line 2", "plain name"),
    ),
    Row(
        "not-a-mapping",
        "config",
        "a YAML list instead of `key: value` lines",
        cell("- lr\n- epochs"),
        "ConfigError",
        ("key: value",),
    ),
    Row(
        "unknown-key",
        "config",
        "a misspelt key (`learning_rat`)",
        cell("learning_rat: 1e-5"),
        "ConfigError",
        ("line 2", "unknown key", "learning_rate"),
    ),
    Row(
        "unknown-data-key",
        "config",
        "an unknown key under `data:`",
        cell("data:\n  trian: x.csv"),
        "ConfigError",
        ("line 3", "data.trian", "train"),
    ),
    Row(
        "duplicate-key",
        "config",
        "the same key twice",
        cell("lr: 1e-5\nepochs: 2\nlr: 2e-5"),
        "ConfigError",
        ("line 4", "given twice", "line 2"),
    ),
    Row(
        "alias-conflict",
        "config",
        "a key and its alias (`lr` and `learning_rate`)",
        cell("lr: 1e-5\nlearning_rate: 2e-5"),
        "ConfigError",
        ("both set", "lr", "keep one"),
    ),
    # ---- config: types and ranges
    Row(
        "wrong-type",
        "config",
        "`batch_size: big`",
        cell("batch_size: big"),
        "ConfigError",
        ("line 2", "batch_size", "whole number", "big"),
    ),
    Row("negative-lr", "config", "`lr: -1`", cell("lr: -1"), "ConfigError", ("lr", "greater than 0")),
    Row(
        "eval-split-range",
        "config",
        "`eval_split: 1.5`",
        cell("data:\n  eval_split: 1.5"),
        "ConfigError",
        ("eval_split", "less than 1"),
    ),
    Row("inf-epochs", "config", "`epochs: .inf`", cell("epochs: .inf"), "ConfigError", ("line 2", "epochs", "finite")),
    Row("nan-lr", "config", "`lr: .nan`", cell("lr: .nan"), "ConfigError", ("lr",)),
    Row(
        "inf-in-mapping",
        "config",
        "`group_lr: {head: .inf}`",
        cell("group_lr: {head: .inf}"),
        "ConfigError",
        ("group_lr", "finite"),
    ),
    Row(
        "inf-from-python",
        "config",
        "`finetune(..., warmup=float('inf'))`",
        run(dry=True, warmup=float("inf")),
        "ConfigError",
        ("warmup", "finite"),
    ),
    Row("bad-enum", "config", "`precision: fp8`", cell("precision: fp8"), "ConfigError", ("precision", "fp8", "bf16")),
    Row(
        "bad-interval",
        "config",
        "`save_every: soon`",
        cell("save_every: soon"),
        "ConfigError",
        ("save_every", "interval", "30min"),
    ),
    Row(
        "early-stopping-no-eval",
        "config",
        "`early_stopping` with `eval_every: null`",
        cell("eval_every: null\nearly_stopping: {metric: eval_loss}"),
        "ConfigError",
        ("early_stopping", "eval_every"),
    ),
    Row(
        "unfreeze-until-alone",
        "config",
        "`unfreeze_until` without `unfreeze_every`",
        cell("unfreeze_until: 2"),
        "ConfigError",
        ("unfreeze_until", "unfreeze_every"),
    ),
    Row(
        "unknown-task",
        "config",
        "`task: translation`",
        cell("task: translation"),
        "ConfigError",
        ("translation", "text-classification"),
        # the list names every registered task: in a full test run it also holds tests' toy tasks
        varies=r"(?<=; use ).*(?=\.$)",
    ),
    Row(
        "bad-freeze-spec",
        "config",
        "`freeze: lots`",
        cell("freeze: lots"),
        "ConfigError",
        ("freeze", "lots", "all_but_head"),
    ),
    Row("bad-device", "config", "`device: gpu`", cell("device: gpu"), "ConfigError", ("device", "gpu", "cuda:1")),
    Row(
        "key-of-another-task",
        "config",
        "`doc_stride` on a text-classification run",
        run(task="text-classification", doc_stride=64),
        "ConfigError",
        ("doc_stride", "question-answering"),
    ),
    Row("model-missing", "config", "no `model:`", run(model=None), "ConfigError", ("model", "required")),
    Row(
        "train-missing",
        "config",
        "no `data.train`",
        run(data=lambda c: {"train": None}),
        "ConfigError",
        ("data.train", "required"),
    ),
    # ---- config: placeholders
    Row(
        "placeholder-missing",
        "config",
        "`model: {{mdl}}` with no such variable",
        cell("model: {{mdl}}"),
        "ConfigError",
        ("line 2", "mdl", "no variable"),
    ),
    Row(
        "placeholder-typo",
        "config",
        "`{{my_modl}}` for `my_model`",
        cell("model: {{my_modl}}", {"my_model": 1}),
        "ConfigError",
        ("my_modl", "Did you mean 'my_model'"),
    ),
    Row(
        "placeholder-wrong-type",
        "config",
        "`model: {{n}}` where n = 5",
        cell("model: {{n}}", {"n": 5}),
        "ConfigError",
        ("model", "{{n}}", "int"),
    ),
    Row(
        "placeholder-expression",
        "security",
        "`{{os.system('ls')}}`",
        cell("model: {{os.system('ls')}}"),
        "ConfigError",
        ("not a variable name", "never evaluated"),
    ),
    Row(
        "placeholder-dunder",
        "security",
        "`{{os.__class__}}`",
        cell("model: {{x.__class__}}", {"x": os}),
        "ConfigError",
        ("__class__", "refused", "dunder"),
    ),
    Row(
        "placeholder-property",
        "security",
        "`{{obj.computed}}` (a property: code would run)",
        cell("model: {{o.computed}}", {"o": _Obj()}),
        "ConfigError",
        ("computed", "property"),
    ),
    Row(
        "placeholder-no-attribute",
        "config",
        "`{{df.nope}}`",
        cell("model: {{o.nope}}", {"o": _Obj()}),
        "ConfigError",
        ("nope", "no attribute"),
    ),
    Row(
        "data-as-number",
        "config",
        "`data: {train: 5}`",
        cell("data:\n  train: 5"),
        "ConfigError",
        ("line 3", "data.train", "file path"),
    ),
    # ---- names and paths
    Row(
        "run-name-traversal",
        "security",
        "`%%finetune ../../etc` (a name that leaves output_dir)",
        run(name="../../etc"),
        "FinetuneError",
        ("run name", "not valid"),
    ),
    Row(
        "run-name-dotdot",
        "security",
        "the run name `..`",
        run(name=".."),
        "FinetuneError",
        ("run name", "'..'", "not valid"),
    ),
    Row(
        "run-name-absolute",
        "security",
        "an absolute path as the run name (`/etc/cron.d`)",
        run(name="/etc/cron.d"),
        "FinetuneError",
        ("run name", "not valid"),
    ),
    Row(
        "run-name-slash",
        "security",
        "a run name with a slash",
        run(name="a/b"),
        "FinetuneError",
        ("run name", "not valid"),
    ),
    # ---- model
    Row(
        "model-offline",
        "model",
        "a hub id that is not cached, offline",
        run(model="no-such-org/no-such-model"),
        "ModelError",
        ("no-such-org/no-such-model", "local directory"),
    ),
    Row(
        "model-dir-missing",
        "model",
        "a local directory that does not exist",
        run(model="./no/such/dir"),
        "ModelError",
        ("./no/such/dir",),
    ),
    Row(
        "trust-remote-code",
        "security",
        "a checkpoint that ships its own code, `trust_remote_code` unset",
        lambda c: run(model=c.remote_code_dir())(c),
        "ModelError",
        ("trust_remote_code", "trust its author"),
    ),
    Row(
        "model-object-wrong-head",
        "model",
        "`model: {{lm}}`, a causal LM, for text classification",
        lambda c: run(model=c.tiny_llama())(c),
        "ModelError",
        ("LlamaForCausalLM", "ForSequenceClassification"),
    ),
    Row(
        "model-object-no-tokenizer",
        "model",
        "a model object built from a config (no tokenizer anywhere)",
        lambda c: run(model=c.tiny_bert())(c),
        "ModelError",
        ("tokenizer", "{{tok}}"),
    ),
    Row(
        "max-length-too-long",
        "model",
        "`max_length: 100000`",
        run(max_length=100000),
        "ConfigError",
        ("max_length", "positions"),
    ),
    # ---- data
    Row(
        "data-file-missing",
        "data",
        "`data: nope.csv`",
        run(data=lambda c: {"train": "nope.csv"}),
        "DataError",
        ("data.train", "nope.csv", "does not exist"),
    ),
    Row(
        "data-bad-extension",
        "data",
        "an .xlsx file",
        lambda c: run(data=lambda c: {"train": c.file("x.xlsx")})(c),
        "DataError",
        ("unsupported extension", ".csv"),
    ),
    Row(
        "slice-garbled",
        "data",
        "`train.csv[abc]`",
        lambda c: run(data=lambda c: {"train": c.csv() + "[abc]"})(c),
        "DataError",
        ("slice", "[:2000]"),
    ),
    Row(
        "slice-out-of-range",
        "data",
        "`train.csv[5000:6000]` of a 192-row file",
        lambda c: run(data=lambda c: {"train": c.csv() + "[5000:6000]"})(c),
        "DataError",
        ("slice [5000:6000]", "no rows", "192 rows"),
    ),
    Row(
        "slice-empty",
        "data",
        "`train.csv[:0]`",
        lambda c: run(data=lambda c: {"train": c.csv() + "[:0]"})(c),
        "DataError",
        ("[:0]", "no rows"),
    ),
    Row(
        "unknown-split",
        "data",
        "`data: saved/validation` for a saved dataset with only train and test",
        lambda c: run(data=lambda c: {"train": c.saved_splits() + "/validation"})(c),
        "DataError",
        ("no split 'validation'", "test, train"),
    ),
    Row(
        "hub-dataset-offline",
        "data",
        "a hub dataset, offline",
        run(data=lambda c: {"train": "imdb:train[:200]"}),
        "DataError",
        ("data.train", "imdb:train"),
    ),
    Row(
        "datasetdict",
        "data",
        "a whole DatasetDict as data",
        lambda c: run(data=lambda c: {"train": c.dsdict()})(c),
        "DataError",
        ("DatasetDict", "train"),
    ),
    Row(
        "text-column-missing",
        "data",
        "`data.text: review` that the data lacks",
        run(data=lambda c: {"train": c.df, "text": "review"}),
        "DataError",
        ("data.text", "review", "columns: text, label"),
    ),
    Row(
        "no-label-column",
        "data",
        "`task: text-classification` on data without a label column",
        run(task="text-classification", data=lambda c: {"train": c.df[["text"]]}),
        "DataError",
        ("no label column", "columns: text"),
    ),
    Row(
        "all-empty-texts",
        "data",
        "a text column whose every row is empty",
        run(data=lambda c: _df(c, text="")),
        "DataError",
        ("data.text", "empty", "text"),
    ),
    Row(
        "label-outside-labels",
        "data",
        "`labels: [negative, neutral]` and data with `positive`",
        run(labels=["negative", "neutral"]),
        "DataError",
        ("positive", "labels"),
    ),
    Row(
        "single-class",
        "data",
        "every row has the same label",
        run(data=lambda c: _df(c, label="positive")),
        "DataError",
        ("single class", "two or more"),
    ),
    Row(
        "empty-labels",
        "data",
        "some labels empty",
        lambda c: run(data=lambda c: c.with_empty_label())(c),
        "DataError",
        ("data.label", "empty values"),
    ),
    Row(
        "float-labels-classification",
        "data",
        "fractional labels with `task: text-classification`",
        run(task="text-classification", data=lambda c: _df(c, label=[0.5, 1.5] * 96)),
        "DataError",
        ("non-integer", "task: regression"),
    ),
    Row(
        "eval-column-missing",
        "data",
        "`data.eval` without the text column",
        run(data=lambda c: {"train": c.df, "eval": c.df.rename(columns={"text": "t"})}),
        "DataError",
        ("data.eval", "text"),
    ),
    Row(
        "eval-unknown-labels",
        "data",
        "eval labels that never occur in train",
        run(data=lambda c: {"train": c.df, "eval": c.df.assign(label="neutral")}),
        "DataError",
        ("neutral", "data.train"),
    ),
    Row(
        "eval-split-nothing-left",
        "data",
        "one training row and `eval_split: 0.5`",
        run(data=lambda c: {"train": c.df.head(1), "eval_split": 0.5}),
        "DataError",
        ("data.eval_split",),
    ),
    # ---- tasks
    Row(
        "ner-length",
        "task: token-classification",
        "a tag list shorter than its token list",
        run(data=lambda c: _ner(c, tags=[["B-PER", "O", "O"], ["B-PER", "O"]] * 10)),
        "DataError",
        ("row 0", "tags", "exactly one tag"),
    ),
    Row(
        "ner-float-tags",
        "task: token-classification",
        "`task: ner` with tag lists of numbers 0.5, 1.0",
        run(task="ner", data=lambda c: _ner(c, tags=[[0.5, 1.0, 0.0, 1.0], [1.0, 0.0]] * 10)),
        "DataError",
        ("data.label", "tags"),
    ),
    Row(
        "ner-not-in-labels",
        "task: token-classification",
        "a tag outside `labels:`",
        run(labels=["O", "B-PER"], data=lambda c: _ner(c)),
        "DataError",
        ("B-LOC",),
    ),
    Row(
        "qa-answer-not-in-context",
        "task: question-answering",
        "an answer text that the context does not contain",
        run(data=lambda c: _qa(c, {"text": ["the dog"], "answer_start": [15]})),
        "DataError",
        ("row 0", "answer_start", "does not occur"),
    ),
    Row(
        "qa-not-squad",
        "task: question-answering",
        "answers as plain strings",
        run(task="qa", data=lambda c: _qa(c, "the mat")),
        "DataError",
        ("data.answers", "SQuAD"),
    ),
    Row(
        "regression-non-numeric",
        "task: regression",
        "`task: regression` with a label 'x'",
        run(task="regression", data=lambda c: _df(c, label=["x", "1.5"] * 96)),
        "DataError",
        ("row 0", "'x'", "not a number"),
    ),
    Row(
        "causal-lm-no-text",
        "task: causal-lm",
        "`task: causal-lm` on data with neither messages, prompt + completion nor text",
        run(task="causal-lm", data=lambda c: {"train": c.df.rename(columns={"text": "review"})}),
        "DataError",
        ("messages", "prompt", "completion", "columns: review, label"),
    ),
    Row(
        "causal-lm-4bit-without-gpu",
        "task: causal-lm",
        "`quantization: 4bit` on a machine without a CUDA GPU",
        run(task="causal-lm", quantization="4bit"),
        "ConfigError",
        ("quantization: 4bit", "CUDA GPU", "Remove `quantization:`"),
        marks=("no_gpu",),
    ),
    Row(
        "image-model-without-head",
        "task: image-classification",
        "`task: image-classification` with a text model (BERT)",
        lambda c: run(task="image-classification", data=lambda c: {"train": c.media("png")})(c),
        "ModelError",
        ("bert", "no image classification head", "ViT"),
    ),
    Row(
        "audio-model-without-head",
        "task: audio-classification",
        "`task: audio-classification` with a text model (BERT)",
        lambda c: run(task="audio-classification", data=lambda c: {"train": c.media("wav")})(c),
        "ModelError",
        ("bert", "no audio classification head", "wav2vec2"),
    ),
    Row(
        "causal-lm-chat-without-template",
        "task: causal-lm",
        "chat records (`messages`) on a model whose tokenizer has no chat template",
        lambda c: run(task="causal-lm", model=_llama_without_template(c), data=_chats)(c),
        "ConfigError",
        ("data.messages", "no chat template", "chat_template:", "prompt` / `completion"),
    ),
    Row(
        "image-unreadable-file",
        "task: image-classification",
        "a truncated image file among the training images, with `on_bad_example: error`",
        lambda c: run(
            task="image-classification", model=_tiny_vit(c), data=_images_one_truncated, on_bad_example="error"
        )(c),
        "DataError",
        ("row 7", "9.png", "cannot be read", "on_bad_example: skip"),
    ),
    Row(
        "regression-with-labels",
        "task: regression",
        "`labels: [low, high]` on a regression run (a number has no label names)",
        run(task="regression", labels=["low", "high"], data=lambda c: _df(c, label=[0.5, 1.5] * 96)),
        "ConfigError",
        ("`labels` is not used by task regression", "text-classification"),
    ),
    Row(
        "multi-label-outside-labels",
        "task: multi-label-classification",
        "a label 'c' outside `labels: [a, b]`",
        run(task="multi-label", labels=["a", "b"], data=lambda c: _df(c, label=[["a", "c"], ["b"]] * 96)),
        "DataError",
        ("row 0", "'c'", "labels"),
    ),
    Row(
        "multi-label-threshold",
        "task: multi-label-classification",
        "`threshold: 1.5`",
        cell("threshold: 1.5"),
        "ConfigError",
        ("threshold", "less than 1"),
    ),
    # ---- runtime pre-flight
    Row(
        "freeze-all",
        "runtime",
        "`freeze: all`",
        run(freeze="all"),
        "ConfigError",
        ("freeze", "nothing would train", "all_but_head"),
    ),
    Row(
        "freeze-every-group",
        "runtime",
        "`freeze: [embeddings, blocks.0-1, head]`",
        run(freeze=["embeddings", "blocks.0-1", "head"]),
        "ConfigError",
        ("nothing would train",),
    ),
    Row(
        "output-dir-unwritable",
        "environment",
        "`output_dir: /proc/nope`",
        run(output_dir="/proc/nope"),
        "FinetuneError",
        ("/proc/nope", "cannot be written"),
    ),
    Row(
        "output-dir-is-file",
        "environment",
        "`output_dir` naming a file",
        lambda c: run(output_dir=c.file("f"))(c),
        "FinetuneError",
        ("output_dir", "is a file"),
    ),
    Row(
        "early-stopping-metric",
        "runtime",
        "`early_stopping: {metric: eval_bleu}` on text classification",
        run(eval_every=2, early_stopping={"metric": "eval_bleu"}),
        "ConfigError",
        ("early_stopping.metric", "eval_bleu", "eval_accuracy, eval_f1"),
    ),
    Row(
        "metric-for-best",
        "runtime",
        "`metric_for_best: eval_acuracy` (a typo)",
        run(metric_for_best="eval_acuracy"),
        "ConfigError",
        ("metric_for_best", "Did you mean 'eval_accuracy'"),
    ),
    Row(
        "metric-for-best-ner",
        "task: token-classification",
        "`metric_for_best: eval_accuracy_top5` for NER",
        run(metric_for_best="eval_accuracy_top5", data=lambda c: _ner(c)),
        "ConfigError",
        ("eval_PER_f1", "eval_LOC_f1"),
    ),
    Row(
        "warmup-too-long",
        "runtime",
        "`warmup: 500` with 5 steps",
        run(warmup=500, max_steps=5),
        "ConfigError",
        ("warmup: 500", "only 5 optimizer steps", "warmup: 0.1"),
    ),
    Row(
        "device-cuda-missing",
        "environment",
        "`device: cuda:7` on a machine without that GPU",
        run(device="cuda:7"),
        "ConfigError",
        ("cuda:7", "it has: cpu"),
    ),
    Row(
        "device-mps-missing",
        "environment",
        "`device: mps` off a Mac",
        run(device="mps"),
        "ConfigError",
        ("mps", "it has"),
    ),
    Row(
        "resume-no-run",
        "runtime",
        "`resume_from: last` for a run that never ran",
        run(dry=False, resume_from="last", name="never-ran"),
        "FinetuneError",
        ("resume_from: last", "never-ran"),
    ),
    Row(
        "resume-not-checkpoint",
        "runtime",
        "`resume_from: ./somewhere` without a state.json",
        lambda c: run(dry=False, resume_from=str(c.tmp))(c),
        "FinetuneError",
        ("not a checkpoint directory",),
    ),
]

# ---- faults during a run: the run fails (status.json says why), what was saved before stays whole
FAILED = "status.json: state failed, the reason in `error`; earlier checkpoints intact"


def failed_run(setup=None, **kw):
    """A real (tiny) run that fails while training: re-raise what the Run recorded, as the user reads it."""

    def act(c):
        from nb_finetune import finetune

        if setup is not None:
            setup(c)
        run = finetune(c.config(**kw), wait=True)
        assert run.status == "failed", run.status
        raise run._exc

    return act


def status_failed(c) -> None:
    from nb_finetune.core.runs import read_json

    runs = sorted((Path(c.tmp) / "runs").iterdir())
    st = read_json(runs[-1] / "status.json")
    assert st["state"] == "failed" and st["error"], st
    assert not [p for p in (runs[-1] / "checkpoints").iterdir() if p.name.startswith(".")], "partial checkpoint"


def _prior_checkpoint(c, **kw) -> str:
    from nb_finetune import finetune

    run = finetune(c.config(name="prior", max_steps=1, **kw), wait=True)
    return str(run.checkpoints[-1])


def _resume_into(**kw):
    def act(c):
        from nb_finetune import finetune

        ck = _prior_checkpoint(c)
        other = {k: (v(c) if callable(v) else v) for k, v in kw.items()}
        return finetune(c.config(name="after", resume_from=ck, **other), dry_run=False)

    return act


def _only_prior(c) -> None:
    assert sorted(p.name for p in (Path(c.tmp) / "runs").iterdir()) == ["prior"]


def _busy_name(c):
    """A run named `busy` is waiting to start (start=False: active, never trains); a second `busy` is refused."""
    from nb_finetune import finetune

    finetune(c.config(name="busy"), start=False)
    return finetune(c.config(name="busy"))


def _only_busy(c) -> None:
    from nb_finetune import api

    assert sorted(p.name for p in (Path(c.tmp) / "runs").iterdir()) == ["busy"]
    with api._RUNS_LOCK:  # the test's queued run must not outlive it
        api._RUNS.pop("busy", None)


ROWS += [
    Row(
        "active-run-name",
        "runtime",
        "a second run named like one still active (queued, training or paused)",
        _busy_name,
        "RunStateError",
        ("busy", "still queued", "stop it first"),
        "only the active run's directory; nothing of the second",
        check=_only_busy,
    ),
    Row(
        "nan-loss",
        "fault",
        "a loss that turns NaN at step 3 (`on_nonfinite: stop`, the default)",
        failed_run(lambda c: c.nan_at({3}), max_steps=6, save_every=2, log_every=1),
        "NonFiniteLossError",
        ("step 3", "step-000002", "on_nonfinite: skip"),
        FAILED + "; no update from the bad step on",
        check=status_failed,
    ),
    Row(
        "disk-full",
        "fault",
        "the disk fills up while the first checkpoint is written",
        failed_run(lambda c: c.disk_full(), max_steps=3, save_every=2),
        "CheckpointError",
        ("step-000002 could not be written", "ENOSPC", "resume_from: last"),
        FAILED + "; no partial directory",
        check=status_failed,
    ),
    Row(
        "out-of-memory",
        "fault",
        "the device runs out of memory in a forward pass",
        failed_run(lambda c: c.out_of_memory(), max_steps=3),
        "FinetuneError",
        ("out of memory", "batch_size 16", "grad_accum", "max_length"),
        FAILED,
        check=status_failed,
    ),
    Row(
        "resume-other-task",
        "runtime",
        "`resume_from:` a text-classification checkpoint in a regression run",
        _resume_into(task="regression", data=lambda c: {"train": c.df.assign(label=[0.5, 1.5] * 96)}),
        "CheckpointError",
        ("text-classification", "regression"),
        "only the earlier run's directory",
        check=_only_prior,
    ),
    Row(
        "resume-other-model",
        "runtime",
        "`resume_from:` a 2-block model's checkpoint with a 1-block model",
        _resume_into(model=lambda c: c.one_block_model()),
        "CheckpointError",
        ("another model", "step-000001", "Use the same model"),
        "only the earlier run's directory",
        check=_only_prior,
        varies=r"(?<=\): ).*(?= Use the same model)",  # which tensor differs first: the tiny tokenizers differ per build
    ),
    Row(
        "resume-all-damaged",
        "fault",
        "`resume_from: last` when the only checkpoint has a flipped byte",
        lambda c: c.resume_damaged(),
        "CheckpointError",
        ("no checkpoint", "is whole", "checksum"),
        "the damaged checkpoint, untouched",
        check=lambda c: None,
    ),
]

for _r in ROWS:  # a row id names a test: keep them unique
    assert sum(r.id == _r.id for r in ROWS) == 1, _r.id


# every row's message as the user reads it, recorded by the test that raises it (test_catalogue.py compares each new
# run's message with it, so the table cannot show a stale one): NB_FT_RECORD_MESSAGES=1 rewrites it
MESSAGES = Path(__file__).with_name("messages.json")


def recorded_messages() -> dict[str, str]:
    import json

    return json.loads(MESSAGES.read_text(encoding="utf-8")) if MESSAGES.exists() else {}


def record_message(row_id: str, message: str) -> None:
    """Store one row's message, keeping the file in the rows' order (one file, rewritten whole)."""
    import json

    got = {**recorded_messages(), row_id: message}
    order = [r.id for r in ROWS if r.id in got]
    MESSAGES.write_text(json.dumps({k: got[k] for k in order}, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


_MD_SPECIAL = "\\`*_[]<>|~#"


def _md_text(text: str) -> str:
    """Text shown literally in a Markdown table cell: punctuation Markdown would act on escaped, lines as <br>."""
    escaped = "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in text)
    return "<br>".join(escaped.splitlines())


def table_markdown() -> str:
    """docs/catalogue.md's table: one line per row, with the message the user reads (recorded by the test)."""
    messages = recorded_messages()
    out = [
        "| # | area | what the user did | error | what the user reads | left on disk |",
        "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(ROWS, 1):
        did = r.did.replace("|", "\\|")
        msg = _md_text(messages[r.id]) if r.id in messages else "(not recorded yet: run the catalogue test)"
        out.append(f"| {i} | {r.area} | {did} | `{r.error}` | {msg} | {r.state} |")
    return "\n".join(out) + "\n"
