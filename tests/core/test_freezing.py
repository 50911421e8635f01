"""Layer maps of tiny BERT, Llama, ViT and plain torch models (built from configs, no download), freeze specs
resolved on them, and what freezing does to `requires_grad` and train/eval mode."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
nn = torch.nn

from conftest import tiny_llama  # noqa: E402

from nb_finetune.core.freezing import (  # noqa: E402
    apply_freeze,
    build_layer_map,
    resolve_freeze,
    set_frozen_eval,
)
from nb_finetune.errors import ConfigError  # noqa: E402


def bert(dropout: float = 0.1):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=100,
        max_position_embeddings=64,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    return transformers.BertForSequenceClassification(cfg)


def llama():
    torch.manual_seed(0)
    return tiny_llama()


def vit():
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=16,
        patch_size=8,
        num_labels=3,
    )
    return transformers.ViTForImageClassification(cfg)


def sequential():
    return nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 2))


def unique_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once


@pytest.fixture(scope="module")
def bert_model():
    return bert()


@pytest.fixture(scope="module")
def bert_map(bert_model):
    return build_layer_map(bert_model)


# ------------------------------------------------------------------------------------------------ layer maps
def _expected_counts(model, kind):
    """Parameter counts per group, computed from the architecture's own modules."""
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    if kind == "bert":
        blocks = model.bert.encoder.layer
        return n(model.bert.embeddings), [n(b) for b in blocks], n(model.bert.pooler) + n(model.classifier)
    if kind == "llama":
        blocks = model.model.layers
        return n(model.model.embed_tokens), [n(b) for b in blocks], n(model.model.norm)  # lm_head is tied
    if kind == "vit":
        blocks = model.vit.encoder.layer if hasattr(model.vit, "encoder") else model.vit.layers
        return n(model.vit.embeddings), [n(b) for b in blocks], n(model.vit.layernorm) + n(model.classifier)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind, make, num_blocks", [("bert", bert, 4), ("llama", llama, 3), ("vit", vit, 2)])
def test_layer_map_of_transformers(kind, make, num_blocks):
    model = make()
    lm = build_layer_map(model)
    assert lm.names == ["embeddings"] + [f"blocks.{i}" for i in range(num_blocks)] + ["head"]
    assert lm.num_blocks == num_blocks
    emb, blocks, head = _expected_counts(model, kind)
    assert lm.group("embeddings").num_params == emb
    assert [lm.group(f"blocks.{i}").num_params for i in range(num_blocks)] == blocks
    assert lm.group("head").num_params == head
    # nothing lost, nothing counted twice
    all_names = [p for g in lm.groups for p in g.param_names]
    assert len(all_names) == len(set(all_names))
    assert set(all_names) == {n for n, _ in model.named_parameters()}
    assert sum(g.num_params for g in lm.groups) == unique_params(model)
    for g in lm.groups:
        assert g.num_params == sum(model.get_parameter(p).numel() for p in g.param_names)
        assert g.module_names, g.name  # every group can be switched to eval mode


def test_tied_embeddings_counted_once():
    model = llama()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    lm = build_layer_map(model)
    owner = lm.group_of_param()
    assert owner["model.embed_tokens.weight"] == "embeddings"
    assert "lm_head.weight" not in owner
    assert lm.group("embeddings").num_params == 100 * 32


def test_bert_block_and_module_names(bert_map):
    assert bert_map.blocks_path == "bert.encoder.layer"
    assert bert_map.group("blocks.2").module_names == ["bert.encoder.layer.2"]
    assert bert_map.group("embeddings").module_names == ["bert.embeddings"]
    assert sorted(bert_map.group("head").module_names) == ["bert.pooler", "classifier"]
    assert all(p.startswith("bert.encoder.layer.3.") for p in bert_map.group("blocks.3").param_names)


def test_plain_module_falls_back_to_children():
    model = sequential()
    lm = build_layer_map(model)
    assert lm.blocks_path is None
    # parameter-less children (ReLU, Dropout) are no group
    assert lm.names == ["blocks.0", "blocks.1", "blocks.2"]
    assert [g.module_names for g in lm.groups] == [["0"], ["1"], ["4"]]
    assert [g.num_params for g in lm.groups] == [40, 4 * 8 + 8, 8 * 2 + 2]
    assert sum(g.num_params for g in lm.groups) == unique_params(model)


def test_plain_module_with_its_own_parameter():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))
            self.lin = nn.Linear(3, 3)
            self.drop = nn.Dropout(0.5)

    model = Net()
    lm = build_layer_map(model)
    assert sum(g.num_params for g in lm.groups) == 3 + 12
    frozen = {lm.group_of_param()["scale"]}
    assert apply_freeze(model, lm, frozen) == (12, 15)
    model.train()
    set_frozen_eval(model, lm, frozen)  # a bare parameter has no module to switch: no error
    assert model.lin.training


# ------------------------------------------------------------------------------------------------ specs
EMB_BLOCKS = lambda *idx: {"embeddings"} | {f"blocks.{i}" for i in idx}  # noqa: E731


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("bottom 2", EMB_BLOCKS(0, 1)),
        ("first 1", EMB_BLOCKS(0)),
        (2, EMB_BLOCKS(0, 1)),
        ("2", EMB_BLOCKS(0, 1)),
        (0.5, EMB_BLOCKS(0, 1)),
        ("0.75", EMB_BLOCKS(0, 1, 2)),
        ("train_last 1", EMB_BLOCKS(0, 1, 2)),
        ("train last 3", EMB_BLOCKS(0)),
        ("train_last 4", set()),
        ("all_but_head", EMB_BLOCKS(0, 1, 2, 3)),
        (True, EMB_BLOCKS(0, 1, 2, 3)),
        (["embeddings", "blocks.0-1"], EMB_BLOCKS(0, 1)),
        (["blocks.1-2"], {"blocks.1", "blocks.2"}),
        ("blocks.-1", {"blocks.3"}),
        (["embeddings", "blocks.-2--1"], {"embeddings", "blocks.2", "blocks.3"}),
        ("head", {"head"}),
        ("none", set()),
        ("off", set()),
        (None, set()),
        (0, set()),
        (False, set()),
    ],
)
def test_resolve_freeze(bert_map, spec, expected):
    assert resolve_freeze(spec, bert_map) == expected


@pytest.mark.parametrize(
    "spec, match",
    [
        ("bottom 5", "asks for 5 blocks but the model has 4"),
        (9, "asks for 9 blocks but the model has 4"),
        ("train_last 5", "train the last 5 blocks but the model has 4"),
        (["blocks.2-7"], r"'blocks.2-7' is out of range: the model has blocks.0-3"),
        ("blocks.4", r"'blocks.4' is out of range"),
        ("blocks.-5", r"'blocks.-5' is out of range"),
        (["blocks.3-1"], "out of range"),
        ("sideways", "not a freeze spec"),
        (["embeddings", "layer.3"], "is not a group"),
    ],
)
def test_resolve_freeze_errors(bert_map, spec, match):
    with pytest.raises(ConfigError, match=match):
        resolve_freeze(spec, bert_map)


def test_plain_module_has_no_embeddings_group():
    lm = build_layer_map(sequential())
    assert resolve_freeze("bottom 2", lm) == {"blocks.0", "blocks.1"}
    with pytest.raises(ConfigError, match="no 'embeddings' group"):
        resolve_freeze(["embeddings"], lm)


@pytest.mark.parametrize("spec", ["all", ["all"], ["all_but_head", "head"]])
def test_freezing_everything_is_refused(spec):
    model = bert()
    lm = build_layer_map(model)
    frozen = resolve_freeze(spec, lm)
    assert frozen == set(lm.names)
    with pytest.raises(ConfigError, match="freezes every parameter"):
        apply_freeze(model, lm, frozen)


# ------------------------------------------------------------------------------------------------ applying
@pytest.mark.parametrize("spec", ["bottom 2", "all_but_head", "none", ["blocks.1", "blocks.3"]])
def test_apply_freeze_counts_match_requires_grad(spec):
    model = bert()
    lm = build_layer_map(model)
    frozen = resolve_freeze(spec, lm)
    trainable, total = apply_freeze(model, lm, frozen)
    assert total == unique_params(model)
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == sum(g.num_params for g in lm.groups if g.name not in frozen)
    owner = lm.group_of_param()
    for name, p in model.named_parameters():
        assert p.requires_grad == (owner[name] not in frozen), name


def test_apply_freeze_can_unfreeze_and_frees_grads():
    model = bert()
    lm = build_layer_map(model)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    apply_freeze(model, lm, resolve_freeze("bottom 3", lm))
    assert model.bert.embeddings.word_embeddings.weight.grad is None
    assert model.classifier.weight.grad is not None
    trainable, total = apply_freeze(model, lm, resolve_freeze("bottom 1", lm))  # a live change to less freezing
    assert model.bert.encoder.layer[2].output.dense.weight.requires_grad
    assert not model.bert.encoder.layer[0].output.dense.weight.requires_grad
    assert total - trainable == lm.group("embeddings").num_params + lm.group("blocks.0").num_params


def test_set_frozen_eval_turns_dropout_off_only_in_frozen_groups():
    model = bert(dropout=0.5)
    lm = build_layer_map(model)
    frozen = resolve_freeze("bottom 2", lm)
    apply_freeze(model, lm, frozen)
    model.train()
    set_frozen_eval(model, lm, frozen)
    mods = dict(model.named_modules())
    for g in lm.groups:
        for root in g.module_names:
            for name, m in mods.items():
                if name == root or name.startswith(root + "."):
                    assert m.training == (g.name not in frozen), name
    assert model.training and model.dropout.training  # the model itself and the head's dropout still train
    # dropout really is off in a frozen group and on in a trainable one
    ids = torch.randint(0, 100, (2, 12))
    with torch.no_grad():
        assert torch.equal(model.bert.embeddings(ids), model.bert.embeddings(ids))
        x = torch.randn(2, 12, 32)

        def trainable_block():
            y = model.bert.encoder.layer[3](x)
            return y[0] if isinstance(y, tuple) else y

        assert not torch.equal(trainable_block(), trainable_block())


def test_set_frozen_eval_on_plain_module():
    model = sequential()
    lm = build_layer_map(model)
    frozen = {"blocks.0", "blocks.1"}
    model.train()
    set_frozen_eval(model, lm, frozen)
    assert [model[i].training for i in range(5)] == [False, False, True, True, True]


# ------------------------------------------------------------------------------------------------ describe
def test_describe_mentions_frozen_trainable_and_totals(bert_map):
    frozen = resolve_freeze("bottom 2", bert_map)
    text = bert_map.describe(frozen)
    lines = text.splitlines()
    assert lines[0].split() == ["group", "params", "state"]
    emb = bert_map.group("embeddings").num_params
    block = bert_map.group("blocks.0").num_params
    head = bert_map.group("head").num_params
    total = emb + 4 * block + head
    trainable = 2 * block + head
    assert lines[1].split() == ["embeddings", f"{emb:,}", "frozen"]
    assert lines[2].split() == ["blocks.0-1", f"{2 * block:,}", "frozen"]  # equal neighbours share a row
    assert lines[3].split() == ["blocks.2-3", f"{2 * block:,}", "trainable"]
    assert lines[4].split() == ["head", f"{head:,}", "trainable"]
    assert lines[5].split() == [
        "total",
        f"{total:,}",
        "trainable",
        f"{trainable:,}",
        f"({100 * trainable / total:.1f}%)",
    ]
    assert len(lines) == 6


def test_describe_without_freezing(bert_map):
    text = bert_map.describe()
    assert "frozen" not in text
    assert text.splitlines()[-1].endswith("(100.0%)")
    assert bert_map.table({"head"})[-1] == {
        "group": "head",
        "kind": "head",
        "params": bert_map.group("head").num_params,
        "trainable": False,
    }
