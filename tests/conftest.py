"""Shared fixtures: a tiny BERT saved to a local directory (weights from a config, tokenizer trained here) and
a small learnable sentiment-like data set. Milliseconds to build, no download."""

from __future__ import annotations

import os
import random

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

POS = "good great fine superb lovely wonderful excellent brilliant".split()
NEG = "bad awful poor terrible boring dull horrible weak".split()
FILL = "the a film movie plot actor story scene was is and it this very quite".split()


def make_texts(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        pos = rng.random() < 0.5
        words = [rng.choice(FILL) for _ in range(rng.randint(3, 14))]
        words.insert(rng.randrange(len(words) + 1), rng.choice(POS if pos else NEG))
        texts.append(" ".join(words))
        labels.append("positive" if pos else "negative")
    return texts, labels


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 2-block BERT (hidden 32) with a WordPiece tokenizer, saved like a hub checkpoint."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-bert"))


def build_tiny_model(d, num_layers: int = 2) -> str:
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    texts, _ = make_texts(400, seed=123)
    tok.train_from_iterator(texts + [" ".join(POS + NEG + FILL)], trainer)
    fast = BertTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=64,
    )
    fast.save_pretrained(d)
    cfg = BertConfig(
        vocab_size=fast.vocab_size,
        hidden_size=32,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(d)
    return str(d)


def tiny_llama(num_layers: int = 3):
    """A randomly initialised Llama causal LM (hidden 32, tied embeddings), for layer-map and schedule tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(
        LlamaConfig(
            hidden_size=32,
            num_hidden_layers=num_layers,
            num_attention_heads=2,
            num_key_value_heads=2,
            intermediate_size=64,
            vocab_size=100,
            max_position_embeddings=64,
            tie_word_embeddings=True,
        )
    )


def tiny_bert(num_layers: int = 4):
    """A randomly initialised BERT classifier (hidden 32), for tests that need a model object but no tokenizer."""
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(
        BertConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=num_layers,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    )


@pytest.fixture(scope="session")
def tiny_df():
    import pandas as pd

    texts, labels = make_texts(192, seed=1)
    return pd.DataFrame({"text": texts, "label": labels})


@pytest.fixture()
def tiny_config(tiny_model_dir, tiny_df, tmp_path):
    """A config dict for a fast CPU run on the tiny model."""
    return {
        "name": "tiny",
        "model": tiny_model_dir,
        "data": {"train": tiny_df, "eval_split": 0.25},
        "epochs": 2,
        "batch_size": 16,
        "lr": 1e-3,
        "log_every": 1,
        "output_dir": str(tmp_path / "runs"),
    }


@pytest.fixture(autouse=True)
def _index_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NB_FINETUNE_INDEX_DIR", str(tmp_path / "index"))
