"""Property-based fuzzing of the cell parser, the config and the magic's line parsing: any input gives a result or
a FinetuneError (the user's mistake, named), never another exception.

CI runs a few thousand examples in all; `NB_FINETUNE_FUZZ=20000` (examples per test) runs more. Control case: the
strategies reach real configs (`test_the_strategies_reach_valid_configs`), so "no crash" is not "nothing parsed".
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nb_finetune.core.config import (
    DataConfig,
    EarlyStopping,
    FinetuneConfig,
    alias_table,
    check_live_value,
    live_fields,
    parse_cell,
)
from nb_finetune.errors import FinetuneError
from nb_finetune.magics.parsing import parse_cell_line, parse_line

EXAMPLES = int(os.environ.get("NB_FINETUNE_FUZZ", "0")) or None
FUZZ = settings(
    max_examples=EXAMPLES or 400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    derandomize=EXAMPLES is None,  # CI: the same examples every run; with the flag: new ones each time
)

KEYS = sorted(set(alias_table(FinetuneConfig)) | {"data", "early_stopping"})
DATA_KEYS = sorted(alias_table(DataConfig))
ES_KEYS = sorted(alias_table(EarlyStopping))
NS = {"df": [{"text": "a", "label": "b"}], "n": 5, "s": "my-model", "obj": object(), "lst": [1, 2]}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["epoch", "2 epochs", "30min", "never", "auto", "all", "bottom 2", "cuda:1", "last", "1e-5"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=8) | st.sampled_from(DATA_KEYS), inner, max_size=4),
    ),
    max_leaves=10,
)
yaml_scalars = st.one_of(
    st.sampled_from(
        [
            "1",
            "-1",
            "0",
            "2e-5",
            ".inf",
            "-.inf",
            ".nan",
            "true",
            "off",
            "null",
            "~",
            "''",
            "[]",
            "{}",
            "[1, 2]",
            "{a: 1}",
            "!!python/name:os.system",
            "!!float x",
            "&a 1",
            "*a",
            "{{df}}",
            "{{n}}",
            "{{s}}",
            "{{missing}}",
            "{{obj.__class__}}",
            "{{s.upper}}",
            "{{ n }}",
            "{{1+1}}",
            "'{{s}}'",
            "|\n  text",
            ">-",
            "@",
            "`",
            "%",
            "0x1F",
            "0o17",
            "1_000",
            "2024-01-01",
            "12:30:00",
            "epoch",
            "bottom 4",
            "[embeddings, head]",
        ]
    ),
    st.text(max_size=15),
)


@st.composite
def yamlish(draw):
    """Cell bodies of `key: value` lines, nested blocks and indentation mistakes: what a user types."""
    lines = []
    for _ in range(draw(st.integers(0, 8))):
        key = draw(st.sampled_from(KEYS) | st.text(min_size=1, max_size=10))
        indent = draw(st.sampled_from(["", "", "", "  ", " ", "\t"]))
        if draw(st.booleans()) and key in ("data", "early_stopping"):
            lines.append(f"{indent}{key}:")
            sub = DATA_KEYS if key == "data" else ES_KEYS
            for _ in range(draw(st.integers(0, 3))):
                lines.append(f"{indent}  {draw(st.sampled_from(sub))}: {draw(yaml_scalars)}")
        else:
            lines.append(f"{indent}{key}: {draw(yaml_scalars)}")
    return "\n".join(lines)


def _config_or_usage_error(fn, *a):
    try:
        return fn(*a)
    except FinetuneError as e:
        assert str(e).strip(), "an error without a message"
        return None


@FUZZ
@given(st.text(max_size=200))
def test_any_text_is_a_config_or_a_usage_error(text):
    _config_or_usage_error(FinetuneConfig.from_cell, text, NS)


@FUZZ
@given(yamlish())
def test_any_yaml_like_cell_is_a_config_or_a_usage_error(text):
    cfg = _config_or_usage_error(FinetuneConfig.from_cell, text, NS)
    if cfg is not None:  # what validated round-trips
        assert FinetuneConfig.from_dict(cfg.to_dict()) == cfg


@FUZZ
@given(st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=10), values, max_size=6))
def test_any_mapping_is_a_config_or_a_usage_error(data):
    _config_or_usage_error(FinetuneConfig.from_dict, data)


@FUZZ
@given(st.sampled_from(sorted(live_fields())), values)
def test_any_live_value_is_accepted_or_a_usage_error(name, value):
    _config_or_usage_error(check_live_value, name, value)


@FUZZ
@given(st.text(max_size=80))
def test_any_magic_line_is_parsed_or_a_usage_error(line):
    _config_or_usage_error(parse_cell_line, line)
    _config_or_usage_error(parse_line, line)
    _config_or_usage_error(parse_line, "set run " + line)


@pytest.mark.parametrize(
    "text",
    ["lr: 2e-5\nepochs: 1", "data:\n  train: x.csv\n  eval_split: 0.2", "model: {{s}}\nfreeze: bottom 2"],
)
def test_the_strategies_reach_valid_configs(text):
    """Control: inputs of the strategies' shapes do give configs (the properties are not vacuous)."""
    assert isinstance(FinetuneConfig.from_cell(text, NS), FinetuneConfig)
    assert parse_cell(text, NS)[0]
