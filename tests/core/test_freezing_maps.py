"""Layer maps for different architectures, found from the structure, and freeze specs resolved on them."""

from __future__ import annotations

import pytest
import torch.nn as nn
from conftest import tiny_bert

from nb_finetune.core.freezing import apply_freeze, build_layer_map, resolve_freeze, set_frozen_eval
from nb_finetune.errors import ConfigError


def _bert():
    return tiny_bert(num_layers=4)


def _llama():
    from transformers import LlamaConfig, LlamaForSequenceClassification

    return LlamaForSequenceClassification(
        LlamaConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=1,
            intermediate_size=64,
            num_labels=2,
            pad_token_id=0,
        )
    )


def _vit():
    from transformers import ViTConfig, ViTForImageClassification

    return ViTForImageClassification(
        ViTConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=16,
            patch_size=8,
            num_labels=3,
        )
    )


@pytest.mark.parametrize(
    "make, blocks, blocks_path",
    [(_bert, 4, "bert.encoder.layer"), (_llama, 3, "model.layers"), (_vit, 2, None)],
)
def test_layer_map_groups_every_parameter_once(make, blocks, blocks_path):
    model = make()
    lm = build_layer_map(model)
    if blocks_path:
        assert lm.blocks_path == blocks_path
    else:  # where the blocks sit moved between transformers versions; the map finds them either way
        assert lm.blocks_path.split(".")[-1] in ("layer", "layers")
    assert lm.names == ["embeddings", *[f"blocks.{i}" for i in range(blocks)], "head"]
    names = [p for g in lm.groups for p in g.param_names]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())  # none lost, none twice
    assert sum(g.num_params for g in lm.groups) == sum(p.numel() for p in model.parameters())


def test_plain_module_falls_back_to_its_children():
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 2))
    lm = build_layer_map(m)
    assert lm.names == ["blocks.0", "blocks.1", "blocks.2"]
    assert resolve_freeze("bottom 2", lm) == {"blocks.0", "blocks.1"}


@pytest.mark.parametrize(
    "spec, frozen",
    [
        ("bottom 2", {"embeddings", "blocks.0", "blocks.1"}),
        (2, {"embeddings", "blocks.0", "blocks.1"}),
        (0.5, {"embeddings", "blocks.0", "blocks.1"}),
        ("train_last 1", {"embeddings", "blocks.0", "blocks.1", "blocks.2"}),
        ("all_but_head", {"embeddings", "blocks.0", "blocks.1", "blocks.2", "blocks.3"}),
        (["embeddings", "blocks.0-1"], {"embeddings", "blocks.0", "blocks.1"}),
        ("blocks.-1", {"blocks.3"}),
        ("none", set()),
        (None, set()),
    ],
)
def test_freeze_specs(spec, frozen):
    assert resolve_freeze(spec, build_layer_map(_bert())) == frozen


@pytest.mark.parametrize(
    "spec, needle", [("bottom 9", "has 4"), ("blocks.2-7", "out of range"), ("train_last 5", "has 4")]
)
def test_freeze_spec_errors_name_the_model_shape(spec, needle):
    with pytest.raises(ConfigError, match=needle):
        resolve_freeze(spec, build_layer_map(_bert()))


def test_apply_freeze_counts_and_refuses_freezing_everything():
    model = _bert()
    lm = build_layer_map(model)
    trainable, total = apply_freeze(model, lm, resolve_freeze("bottom 2", lm))
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert total == sum(p.numel() for p in model.parameters()) and trainable < total
    with pytest.raises(ConfigError, match="nothing would train"):
        apply_freeze(model, lm, set(lm.names))


def test_frozen_blocks_run_in_eval_mode():
    model = _bert()
    lm = build_layer_map(model)
    frozen = resolve_freeze("bottom 2", lm)
    model.train()
    set_frozen_eval(model, lm, frozen)
    assert not model.bert.embeddings.training and not model.bert.encoder.layer[1].training
    assert not any(m.training for m in model.bert.encoder.layer[1].modules() if isinstance(m, nn.Dropout))
    assert all(m.training for m in model.bert.encoder.layer[2].modules() if isinstance(m, nn.Dropout))
    assert model.bert.encoder.layer[2].training and model.classifier.training
    text = lm.describe(frozen)
    assert "blocks.0-1" in text and "frozen" in text and "trainable" in text and "total" in text
