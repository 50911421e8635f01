"""`FinetuneConfig` from cell text: a table of good cells (values, types, aliases, `{{vars}}`) and bad cells (a
`ConfigError` naming the line, the key and a fix), then the exports built from the schema.

Line numbers count the `%%finetune` magic line as line 1, so the first line of a cell body is line 2."""

from __future__ import annotations

import json
import os
from enum import Enum

import pytest
import yaml

from nb_finetune.core.config import (
    FinetuneConfig,
    config_reference_markdown,
    live_fields,
    load_config,
    parse_interval,
)
from nb_finetune.errors import ConfigError


class MyModel:
    """Stands for a model object living in the notebook."""


MY_MODEL = MyModel()
TOKENIZER = object()
NS = {"my_model": MY_MODEL, "my_tok": TOKENIZER, "dir": "/data/reviews", "rows": [{"text": "ok", "label": 1}]}


class Same:
    """Expected value: this very object (`is`), not an equal copy."""

    def __init__(self, obj):
        self.obj = obj


def get(cfg, dotted: str):
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value.value if isinstance(value, Enum) else value


# ------------------------------------------------------------------------------------------------ good cells
# (cell body, {dotted field: expected}); values are compared with their type, so "2e-05" != 2e-05 and "off" != False.
GOOD = [
    pytest.param("model: {{my_model}}", {"model": Same(MY_MODEL)}, id="var-object"),
    pytest.param("model: '{{my_model}}'", {"model": Same(MY_MODEL)}, id="var-object-quoted"),
    pytest.param("model: {{ my_model }}", {"model": Same(MY_MODEL)}, id="var-spaces"),
    pytest.param("processor: {{my_tok}}", {"tokenizer": Same(TOKENIZER)}, id="var-under-alias"),
    pytest.param("lr: 2e-5", {"lr": 2e-5}, id="lr-yaml12-float"),
    pytest.param("lr: 1E-4", {"lr": 1e-4}, id="lr-capital-E"),
    pytest.param("cache_frozen: off", {"cache_frozen": "off"}, id="off-is-string"),
    pytest.param("cache_frozen: on", {"cache_frozen": "on"}, id="on-is-string"),
    pytest.param("cache_frozen: false", {"cache_frozen": "off"}, id="cache-bool"),
    pytest.param(
        "learning_rate: 3e-4\nmax_len: 128\nbs: 8",
        {"lr": 3e-4, "max_length": 128, "batch_size": 8},
        id="aliases",
    ),
    pytest.param(
        "dtype: bf16\nwd: 0.1\nnum_epochs: 2",
        {"precision": "bf16", "weight_decay": 0.1, "epochs": 2.0},
        id="more-aliases",
    ),
    pytest.param("warmup: 100", {"warmup": 100.0}, id="warmup-steps"),
    pytest.param("warmup: 0.1", {"warmup": 0.1}, id="warmup-ratio"),
    pytest.param("warmup_ratio: .05", {"warmup": 0.05}, id="warmup-leading-dot"),
    pytest.param("data: reviews.csv", {"data.train": "reviews.csv", "data.eval": None}, id="data-shorthand"),
    pytest.param("data: {{rows}}", {"data.train": Same(NS["rows"])}, id="data-shorthand-var"),
    pytest.param(
        "data:\n  train: {{dir}}/train.csv\n  validation: {{dir}}/dev.csv\n  text: review",
        {"data.train": "/data/reviews/train.csv", "data.eval": "/data/reviews/dev.csv", "data.text": "review"},
        id="var-inside-string",
    ),
    pytest.param("save_every: 30min\neval_every: 200", {"save_every": "30min", "eval_every": 200}, id="intervals"),
    pytest.param("save_every: null\neval_every: epoch", {"save_every": None, "eval_every": "epoch"}, id="intervals-2"),
    pytest.param("save_every: true", {"save_every": "epoch"}, id="interval-true-is-epoch"),
    pytest.param("freeze: bottom 8", {"freeze": "bottom 8"}, id="freeze-bottom"),
    pytest.param("freeze: 8", {"freeze": 8}, id="freeze-int"),
    pytest.param("freeze: 0.66", {"freeze": 0.66}, id="freeze-fraction"),
    pytest.param("freeze: [embeddings, blocks.0-3]", {"freeze": ["embeddings", "blocks.0-3"]}, id="freeze-list"),
    pytest.param(
        "freeze:\n  - embeddings\n  - blocks.-1", {"freeze": ["embeddings", "blocks.-1"]}, id="freeze-block-list"
    ),
    pytest.param("freeze: none", {"freeze": "none"}, id="freeze-none"),
    pytest.param("precision: bf16", {"precision": "bf16"}, id="precision"),
    pytest.param(
        "early_stopping: {metric: eval_f1, patience: 2}",
        {"early_stopping.metric": "eval_f1", "early_stopping.patience": 2, "early_stopping.mode": "auto"},
        id="nested-flow",
    ),
    pytest.param(
        "early_stopping:\n  metric: eval_accuracy\n  mode: max\n  min_delta: 0.001",
        {"early_stopping.metric": "eval_accuracy", "early_stopping.mode": "max", "early_stopping.min_delta": 0.001},
        id="nested-block",
    ),
    pytest.param("resume: true", {"resume_from": "last"}, id="resume-true"),
    pytest.param("labels: [no, yes]\nname: 'on'", {"labels": ["no", "yes"], "name": "on"}, id="yaml12-no-yes-strings"),
    pytest.param(
        "# a comment\n\nmodel: {{my_model}}   # trailing comment\nepochs: 1.5\nmax_steps: 10\n",
        {"model": Same(MY_MODEL), "epochs": 1.5, "max_steps": 10, "lr": 2e-5},
        id="comments-and-defaults",
    ),
    pytest.param("", {"lr": 2e-5, "batch_size": 16, "model": None}, id="empty-body-defaults"),
]


@pytest.mark.parametrize("body, expected", GOOD)
def test_good_cell(body, expected):
    cfg = FinetuneConfig.from_cell(body, NS)
    for path, want in expected.items():
        got = get(cfg, path)
        if isinstance(want, Same):
            assert got is want.obj, path
        else:
            assert (type(got), got) == (type(want), want), path


def test_plain_pyyaml_would_get_these_wrong():
    """The reason for our loader: YAML 1.1 (PyYAML's safe_load) reads `2e-5` as a string and `off` as False."""
    plain = yaml.safe_load("lr: 2e-5\ncache_frozen: off")
    assert plain == {"lr": "2e-5", "cache_frozen": False}


def test_placeholder_object_is_not_copied_or_stringified():
    big = list(range(1000))
    cfg = FinetuneConfig.from_cell("model: {{m}}\ndata:\n  train: {{big}}", {"m": MY_MODEL, "big": big})
    assert cfg.model is MY_MODEL
    assert cfg.data.train is big
    assert cfg.uses_objects


# ------------------------------------------------------------------------------------------------ bad cells
# (cell body, line the error must name, substrings the message must contain: the key and a hint)
BAD = [
    pytest.param("lrr: 1e-5", 2, ["lrr", "Did you mean 'lr'"], id="unknown-key"),
    pytest.param("# settings\n\nepochz: 3", 4, ["epochz", "Did you mean 'epochs'"], id="unknown-key-after-comments"),
    pytest.param("learning_rat: 1e-5", 2, ["learning_rat", "'learning_rate' (= 'lr')"], id="unknown-alias-typo"),
    pytest.param("model: m\ndata:\n  txt: review", 4, ["data.txt", "Did you mean 'text'"], id="unknown-nested-key"),
    pytest.param(
        "early_stopping: {metric: eval_f1, patiense: 2}",
        2,
        ["early_stopping.patiense", "'patience'"],
        id="unknown-flow-key",
    ),
    pytest.param("batch_size: many", 2, ["batch_size", "whole number", "'many'"], id="wrong-type"),
    pytest.param("epochs: 2\nbs: 2.5", 3, ["batch_size", "whole number", "2.5"], id="wrong-type-alias"),
    pytest.param("lr: fast", 2, ["lr", "a number", "'fast'"], id="wrong-type-float"),
    pytest.param("precision: fp8", 2, ["precision", "'fp8'", "'auto'", "'fp32'", "'bf16'", "'fp16'"], id="bad-enum"),
    pytest.param("cache_frozen: maybe", 2, ["cache_frozen", "'maybe'", "'auto'", "'on'", "'off'"], id="bad-enum-2"),
    pytest.param("lr: -1", 2, ["(lr)", "-1", "greater than 0"], id="out-of-range"),
    pytest.param("max_len: 4", 2, ["max_length", "greater than or equal to 8"], id="out-of-range-alias"),
    pytest.param("data:\n  eval_split: 1.5", 3, ["data.eval_split", "1.5", "less than 1"], id="out-of-range-nested"),
    pytest.param(
        "lr: 1e-5\nlearning_rate: 2e-5", 3, ["'learning_rate'", "'lr' (line 2)", "keep one"], id="alias-conflict"
    ),
    pytest.param(
        "learning_rate: 1e-5\nepochs: 1\nlr: 2e-5",
        4,
        ["'lr'", "'learning_rate' (line 2)", "keep one"],
        id="alias-conflict-reversed",
    ),
    pytest.param(
        "data:\n  valid: a.csv\n  eval: b.csv",
        4,
        ["data.eval", "'valid' (line 3)", "keep one"],
        id="alias-conflict-nested",
    ),
    pytest.param("lr: 1e-5\nepochs: 2\nlr: 2e-5", 4, ["'lr' given twice", "first on line 2"], id="duplicate-key"),
    pytest.param(
        "model: {{my_modle}}", 2, ["my_modle", "no variable", "Did you mean 'my_model'"], id="missing-var-close"
    ),
    pytest.param("epochs: 1\nmodel: {{missing}}", 3, ["{{missing}}", "no variable 'missing'"], id="missing-var"),
    pytest.param("model: {{my_model.weights}}", 2, ["my_model", "no attribute 'weights'"], id="missing-attribute"),
    pytest.param(
        "model: {{os.system('x')}}", 2, ["os.system('x')", "not a variable name", "never evaluated"], id="expression"
    ),
    pytest.param("epochs: 2\nlr: [1e-5,\n", 3, ["YAML", "key: value"], id="yaml-unclosed-bracket"),
    pytest.param("epochs: 2\nlr: 1e-5\n  bad: : x", 4, ["YAML", "mapping values are not allowed"], id="yaml-indent"),
    pytest.param('epochs: 2\nname: "run', 3, ["YAML"], id="yaml-unclosed-quote"),
    pytest.param("freeze: sideways", 2, ["freeze", "'sideways'", "bottom 8", "all_but_head"], id="bad-freeze"),
    pytest.param("freeze: [embeddings, layer3]", 2, ["freeze", "'layer3'", "blocks.0-7"], id="bad-freeze-list"),
    pytest.param("freeze: -3", 2, ["freeze", ">= 0"], id="bad-freeze-negative"),
    pytest.param("freeze: 1.5", 2, ["freeze", "between 0 and 1"], id="bad-freeze-fraction"),
    pytest.param("save_every: sometimes", 2, ["save_every", "'sometimes'", "30min", "epoch"], id="bad-interval"),
    pytest.param("eval_every: -5", 2, ["eval_every", "-5"], id="negative-interval"),
    pytest.param("save_every: 0 steps", 2, ["save_every", "0 steps"], id="zero-step-interval"),
    pytest.param("- lr: 1e-5\n- epochs: 2", 2, ["key: value", "list"], id="body-is-list"),
    pytest.param("just some words", 2, ["key: value", "'just some words'"], id="body-is-string"),
    pytest.param("data: 5", 2, ["data", "file path", "{{variable}}"], id="data-number"),
]


@pytest.mark.parametrize("body, line, parts", BAD)
def test_bad_cell(body, line, parts):
    with pytest.raises(ConfigError) as info:
        FinetuneConfig.from_cell(body, NS)
    msg = str(info.value)
    assert f"line {line}" in msg, msg
    for part in parts:
        assert part in msg, (part, msg)


def test_error_lines_follow_first_line():
    """A YAML file (first_line=1) and a cell (magic line = 1) count lines differently."""
    with pytest.raises(ConfigError, match=r"line 2 \(lrr\)"):
        FinetuneConfig.from_yaml("epochs: 1\nlrr: 1")
    with pytest.raises(ConfigError, match=r"line 3 \(lrr\)"):
        FinetuneConfig.from_cell("epochs: 1\nlrr: 1")


def test_every_problem_is_reported_in_line_order():
    with pytest.raises(ConfigError) as info:
        FinetuneConfig.from_cell("epochz: 3\nbs: 8\nlrr: 1e-5", NS)
    lines = str(info.value).splitlines()
    assert lines[0] == "Invalid finetune config:"
    assert [ln.strip().split(" (")[0] for ln in lines[1:]] == ["line 2", "line 4"]


def test_placeholders_are_never_evaluated(tmp_path):
    """`{{...}}` only names variables: no call, no attribute lookup, no import happens for an expression."""
    sentinel = tmp_path / "sentinel"
    looked_up = []

    class Spy:
        def __getattr__(self, name):
            looked_up.append(name)
            return lambda *a, **k: looked_up.append(("called", a))

    body = f"model: {{{{os.system('touch {sentinel}')}}}}\ntokenizer: {{{{spy.run('x')}}}}"
    assert "{{os.system(" in body
    with pytest.raises(ConfigError, match="not a variable name") as info:
        FinetuneConfig.from_cell(body, {"os": os, "spy": Spy()})
    assert "line 2" in str(info.value) and "line 3" in str(info.value)
    assert not sentinel.exists()
    assert looked_up == []
    with pytest.raises(ConfigError, match="not a variable name"):
        FinetuneConfig.from_cell("model: {{__import__('os').getcwd()}}", {})


def test_cross_field_error_names_the_fix():
    with pytest.raises(ConfigError, match="early_stopping needs evaluation: set eval_every"):
        FinetuneConfig.from_cell("eval_every: null\nearly_stopping: {patience: 2}")


# ------------------------------------------------------------------------------------------------ round trips
ROUND_TRIP = [
    pytest.param({}, id="defaults"),
    pytest.param(
        {"learning_rate": "3e-4", "bs": 8, "max_len": 128, "cache_frozen": "off", "precision": "bf16"}, id="aliases"
    ),
    pytest.param(
        {
            "name": "r1",
            "model": "bert-base-uncased",
            "data": {"train": "a.csv", "validation": "b.csv", "text": "review", "eval_split": 0.0},
            "freeze": ["embeddings", "blocks.0-3"],
            "early_stopping": {"metric": "eval_f1", "patience": 2, "mode": "max"},
            "save_every": "30min",
            "eval_every": 200,
            "labels": ["neg", "pos"],
        },
        id="nested",
    ),
    pytest.param({"model": MY_MODEL, "data": NS["rows"], "freeze": "bottom 2"}, id="objects"),
]


@pytest.mark.parametrize("data", ROUND_TRIP)
def test_round_trip_dict(data):
    cfg = FinetuneConfig.from_dict(data)
    again = FinetuneConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()
    assert cfg != cfg.replace(seed=cfg.seed + 1)  # equality is not trivially true


def test_round_trip_keeps_var_object_identity():
    cfg = FinetuneConfig.from_cell("model: {{my_model}}\ndata: {{rows}}\nlr: 1e-4", NS)
    d = cfg.to_dict()
    assert d["model"] is MY_MODEL and d["data"]["train"] is NS["rows"]
    again = FinetuneConfig.from_dict(d)
    assert again == cfg and again.model is MY_MODEL


def test_to_dict_is_plain_and_canonical():
    cfg = FinetuneConfig.from_cell("learning_rate: 1e-4\ndtype: fp16\nearly_stopping: {patience: 2}")
    d = cfg.to_dict()
    assert set(d) == set(FinetuneConfig.model_fields)
    assert d["lr"] == 1e-4 and d["precision"] == "fp16" and type(d["precision"]) is str
    assert d["early_stopping"] == {"metric": "eval_loss", "patience": 2, "mode": "auto", "min_delta": 0.0}
    assert type(d["early_stopping"]["mode"]) is str
    json.dumps(d)  # nothing but JSON types when no {{vars}} are used


def test_to_yaml_is_valid_yaml_and_reparses():
    class Frame:
        pass

    cfg = FinetuneConfig.from_cell(
        "model: {{my_model}}\ndata: {{df}}\nlr: 2e-5\ncache_frozen: off\nlabels: [no, yes]\nsave_every: 30min",
        {**NS, "df": Frame()},
    )
    text = cfg.to_yaml()
    plain = yaml.safe_load(text)
    assert plain["model"] == "<object: MyModel>"
    assert plain["data"]["train"] == "<object: Frame>"
    assert plain["lr"] == 2e-5 and plain["cache_frozen"] == "off" and plain["labels"] == ["no", "yes"]
    assert list(plain) == list(FinetuneConfig.model_fields)
    # without objects, our own parser reads the YAML back to an equal config
    no_objects = cfg.replace(model="bert-base-uncased", data={"train": "a.csv"})
    assert FinetuneConfig.from_yaml(no_objects.to_yaml()) == no_objects


def test_from_yaml_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 5e-5\nfreeze: bottom 2\n", encoding="utf-8")
    cfg = FinetuneConfig.from_yaml(str(path))
    assert (cfg.lr, cfg.freeze) == (5e-5, "bottom 2")
    with pytest.raises(ConfigError, match="does not exist"):
        FinetuneConfig.from_yaml(str(tmp_path / "nope.yaml"))


# ------------------------------------------------------------------------------------------------ schema exports
def test_json_schema_has_aliases_and_live():
    schema = FinetuneConfig.json_schema()
    props = schema["properties"]
    assert props["lr"]["aliases"] == ["learning_rate"]
    assert props["lr"]["live"].startswith("The new value becomes the base")
    assert props["lr"]["description"] == "Peak learning rate."
    assert "live" not in props["batch_size"] and "bs" in props["batch_size"]["aliases"]
    assert schema["$defs"]["DataConfig"]["properties"]["eval"]["aliases"] == ["validation", "valid", "test"]
    assert set(schema["$defs"]["Precision"]["enum"]) == {"auto", "fp32", "bf16", "fp16"}
    json.dumps(schema)


def test_live_fields():
    live = live_fields()
    assert {"lr", "weight_decay", "epochs", "freeze"} <= set(live)
    assert not {"batch_size", "model", "precision", "seed"} & set(live)
    assert all(isinstance(rule, str) and rule for rule in live.values())
    assert live == {k: v["live"] for k, v in FinetuneConfig.json_schema()["properties"].items() if "live" in v}


def test_config_reference_has_a_row_per_field():
    md = config_reference_markdown()
    rows = [r for r in md.splitlines() if r.startswith("| `")]
    keys = [r.split("`")[1] for r in rows]
    expected = list(FinetuneConfig.model_fields)
    expected += [f"data.{n}" for n in FinetuneConfig.model_fields["data"].annotation.model_fields]
    expected += ["early_stopping." + n for n in ("metric", "patience", "mode", "min_delta")]
    expected += ["lora." + n for n in ("r", "alpha", "dropout", "target_modules", "use_dora", "rslora")]
    assert sorted(keys) == sorted(expected)
    lr_row = rows[keys.index("lr")]
    assert "`learning_rate`" in lr_row and "| yes |" in lr_row and "*Live:*" in lr_row
    assert "| yes |" not in rows[keys.index("batch_size")]
    assert "bf16" in rows[keys.index("precision")]


# ------------------------------------------------------------------------------------------------ load_config
def test_override_under_one_alias_replaces_key_under_another():
    cfg = load_config({"learning_rate": 1e-3, "bs": 4}, lr=5e-4)
    assert (cfg.lr, cfg.batch_size) == (5e-4, 4)
    cfg = load_config({"lr": 1e-3}, learning_rate=5e-4, batch_size=2)
    assert (cfg.lr, cfg.batch_size) == (5e-4, 2)
    cfg = load_config("learning_rate: 1e-3\nmax_len: 64", max_seq_length=32)
    assert (cfg.lr, cfg.max_length) == (1e-3, 32)


def test_load_config_other_inputs():
    base = FinetuneConfig.from_dict({"lr": 1e-3, "data": {"train": "a.csv", "text": "t"}})
    assert load_config(base) is base
    changed = load_config(base, learning_rate=1e-4, data={"label": "y"})
    assert (changed.lr, changed.data.train, changed.data.text, changed.data.label) == (1e-4, "a.csv", "t", "y")
    assert load_config(None, epochs=1).epochs == 1.0
    with pytest.raises(ConfigError, match="unknown key 'lrr'. Did you mean 'lr'"):
        load_config({"lr": 1e-3}, lrr=5e-4)
    with pytest.raises(ConfigError, match="not int"):
        load_config(5)


def test_bad_override_is_not_blamed_on_a_config_line():
    with pytest.raises(ConfigError) as info:
        load_config("lr: 1e-3\nbs: 4", lr=-1)
    assert str(info.value) == "Invalid finetune config: lr: -1: input should be greater than 0"


# ------------------------------------------------------------------------------------------------ parse_interval
@pytest.mark.parametrize(
    "value, expected",
    [
        (500, ("steps", 500)),
        ("500", ("steps", 500)),
        ("10 steps", ("steps", 10)),
        ("1 step", ("steps", 1)),
        ("30min", ("seconds", 1800.0)),
        ("30 min", ("seconds", 1800.0)),
        ("5m", ("seconds", 300.0)),
        ("90s", ("seconds", 90.0)),
        ("1.5h", ("seconds", 5400.0)),
        ("2 hours", ("seconds", 7200.0)),
        ("epoch", ("epoch", 1)),
        ("Epoch", ("epoch", 1)),
        (True, ("epoch", 1)),
        (None, None),
        (False, None),
        (0, None),
        ("0", None),
        ("never", None),
        ("off", None),
    ],
)
def test_parse_interval(value, expected):
    assert parse_interval(value) == expected


@pytest.mark.parametrize("value", ["sometimes", "30 parsecs", "-5", "min", -5, "0 steps", "2.5 steps"])
def test_parse_interval_rejects(value):
    with pytest.raises(ValueError, match="interval|steps"):
        parse_interval(value)
