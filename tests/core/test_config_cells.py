"""A table of good and bad `%%finetune` cell bodies: values parsed, errors with the right line, key and hint.

Line numbers count the `%%finetune` line as line 1, so the first body line is line 2."""

from __future__ import annotations

import pytest

from nb_finetune.core.config import FinetuneConfig, load_config, parse_cell
from nb_finetune.errors import ConfigError


class Model:  # stands for a model object in the notebook
    pass


NS = {"my_model": Model(), "data_dir": "/data", "df": [{"text": "a", "label": 0}]}

GOOD = [
    ("model: {{my_model}}", lambda c: c.model is NS["my_model"]),
    ("lr: 2e-5", lambda c: isinstance(c.lr, float) and c.lr == 2e-5),
    ("cache_frozen: off", lambda c: c.cache_frozen.value == "off"),
    ("learning_rate: 3e-4\nmax_len: 128\nbs: 8", lambda c: (c.lr, c.max_length, c.batch_size) == (3e-4, 128, 8)),
    ("warmup: 100", lambda c: c.warmup == 100),
    ("warmup: 0.1", lambda c: c.warmup == 0.1),
    ("data: reviews.csv", lambda c: c.data.train == "reviews.csv"),
    ("data:\n  train: {{data_dir}}/train.csv", lambda c: c.data.train == "/data/train.csv"),
    ("data: {{df}}", lambda c: c.data.train is NS["df"]),
    ("save_every: 30min\neval_every: 200", lambda c: (c.save_every, c.eval_every) == ("30min", 200)),
    ("freeze: bottom 8", lambda c: c.freeze == "bottom 8"),
    ("freeze: [embeddings, blocks.0-3]", lambda c: c.freeze == ["embeddings", "blocks.0-3"]),
    ("precision: bf16", lambda c: c.precision.value == "bf16"),
    (
        "early_stopping: {metric: eval_f1, patience: 2}",
        lambda c: (c.early_stopping.metric, c.early_stopping.patience) == ("eval_f1", 2),
    ),
    ("group_by_length: false", lambda c: c.group_by_length is False),
    ("epochs: 1.5\nmax_steps: 10", lambda c: (c.epochs, c.max_steps) == (1.5, 10)),
]


@pytest.mark.parametrize("body, check", GOOD, ids=[g[0].splitlines()[0] for g in GOOD])
def test_good_cells(body, check):
    cfg = FinetuneConfig.from_cell(body, NS)
    assert check(cfg)


BAD = [
    ("model: x\nlrr: 1e-5", ["line 3 (lrr)", "unknown key 'lrr'", "Did you mean 'lr'?"]),
    ("data:\n  train: a.csv\n  txt: review", ["line 4 (data.txt)", "Did you mean 'text'?"]),
    ("batch_size: many", ["line 2 (batch_size)", "expected a whole number, got 'many'"]),
    ("precision: fp8", ["line 2 (precision)", "'fp8' is not one of", "'bf16'"]),
    ("lr: -1", ["line 2 (lr)", "greater than 0"]),
    ("lr: 1e-5\nlearning_rate: 2e-5", ["line 3 (learning_rate)", "'learning_rate' and 'lr' (line 2) both set 'lr'"]),
    ("epochs: 1\nepochs: 2", ["line 3 (epochs)", "given twice", "first on line 2"]),
    ("model: {{my_modle}}", ["line 2", "no variable 'my_modle'", "Did you mean 'my_model'?"]),
    ("model: {{__import__('os').system('x')}}", ["line 2", "is not a variable name", "never evaluated"]),
    ("model: x\n  lr: [", ["line 3", "YAML"]),
    ("freeze: sometimes", ["freeze: 'sometimes' is not a freeze spec", "bottom 8"]),
    ("save_every: sometimes", ["line 2 (save_every)", "is not an interval"]),
    ("- just\n- a list", ["line 2", "expected `key: value` lines"]),
    ("early_stopping: {metric: eval_f1}\neval_every: null", ["early_stopping needs evaluation"]),
]


@pytest.mark.parametrize("body, needles", BAD, ids=[b[0].splitlines()[0] for b in BAD])
def test_bad_cells(body, needles):
    with pytest.raises(ConfigError) as e:
        FinetuneConfig.from_cell(body, NS)
    msg = str(e.value)
    for needle in needles:
        assert needle in msg, (needle, msg)
    assert "Traceback" not in msg


def test_placeholders_are_never_evaluated():
    calls = []

    class Spy:
        def __getattr__(self, name):
            calls.append(name)
            raise AttributeError(name)

    with pytest.raises(ConfigError):
        parse_cell("model: {{spy.run()}}", {"spy": Spy()})
    assert calls == []


@pytest.mark.parametrize(
    "cfg",
    [
        {"model": "m", "lr": 1e-4, "freeze": "bottom 2"},
        {
            "model": Model(),
            "data": {"train": "t.csv", "eval": "e.csv", "text": "x"},
            "early_stopping": {"patience": 2},
        },
        {"model": "m", "save_every": "30min", "precision": "bf16", "cache_frozen": False},
    ],
)
def test_round_trip(cfg):
    c = FinetuneConfig.from_dict(cfg)
    assert FinetuneConfig.from_dict(c.to_dict()) == c


def test_override_under_another_alias_replaces_the_key():
    cfg = load_config({"model": "m", "learning_rate": 1e-3}, lr=5e-5)
    assert cfg.lr == 5e-5
