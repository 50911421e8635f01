"""Pieces every text task shares: resolving the model, its tokenizer and the data on the calling thread, building
a transformers model with a fresh head, dropout overrides, and batched inference. Pure helpers, no task logic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import ConfigError, DataError, ModelError
from .. import data as D

__all__ = [
    "hub_error",
    "load_tokenizer",
    "resolve_model",
    "resolve_tokenizer",
    "load_splits",
    "resolve_max_length",
    "from_pretrained",
    "set_dropout",
    "require_model_and_data",
]


def hub_error(what: str, ref: str, e: Exception) -> ModelError:
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


def load_tokenizer(ref, trust_remote_code: bool, what="tokenizer"):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(ref, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - transformers raises OSError, ValueError, HTTP errors...
        raise hub_error(what, str(ref), e) from None


def require_model_and_data(cfg) -> None:
    if cfg.model is None:
        raise ConfigError("Invalid finetune config: 'model' is required: a hub id, a local directory or {{my_model}}")
    if cfg.data.train is None:
        raise ConfigError("Invalid finetune config: 'data.train' is required (a file, a hub dataset or {{df}})")


def resolve_model(cfg, *, head_suffix: str, task_title: str) -> tuple[Any, Any, str]:
    """(model object or None, transformers config, model id) for `cfg.model`.

    `head_suffix`: the class-name suffix a model object must have for this task (`ForTokenClassification`)."""
    import torch
    from transformers import AutoConfig

    if isinstance(cfg.model, (str, Path)):
        model_id = str(cfg.model)
        kw = {"gguf_file": cfg.gguf_file} if cfg.gguf_file else {}
        try:
            hf_config = AutoConfig.from_pretrained(model_id, trust_remote_code=cfg.trust_remote_code, **kw)
        except ValueError as e:
            if "trust_remote_code" in str(e):
                raise ModelError(
                    f"model: {model_id!r} needs code shipped with the checkpoint; set "
                    "`trust_remote_code: true` only if you trust its author (that code would run on this machine)"
                ) from None
            raise hub_error("model", model_id, e) from None
        except Exception as e:  # noqa: BLE001
            raise hub_error("model", model_id, e) from None
        return None, hf_config, model_id
    if isinstance(cfg.model, torch.nn.Module):
        obj = cfg.model
        model_id = getattr(obj, "name_or_path", "") or type(obj).__name__
        # what it is, not what it is called: a user's subclass of BertForSequenceClassification has the head too
        if not hasattr(obj, "config") or not any(head_suffix in c.__name__ for c in type(obj).__mro__):
            raise ModelError(
                f"model: {{{{...}}}} is a {type(obj).__name__}; {task_title} needs a *{head_suffix} model object, "
                "or a hub id / directory (the head is then added for you)"
            )
        return obj, obj.config, model_id
    raise ModelError(f"model: expected a hub id, a directory or a model object, got {type(cfg.model).__name__}")


def resolve_tokenizer(cfg, model_obj, model_id: str):
    from transformers import PreTrainedTokenizerBase

    if cfg.tokenizer is not None and isinstance(cfg.tokenizer, PreTrainedTokenizerBase):
        tokenizer = cfg.tokenizer
    elif cfg.tokenizer is not None:
        tokenizer = load_tokenizer(str(cfg.tokenizer), cfg.trust_remote_code)
    elif model_obj is not None:
        src = getattr(model_obj, "name_or_path", "")
        if not src or not Path(src).expanduser().exists():
            raise ModelError(
                "tokenizer: the model object carries no tokenizer; add `tokenizer: {{tok}}` "
                "(a tokenizer object) or `tokenizer: <hub id or directory>`"
            )
        tokenizer = load_tokenizer(src, cfg.trust_remote_code)
    else:
        tokenizer = load_tokenizer(model_id, cfg.trust_remote_code, what="model (its tokenizer)")
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            raise ModelError("tokenizer: it has no padding token and no end-of-sequence token to use as one")
    return tokenizer


def load_splits(cfg, train_source=None, columns: tuple[str | None, ...] = ()):
    """(train, eval or None): data.train (already loaded by auto-detection when given), data.eval or a held-out
    `eval_split` of train. `columns`: columns data.eval must have too."""
    train = train_source
    if train is None:
        train = D.load_source(cfg.data.train, role="train", trust_remote_code=cfg.trust_remote_code)
    if len(train) == 0:
        raise DataError("data.train is empty")
    eval_ = None
    if cfg.data.eval is not None:
        eval_ = D.load_source(cfg.data.eval, role="eval", trust_remote_code=cfg.trust_remote_code)
        missing = [c for c in columns if c and c not in eval_.column_names]
        if missing:
            raise DataError(
                f"data.eval lacks column(s) {missing} that data.train has "
                f"(data.eval columns: {', '.join(eval_.column_names)})"
            )
    return train, eval_


def holdout(cfg, train, eval_):
    """Hold out `data.eval_split` of train when there is no data.eval."""
    if eval_ is None and cfg.data.eval_split:
        if len(train) < 2:
            raise DataError("data.eval_split: data.train has fewer than 2 examples; nothing to hold out")
        train, eval_ = D.holdout_split(train, cfg.data.eval_split, cfg.seed)
    return train, eval_


def resolve_max_length(cfg, tokenizer, hf_config) -> int:
    limit = tokenizer.model_max_length if tokenizer.model_max_length and tokenizer.model_max_length < 1e6 else 512
    pos = getattr(hf_config, "max_position_embeddings", None) if hf_config is not None else None
    max_length = cfg.max_length or min(512, limit, pos or 512)
    if pos and max_length > pos:
        raise ConfigError(
            f"Invalid finetune config: max_length {max_length} is longer than the model's "
            f"{pos} positions; use at most {pos}"
        )
    return max_length


def from_pretrained(auto_cls, cfg, model_id: str, hf_config, *, meta: bool = False, **head_kwargs):
    """`auto_cls.from_pretrained(model_id, ...)` with a fresh head; `meta`: shapes only (dry run)."""
    import torch

    if meta:
        conf = hf_config.__class__.from_dict({**hf_config.to_dict(), **head_kwargs})
        with torch.device("meta"):
            try:
                return auto_cls.from_config(conf)
            except ValueError as e:
                raise _no_head(auto_cls, model_id, hf_config, e) from None
    kwargs = dict(head_kwargs)
    if cfg.gguf_file:
        kwargs["gguf_file"] = cfg.gguf_file
    try:
        return auto_cls.from_pretrained(
            model_id, trust_remote_code=cfg.trust_remote_code, ignore_mismatched_sizes=True, **kwargs
        )
    except ValueError as e:
        if "Unrecognized configuration class" in str(e):
            raise _no_head(auto_cls, model_id, hf_config, e) from None
        raise hub_error("model", model_id, e) from None
    except Exception as e:  # noqa: BLE001
        raise hub_error("model", model_id, e) from None


def _no_head(auto_cls, model_id, hf_config, e) -> ModelError:
    kind = auto_cls.__name__.removeprefix("AutoModelFor")
    return ModelError(
        f"model: {model_id!r} ({getattr(hf_config, 'model_type', '?')}) has no {kind} head in transformers; "
        "pick an encoder such as BERT, RoBERTa, DeBERTa or MiniLM for this task"
    )


def check_head(auto_cls, model_id: str, hf_config) -> None:
    """Raise now (calling thread) when transformers has no head of this kind for the model's architecture."""
    mapping = getattr(auto_cls, "_model_mapping", None)
    if mapping is None or hf_config is None:
        return
    try:
        mapping[type(hf_config)]
    except KeyError:
        raise _no_head(auto_cls, model_id, hf_config, None) from None


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


def finish_model(cfg, model, tokenizer):
    """What every text model gets after loading: a pad id, the dropout override."""
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if cfg.dropout is not None:
        set_dropout(model, cfg.dropout)
    return model


def batched_inference(model, batches, fn):
    """Run `fn(model, batch)` for each batch under inference mode in eval mode; the model's mode is restored."""
    import torch

    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.inference_mode():
            for b in batches:
                out.extend(fn(model, b))
    finally:
        model.train(was_training)
    return out


def model_device(model):
    return next(model.parameters()).device
