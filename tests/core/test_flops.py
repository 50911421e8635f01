"""FLOP accounting with partial freezing and the cache, checked against a hand count on a tiny BERT."""

from __future__ import annotations

import pytest
from conftest import tiny_bert

from nb_finetune.core.flops import FlopModel, peak_flops
from nb_finetune.core.freezing import build_layer_map, resolve_freeze


@pytest.fixture(scope="module")
def tiny():
    model = tiny_bert(num_layers=4)
    return model, build_layer_map(model)


def test_full_finetuning_is_three_forwards(tiny):
    model, lm = tiny
    fm = FlopModel(model, lm)
    p = lm.group("blocks.0").num_params
    fwd = 2 * p + 4 * 10 * 32
    head = lm.group("head").num_params
    # forward + activation gradient + weight gradient, 4 blocks, 7 tokens padded to 10, 1 sequence
    expected = 7 * 4 * (fwd + fwd + 2 * p) + 1 * 2 * head * 3
    assert fm.per_batch(tokens=7, width=10, sequences=1) == expected


def test_freezing_and_cache_remove_exactly_their_share(tiny):
    model, lm = tiny
    fm = FlopModel(model, lm)
    p = lm.group("blocks.0").num_params
    fwd = 2 * p + 4 * 10 * 32
    head = lm.group("head").num_params * 2 * 3
    fm.update(resolve_freeze("bottom 2", lm), cache_depth=2)
    # blocks 0-1 frozen: forward only; block 2 is the lowest trainable, so it needs no activation gradient
    no_cache = fm.per_batch(7, 10, 1)
    assert no_cache == 7 * (2 * fwd + (fwd + 2 * p) + (2 * fwd + 2 * p)) + head
    cached = fm.per_batch(7, 10, 1, served_depth=2)
    assert no_cache - cached == 7 * 2 * fwd


def test_peaks():
    assert peak_flops("NVIDIA H100 80GB HBM3 (79 GiB)", "bf16") == 989e12
    assert peak_flops("Tesla T4 (15 GiB)", "fp16") == 65e12
    assert peak_flops("CPU (2 threads)", "fp32") is None
