"""Text classification: pre-flight checks, model with a fresh head, tokenized data, metrics, predict."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError, DataError, ModelError
from .. import data as D

__all__ = ["Prepared", "preflight", "build_model", "build_data", "compute_metrics", "predict"]


@dataclass
class Prepared:
    """What pre-flight resolved on the calling thread; the worker builds the run from it."""

    tokenizer: Any
    hf_config: Any  # transformers PretrainedConfig, or None when the model is an object
    model_obj: Any  # the user's model object, or None
    model_id: str
    train: Any  # datasets.Dataset
    eval: Any | None
    text_col: str
    pair_col: str | None
    label_col: str
    label_names: list[str]
    label_map: dict[Any, int]
    max_length: int


def _hub_error(what: str, ref: str, e: Exception) -> ModelError:
    local = Path(ref).expanduser()
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    if local.exists():
        return ModelError(
            f"{what}: could not load {ref!r} from the local directory ({first}). "
            "It needs a config.json and weights (model.safetensors or pytorch_model.bin)."
        )
    looks_local = ref.startswith((".", "/", "~")) or "\\" in ref or ref.count("/") > 1
    if looks_local:
        return ModelError(f"{what}: directory {ref!r} does not exist (working directory: {Path.cwd()})")
    return ModelError(
        f"{what}: could not load {ref!r}: no local directory by that name, and the Hugging Face Hub did not "
        f"provide it ({type(e).__name__}: {first}). Check the model id, your network / HF_HUB_OFFLINE, or pass a "
        "local directory or a model object as {{my_model}}."
    )


def _load_tokenizer(ref, trust_remote_code: bool, what="tokenizer"):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(ref, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - transformers raises OSError, ValueError, HTTP errors...
        raise _hub_error(what, str(ref), e) from None


def preflight(cfg) -> Prepared:
    """Resolve model config, tokenizer, data, columns and labels. Every user mistake raises a FinetuneError here."""
    import torch
    from transformers import AutoConfig, PreTrainedTokenizerBase

    if cfg.model is None:
        raise ConfigError("Invalid finetune config: 'model' is required: a hub id, a local directory or {{my_model}}")
    if cfg.data.train is None:
        raise ConfigError("Invalid finetune config: 'data.train' is required (a file, a hub dataset or {{df}})")

    # model
    model_obj, hf_config = None, None
    if isinstance(cfg.model, (str, Path)):
        model_id = str(cfg.model)
        kw = {"gguf_file": cfg.gguf_file} if cfg.gguf_file else {}
        try:
            hf_config = AutoConfig.from_pretrained(model_id, trust_remote_code=cfg.trust_remote_code, **kw)
        except ValueError as e:
            if "trust_remote_code" in str(e):
                raise ModelError(
                    f"model: {model_id!r} needs code shipped with the checkpoint; set "
                    "`trust_remote_code: true` only if you trust its author"
                ) from None
            raise _hub_error("model", model_id, e) from None
        except Exception as e:  # noqa: BLE001
            raise _hub_error("model", model_id, e) from None
    elif isinstance(cfg.model, torch.nn.Module):
        model_obj = cfg.model
        hf_config = getattr(model_obj, "config", None)
        model_id = getattr(model_obj, "name_or_path", "") or type(model_obj).__name__
        if not hasattr(model_obj, "config") or "ForSequenceClassification" not in type(model_obj).__name__:
            raise ModelError(
                f"model: {{{{...}}}} is a {type(model_obj).__name__}; text classification needs a "
                "*ForSequenceClassification model object, or a hub id / directory (the head is then added for you)"
            )
    else:
        raise ModelError(f"model: expected a hub id, a directory or a model object, got {type(cfg.model).__name__}")

    # tokenizer
    if cfg.tokenizer is not None and isinstance(cfg.tokenizer, PreTrainedTokenizerBase):
        tokenizer = cfg.tokenizer
    elif cfg.tokenizer is not None:
        tokenizer = _load_tokenizer(str(cfg.tokenizer), cfg.trust_remote_code)
    elif model_obj is not None:
        src = getattr(model_obj, "name_or_path", "")
        if not src or not Path(src).expanduser().exists():
            raise ModelError(
                "tokenizer: the model object carries no tokenizer; add `tokenizer: {{tok}}` "
                "(a tokenizer object) or `tokenizer: <hub id or directory>`"
            )
        tokenizer = _load_tokenizer(src, cfg.trust_remote_code)
    else:
        tokenizer = _load_tokenizer(model_id, cfg.trust_remote_code, what="model (its tokenizer)")
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            raise ModelError("tokenizer: it has no padding token and no end-of-sequence token to use as one")

    # data
    train = D.load_source(cfg.data.train, role="train", trust_remote_code=cfg.trust_remote_code)
    eval_ = None
    if cfg.data.eval is not None:
        eval_ = D.load_source(cfg.data.eval, role="eval", trust_remote_code=cfg.trust_remote_code)
    if len(train) == 0:
        raise DataError("data.train is empty")
    text_col, label_col, pair_col = D.detect_columns(train, cfg.data.text, cfg.data.label, cfg.data.text_pair)
    if eval_ is not None:
        missing = [c for c in (text_col, label_col, pair_col) if c and c not in eval_.column_names]
        if missing:
            raise DataError(
                f"data.eval lacks column(s) {missing} that data.train has "
                f"(data.eval columns: {', '.join(eval_.column_names)})"
            )
    elif cfg.data.eval_split:
        if len(train) < 2:
            raise DataError("data.eval_split: data.train has fewer than 2 examples; nothing to hold out")
        train, eval_ = D.holdout_split(train, cfg.data.eval_split, cfg.seed)
    names, mapping = D.infer_labels(train, eval_, label_col, cfg.labels)
    if model_obj is not None and getattr(hf_config, "num_labels", len(names)) != len(names):
        raise ModelError(
            f"model: the model object has {hf_config.num_labels} labels but the data has "
            f"{len(names)} ({names[:10]}); build it with num_labels={len(names)}"
        )

    limit = tokenizer.model_max_length if tokenizer.model_max_length and tokenizer.model_max_length < 1e6 else 512
    pos = getattr(hf_config, "max_position_embeddings", None) if hf_config is not None else None
    max_length = cfg.max_length or min(512, limit, pos or 512)
    if pos and max_length > pos:
        raise ConfigError(
            f"Invalid finetune config: max_length {max_length} is longer than the model's "
            f"{pos} positions; use at most {pos}"
        )
    # tokenize two examples now, so a broken text column fails here rather than in the worker
    sample = train.select(range(min(2, len(train))))
    try:
        tokenizer([str(t) for t in sample[text_col]], truncation=True, max_length=max_length)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"data.text: the tokenizer cannot read column '{text_col}': {e}") from None
    return Prepared(
        tokenizer,
        hf_config,
        model_obj,
        model_id,
        train,
        eval_,
        text_col,
        pair_col,
        label_col,
        names,
        mapping,
        max_length,
    )


def build_model(cfg, prep: Prepared, *, meta: bool = False):
    """The model with a classification head for `prep.label_names`. `meta=True` builds shapes only (dry run)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    if prep.model_obj is not None:
        model = prep.model_obj
    else:
        names = prep.label_names
        kwargs = dict(
            num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)}
        )
        if meta:
            conf = prep.hf_config.__class__.from_dict({**prep.hf_config.to_dict(), **kwargs})
            with torch.device("meta"):
                return AutoModelForSequenceClassification.from_config(conf)
        if cfg.gguf_file:
            kwargs["gguf_file"] = cfg.gguf_file
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                prep.model_id, trust_remote_code=cfg.trust_remote_code, ignore_mismatched_sizes=True, **kwargs
            )
        except Exception as e:  # noqa: BLE001
            raise _hub_error("model", prep.model_id, e) from None
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = prep.tokenizer.pad_token_id
    if cfg.dropout is not None:
        set_dropout(model, cfg.dropout)
    return model


def set_dropout(model, p: float) -> None:
    import torch.nn as nn

    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = p
        for attr in ("dropout_prob", "attention_dropout"):
            if isinstance(getattr(m, attr, None), float):
                setattr(m, attr, p)
    for attr in (
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
        "attention_dropout",
        "hidden_dropout",
        "classifier_dropout",
        "dropout",
    ):
        if isinstance(getattr(model.config, attr, None), float):
            setattr(model.config, attr, p)


def _encode(prep: Prepared, ds) -> D.TokenizedData:
    texts = [str(t) for t in ds[prep.text_col]]
    pairs = [str(t) for t in ds[prep.pair_col]] if prep.pair_col else None
    labels = None
    if prep.label_col in ds.column_names:
        raw = ds[prep.label_col]
        try:
            labels = [
                prep.label_map[v if isinstance(v, str) else float(v) if isinstance(v, float) else int(v)] for v in raw
            ]
        except KeyError as e:
            raise DataError(f"data.label: value {e.args[0]!r} is not one of the labels {prep.label_names}") from None
    return D.tokenize(prep.tokenizer, texts, pairs, prep.max_length, labels)


def build_data(prep: Prepared) -> tuple[D.TokenizedData, D.TokenizedData | None]:
    return _encode(prep, prep.train), (_encode(prep, prep.eval) if prep.eval is not None else None)


def compute_metrics(preds: np.ndarray, labels: np.ndarray, num_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1 (classes absent from both predictions and labels are skipped)."""
    acc = float((preds == labels).mean()) if len(labels) else 0.0
    f1s = []
    for c in range(num_labels):
        tp = int(((preds == c) & (labels == c)).sum())
        fp = int(((preds == c) & (labels != c)).sum())
        fn = int(((preds != c) & (labels == c)).sum())
        if tp + fp + fn == 0:
            continue
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return {"accuracy": acc, "f1": float(np.mean(f1s)) if f1s else 0.0}


def predict(model, tokenizer, texts: list[str], label_names: list[str], max_length: int, batch_size: int = 32):
    """[{'label': ..., 'score': ...}, ...] for each text."""
    import torch

    if isinstance(texts, str):
        texts = [texts]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                enc = tokenizer(
                    list(texts[i : i + batch_size]),
                    truncation=True,
                    max_length=max_length,
                    padding=True,
                    return_tensors="pt",
                ).to(device)
                probs = model(**enc).logits.float().softmax(-1).cpu()
                for row in probs:
                    j = int(row.argmax())
                    out.append({"label": label_names[j], "score": float(row[j])})
    finally:
        model.train(was_training)
    return out
