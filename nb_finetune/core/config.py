"""`FinetuneConfig`: the one schema for a run, and the parsing of cell text / YAML / dicts into it.

The schema is the single source of truth for defaults, help texts, aliases and which fields may change
while a run trains (``live``). Widget tooltips, ``%finetune --help``, completion, the JSON schema and the
README's config reference are all generated from it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import ConfigError

__all__ = [
    "FinetuneConfig",
    "DataConfig",
    "EarlyStopping",
    "LoraSettings",
    "Precision",
    "Scheduler",
    "parse_cell",
    "parse_interval",
    "load_config",
    "live_fields",
    "config_reference_markdown",
]


# --------------------------------------------------------------------------------------------- enums
class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Scheduler(str, Enum):
    linear = "linear"
    cosine = "cosine"
    constant = "constant"


class FrozenMode(str, Enum):
    eval = "eval"
    train = "train"


class TrainOn(str, Enum):
    completion = "completion"
    all = "all"


class Quantization(str, Enum):
    none = "none"
    q4 = "4bit"
    q8 = "8bit"


class CacheFrozen(str, Enum):
    auto = "auto"
    on = "on"
    off = "off"


class BadExample(str, Enum):
    skip = "skip"
    error = "error"


class LongAudio(str, Enum):
    crop = "crop"
    drop = "drop"


class OnNonFinite(str, Enum):
    stop = "stop"
    skip = "skip"


class Mode(str, Enum):
    auto = "auto"
    min = "min"
    max = "max"


# task names as the task modules register them (core/tasks/); a field's `tasks=` says which tasks read it
TC, REG, ML, NER, QA, CLM = (
    "text-classification",
    "regression",
    "multi-label-classification",
    "token-classification",
    "question-answering",
    "causal-lm",
)
SEQUENCE_TASKS = (TC, REG, ML)
IMG, AUD = "image-classification", "audio-classification"
MEDIA_TASKS = (IMG, AUD)


def _field(
    default: Any = None,
    help: str = "",
    *,
    aliases: tuple[str, ...] = (),
    live: str | None = None,
    tasks: tuple[str, ...] | None = None,
    **kw,
):
    extra = {"aliases": list(aliases)}
    if live:
        extra["live"] = live
    if tasks:
        extra["tasks"] = list(tasks)
    if "default_factory" in kw:
        return Field(description=help, json_schema_extra=extra, **kw)
    return Field(default, description=help, json_schema_extra=extra, **kw)


_INTERVAL_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|mins|minutes|h|hr|hours|steps?)?\s*$", re.I)


_EPOCHS_RE = re.compile(r"^(?:every\s+)?(\d+)\s*epochs?$")


def parse_interval(value: int | str | None) -> tuple[str, float] | None:
    """``500`` -> ("steps", 500); ``"30min"`` -> ("seconds", 1800); ``"epoch"`` -> ("epoch", 1);
    ``"2 epochs"`` -> ("epoch", 2); None -> None."""
    if value is None or value is False:
        return None
    if isinstance(value, bool):
        return ("epoch", 1)
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value} is not an interval: use a number of steps >= 1 (0 or 'never' turns it off)")
        return ("steps", value) if value > 0 else None
    s = str(value).strip().lower()
    if s in ("epoch", "epochs", "every epoch"):
        return ("epoch", 1)
    m = _EPOCHS_RE.match(s)
    if m:
        if int(m.group(1)) < 1:
            raise ValueError(f"{value!r} is not an interval: use a whole number of epochs >= 1 (or 'never')")
        return ("epoch", int(m.group(1)))
    if s in ("never", "no", "off", "none", "0"):
        return None
    m = _INTERVAL_RE.match(s)
    if not m:
        raise ValueError(
            f"{value!r} is not an interval: use a number of steps (500), minutes ('30min'), 'epoch' or '2 epochs'"
        )
    amount, unit = float(m.group(1)), (m.group(2) or "steps").lower()
    if unit.startswith("step"):
        if amount < 1 or amount != int(amount):
            raise ValueError(f"{value!r} is not an interval: use a whole number of steps >= 1 (or 'never')")
        return ("steps", int(amount))
    scale = {"s": 1, "sec": 1, "h": 3600, "hr": 3600, "hours": 3600}.get(unit, 60)
    return ("seconds", amount * scale)


def _check_interval(v):
    if v is None or isinstance(v, (int, str)):
        parse_interval(v)
        return v
    raise ValueError("use a number of steps (500), minutes ('30min'), or 'epoch'")


# --------------------------------------------------------------------------------------------- models
class _Strict(BaseModel):
    # allow_inf_nan=False: `epochs: .inf` / `lr: .nan` are errors naming the key, not an OverflowError deep inside
    model_config = ConfigDict(
        extra="forbid", arbitrary_types_allowed=True, validate_assignment=True, allow_inf_nan=False
    )


class DataConfig(_Strict):
    """Where the examples come from and which columns hold what."""

    train: Any = _field(
        None,
        "Training data: a hub dataset with an optional split slice (`imdb:train[:2000]`), a local "
        "csv/json/jsonl/parquet file (`reviews.csv`, `reviews.csv[:500]`), or `{{df}}` / `{{ds}}` "
        "(a pandas DataFrame or a datasets.Dataset in the notebook).",
    )
    eval: Any = _field(
        None,
        "Evaluation data, same forms as `train`. When absent, `eval_split` of the training data is held out.",
        aliases=("validation", "valid", "test"),
    )
    eval_split: float | None = _field(
        0.1,
        "Fraction of `train` held out for evaluation (seeded) when `eval` is not given; 0 disables evaluation.",
        ge=0.0,
        lt=1.0,
    )
    text: str | None = _field(
        None,
        "Column holding the input text (causal-lm: plain text for continued pre-training). Auto-detected when there "
        "is one obvious text column.",
        tasks=(*SEQUENCE_TASKS, CLM),
    )
    text_pair: str | None = _field(
        None,
        "Optional second text column: sentence-pair classification or regression (NLI, paraphrase, similarity).",
        tasks=SEQUENCE_TASKS,
    )
    label: str | None = _field(
        None,
        "Column holding the label (the tag list for token classification). Auto-detected from `label`, `labels`, "
        "`target`, `tags`, `ner_tags`, ... when absent.",
        aliases=("tags",),
        tasks=(*SEQUENCE_TASKS, NER, *MEDIA_TASKS),
    )
    tokens: str | None = _field(
        None, "Column holding the token (word) lists. Auto-detected from `tokens`, `words`.", tasks=(NER,)
    )
    question: str | None = _field(None, "Column holding the question. Default: `question`.", tasks=(QA,))
    context: str | None = _field(None, "Column holding the passage the answer is in. Default: `context`.", tasks=(QA,))
    answers: str | None = _field(
        None,
        "Column holding SQuAD-style answers `{text: [...], answer_start: [...]}` (empty lists: unanswerable). "
        "Default: `answers`.",
        tasks=(QA,),
    )
    # images and sound
    image: str | None = _field(
        None,
        "Column holding the images (an `Image` feature, file paths, PIL images or arrays). Auto-detected from an "
        "`Image` feature or `image`, `img`, `path`, `file`, ... when absent.",
        tasks=(IMG,),
    )
    audio: str | None = _field(
        None,
        "Column holding the audio (an `Audio` feature, file paths, or arrays with `sampling_rate`). Auto-detected "
        "from an `Audio` feature or `audio`, `path`, `file`, ... when absent.",
        tasks=(AUD,),
    )
    sampling_rate: int | None = _field(
        None,
        "Sampling rate in Hz of audio given as plain arrays (files and `Audio` features carry their own).",
        ge=1,
        tasks=(AUD,),
    )

    messages: str | None = _field(
        None,
        "Column holding chat records (a list of `{role, content}`), rendered with the tokenizer's chat template. "
        "Default: `messages` or `conversations`.",
        tasks=(CLM,),
    )
    prompt: str | None = _field(None, "Column holding the prompt of prompt / completion pairs.", tasks=(CLM,))
    completion: str | None = _field(
        None, "Column holding the completion (the tokens trained with `train_on: completion`).", tasks=(CLM,)
    )

    @field_validator("train", "eval")
    @classmethod
    def _source(cls, v):
        if isinstance(v, (int, float, bool)):
            raise ValueError("expected a dataset name, a file path, or {{variable}}")
        return v


class EarlyStopping(_Strict):
    """Stop when an eval metric has not improved for `patience` evaluations, then restore the best model."""

    metric: str = _field("eval_loss", "Metric to watch: eval_loss, eval_accuracy, eval_f1, ...")
    patience: int = _field(3, "Evaluations without improvement before stopping.", ge=1)
    mode: Mode = _field(Mode.auto, "min or max; auto = min for losses, max for everything else.")
    min_delta: float = _field(0.0, "Smallest change that counts as an improvement.", ge=0.0)


class LoraSettings(_Strict):
    """LoRA adapters through PEFT: only the adapters train; the base weights stay as loaded."""

    r: int = _field(16, "Rank of the adapter matrices.", aliases=("rank",), ge=1)
    alpha: float = _field(
        32,
        "Scaling numerator: the update is scaled by alpha / r (alpha / sqrt(r) with rslora).",
        aliases=("lora_alpha",),
        gt=0,
    )
    dropout: float = _field(0.05, "Dropout on the adapter input.", aliases=("lora_dropout",), ge=0.0, lt=1.0)
    target_modules: Any = _field(
        "all-linear",
        "Modules that get adapters: `all-linear` (every linear layer of the blocks) or a list of names "
        "(`[q_proj, v_proj]`).",
        aliases=("targets",),
    )
    use_dora: bool = _field(False, "Weight-decomposed LoRA (DoRA).", aliases=("dora",))
    rslora: bool = _field(False, "Rank-stabilised scaling alpha / sqrt(r).", aliases=("use_rslora",))

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, v):
        if isinstance(v, str) or (isinstance(v, list) and v and all(isinstance(x, str) for x in v)):
            return v
        raise ValueError("use `all-linear` or a list of module names such as [q_proj, v_proj]")


class FinetuneConfig(_Strict):
    """Everything that defines one fine-tuning run. Build it from a cell, a YAML file, a dict or kwargs.

    Example:
        >>> cfg = FinetuneConfig.from_dict({"model": "path/to/model", "data": {"train": "train.csv"}, "lr": "3e-5"})
        >>> cfg.lr
        3e-05
        >>> FinetuneConfig.from_dict(cfg.to_dict()) == cfg
        True
    """

    name: str | None = _field(None, "Run name; the run directory is `<output_dir>/<name>`. Set by `%%finetune NAME`.")
    task: str = _field(
        "auto",
        "What to train: text-classification, token-classification (`ner`), question-answering (`qa`), regression, "
        "multi-label-classification (`multi-label`), causal-lm (`sft`, `instruction`), image-classification "
        "(`image`), audio-classification (`audio`). `auto` picks from the data: string / int labels -> "
        "text-classification, float labels -> regression, label lists -> multi-label, a token list with a tag list "
        "-> token-classification, SQuAD-style `answers` -> question-answering, `messages`, `prompt` + `completion` "
        "or a lone `text` column -> causal-lm, an image (audio) column or folder -> image (audio) classification.",
    )
    model: Any = _field(
        None,
        "Pretrained model: a hub id (`bert-base-uncased`), a local directory, or `{{my_model}}` "
        "(a transformers model object in the notebook; for image classification any `torch.nn.Module`).",
    )
    tokenizer: Any = _field(
        None, "Tokenizer: hub id, directory or `{{tok}}`. Defaults to the model's own.", aliases=("processor",)
    )
    gguf_file: str | None = _field(None, "GGUF file inside `model` to load (dequantised to the training dtype).")
    trust_remote_code: bool = _field(
        False, "Run model code shipped with the checkpoint. Off unless you trust its author."
    )
    data: DataConfig = _field(default_factory=DataConfig, help="Training / evaluation data and its columns.")
    labels: list[str] | None = _field(
        None,
        "Label (or tag) names in class-index order. Inferred from the data when absent.",
        aliases=("label_names",),
        tasks=(TC, ML, NER, *MEDIA_TASKS),
    )
    label_all_tokens: bool = _field(
        False,
        "Label every sub-token of a word (default: only the first; the rest are ignored by the loss and metrics).",
        tasks=(NER,),
    )
    doc_stride: int = _field(
        128,
        "Overlap in tokens between the windows a long context is split into.",
        aliases=("stride",),
        ge=0,
        tasks=(QA,),
    )
    max_answer_length: int = _field(30, "Longest answer in tokens that post-processing considers.", ge=1, tasks=(QA,))
    n_best: int = _field(
        20,
        "Start / end candidates per window that post-processing scores.",
        aliases=("n_best_size",),
        ge=1,
        tasks=(QA,),
    )
    threshold: float = _field(
        0.5, "Score above which a label is predicted (one sigmoid per label).", gt=0, lt=1, tasks=(ML,)
    )
    label_sep: str | None = _field(
        None,
        "Delimiter when the label column holds strings such as `sports,politics` instead of lists.",
        tasks=(ML,),
    )
    # ---------------------------------------------------------------- causal-lm (instruction tuning)
    train_on: TrainOn = _field(
        TrainOn.completion,
        "Which tokens the loss counts: `completion` (assistant turns of chat records, the completion of prompt / "
        "completion pairs; plain text trains on everything) or `all`.",
        tasks=(CLM,),
    )
    chat_template: str | None = _field(
        None,
        "Jinja chat template for chat records when the tokenizer has none (or to replace its own).",
        tasks=(CLM,),
    )
    lora: LoraSettings | None = _field(
        None,
        "Train LoRA adapters instead of the whole model: `{r: 16, alpha: 32, dropout: 0.05, target_modules: "
        "all-linear}` (also `use_dora`, `rslora`); `lora: {}` takes these defaults.",
        tasks=(CLM,),
    )
    quantization: Quantization = _field(
        Quantization.none,
        "Load the base weights in 4bit (QLoRA, NF4) or 8bit through bitsandbytes; needs CUDA and `lora:`.",
        aliases=("quantize", "load_in"),
        tasks=(CLM,),
    )
    packing: bool = _field(
        False,
        "Concatenate examples into rows of `max_length`; position ids restart and attention stays within each "
        "example (exact: no cross-example attention).",
        tasks=(CLM,),
    )
    gradient_checkpointing: bool = _field(
        False, "Recompute block activations in the backward pass: less memory, ~30% more compute.", tasks=(CLM,)
    )
    eval_prompts: list[Any] | None = _field(
        None,
        "Prompts (strings or message lists) generated greedily at every evaluation; shown in the panel and "
        "recorded in metrics.jsonl.",
        tasks=(CLM,),
    )
    max_new_tokens: int = _field(
        48,
        "Most tokens generated for each `eval_prompts` entry.",
        aliases=("gen_max_new_tokens",),
        ge=1,
        tasks=(CLM,),
    )
    # images and sound (image-classification, audio-classification)
    image_size: int | None = _field(
        None,
        "Side in pixels images are resized to. Default: the model's (its config / image processor), 224 for a "
        "plain `nn.Module`.",
        aliases=("img_size", "resolution"),
        ge=8,
        tasks=(IMG,),
    )
    normalize: Any = _field(
        None,
        "Pixel normalisation: `imagenet`, `none` or `[mean, std]` (one value or one per channel). Default: the "
        "model's image processor, `imagenet` for a plain `nn.Module`.",
        tasks=(IMG,),
    )
    channels: int | None = _field(
        None,
        "Image channels the model reads: 1 (grayscale), 3 (RGB) or N (multi-band). A pretrained first convolution "
        "/ patch embedding of another width is adapted (weights averaged or repeated). Default: the model's.",
        ge=1,
        tasks=(IMG,),
    )
    augment: Any = _field(
        None,
        "Training-time augmentation, in order: `[random_resized_crop, hflip, vflip, rotate, color_jitter, "
        "random_erasing]`, each optionally with parameters (`{rotate: 15}`, `{random_resized_crop: {scale: [0.6, "
        "1]}}`). Evaluation never augments.",
        aliases=("augmentation", "augmentations"),
        tasks=(IMG,),
    )
    head: str | None = _field(
        None,
        "Attribute path of a plain `nn.Module`'s classifier to replace for the labels (`_fc`, `fc`, "
        "`classifier.1`). Default: its last `nn.Linear`.",
        aliases=("classifier",),
        tasks=(IMG,),
    )
    on_bad_example: BadExample = _field(
        BadExample.skip,
        "Unreadable or truncated image / audio files: skip them (counted in the progress line and run.log) or stop "
        "with an error naming the file.",
        aliases=("on_bad_file",),
        tasks=MEDIA_TASKS,
    )
    max_duration: float | None = _field(
        None, "Longest audio clip in seconds; longer clips are cropped or dropped (`long_audio`).", gt=0, tasks=(AUD,)
    )
    long_audio: LongAudio = _field(
        LongAudio.crop, "What `max_duration` does to a longer clip: crop it or drop it (counted).", tasks=(AUD,)
    )
    max_length: int | None = _field(
        None,
        "Longest input in tokens; longer texts are truncated. Default: the tokenizer's limit, at most 512.",
        aliases=("max_len", "max_seq_length", "seq_len"),
        ge=8,
    )
    epochs: float = _field(
        3,
        "Passes over the training data.",
        aliases=("num_epochs", "num_train_epochs"),
        gt=0,
        live="Extending re-plans the remaining schedule from the current step; cannot end before the current step.",
    )
    max_steps: int | None = _field(
        None,
        "Stop after this many optimizer steps (overrides `epochs`).",
        ge=0,
        live="Re-plans the remaining schedule; cannot be set below the current step.",
    )
    batch_size: int = _field(16, "Examples per micro-batch.", aliases=("bs", "per_device_train_batch_size"), ge=1)
    eval_batch_size: int | None = _field(None, "Examples per evaluation batch. Default: 2 x batch_size.", ge=1)
    grad_accum: int = _field(
        1,
        "Micro-batches per optimizer step (effective batch = batch_size x grad_accum).",
        aliases=("gradient_accumulation_steps", "accumulate"),
        ge=1,
    )
    lr: float = _field(
        2e-5,
        "Peak learning rate.",
        aliases=("learning_rate",),
        gt=0,
        live="The new value becomes the base of the running schedule, whose shape (warmup, decay) goes on.",
    )
    weight_decay: float = _field(
        0.01,
        "AdamW weight decay (not applied to biases and norms).",
        aliases=("wd",),
        ge=0,
        live="Applies from the next optimizer step.",
    )
    warmup: float = _field(
        0.06,
        "Warm-up: optimizer steps when >= 1, a fraction of all steps when < 1.",
        aliases=("warmup_steps", "warmup_ratio"),
        ge=0,
    )
    scheduler: Scheduler = _field(Scheduler.linear, "Learning-rate decay after warm-up.", aliases=("lr_scheduler",))
    layer_lr_decay: float | None = _field(
        None,
        "Layer-wise learning-rate decay (discriminative lr): the head trains at `lr`, the top block at lr x d, the "
        "next at lr x d^2, ..., the embeddings at lr x d^(n+1). Typical: 0.8-0.95.",
        aliases=("layerwise_lr_decay", "llrd"),
        gt=0,
        le=1,
        live="Applies from the next optimizer step; the running schedule's shape goes on.",
    )
    group_lr: dict[str, float] | None = _field(
        None,
        "Learning-rate multipliers by layer group, on top of `layer_lr_decay`: "
        "`{embeddings: 0.1, blocks.0-5: 0.5, head: 2}` (group names as in `freeze`).",
        aliases=("group_lrs",),
        live="Applies from the next optimizer step.",
    )
    max_grad_norm: float | None = _field(
        1.0,
        "Clip gradients to this global norm; null disables clipping.",
        aliases=("grad_clip", "clip_grad_norm"),
        live="Applies from the next optimizer step.",
    )
    on_nonfinite: OnNonFinite = _field(
        OnNonFinite.stop,
        "When a step's loss is NaN or Inf: stop (no update is applied from that step on; the run stops at the next "
        "log point naming the step and batch, and the last good checkpoint stays the one to resume from) or skip "
        "(that optimizer step is skipped and counted: `skipped_steps` in status.json and the progress line).",
        aliases=("on_nan",),
    )
    seed: int = _field(42, "Seed for initialisation, data order, dropout and the held-out split.")
    precision: Precision = _field(
        Precision.auto,
        "auto = bf16 on Ampere+ GPUs, fp16 on older GPUs (T4), fp32 on CPU.",
        aliases=("mixed_precision", "dtype"),
    )
    device: str = _field(
        "auto",
        "Where to train: auto (the GPU when there is one, else the CPU), cpu, cuda, cuda:1 (a given GPU), mps "
        "(Apple silicon). A device the machine does not have is an error before the run starts.",
    )
    freeze: Any = _field(
        None,
        "Layers not to train: `bottom 8` / `8` (embeddings + first 8 blocks), `0.66` (that fraction of blocks), "
        "`all_but_head`, `[embeddings, blocks.0-7]`, or none.",
        live="The trainable set changes at the next optimizer step; parameters that stay trainable keep "
        "their optimizer state.",
    )
    unfreeze_every: int | str | None = _field(
        None,
        "Gradual unfreezing: every N optimizer steps, every 'epoch' or every 'N epochs', the top-most frozen group "
        "becomes trainable (blocks from the top down, embeddings last). Starts from what `freeze` freezes (e.g. "
        "`all_but_head`); with nothing frozen the run warns at start.",
        aliases=("gradual_unfreeze",),
        live="The interval counts from the last scheduled unfreeze (or the start, or the change when the schedule "
        "was off); null stops unfreezing.",
    )
    unfreeze_until: str | int | list[str] | None = _field(
        None,
        "Gradual unfreezing stops here: groups this freeze spec names stay frozen (`bottom 2` keeps the embeddings "
        "and blocks 0-1 frozen). Default: until everything trains.",
    )
    frozen_mode: FrozenMode = _field(
        FrozenMode.eval, "How frozen blocks run: eval (no dropout, fixed norm statistics) or train."
    )
    cache_frozen: CacheFrozen = _field(
        CacheFrozen.auto,
        "Frozen-prefix activation cache: the output of the frozen embeddings + bottom blocks is computed once per "
        "example and reused by later epochs, which skip the prefix. auto = on when it is exact (frozen_mode: eval, "
        "checked on the model at start-up) and there is more than one epoch.",
    )
    cache_max_gb: float = _field(
        4.0, "Memory the frozen-prefix cache may hold; beyond it, rows spill to disk (cache_spill_gb).", gt=0
    )
    cache_spill_gb: float = _field(
        20.0, "Disk under the run directory the cache may use once cache_max_gb is full (0: no spilling).", ge=0
    )
    compile: bool = _field(
        False,
        "torch.compile the model for training. The first steps are slow while it compiles (timings: first_step_s); "
        "it turns the frozen-prefix cache off.",
    )
    dropout: float | None = _field(
        None, "Override the model's dropout probabilities (hidden and attention).", ge=0.0, lt=1.0
    )
    group_by_length: bool = _field(True, "Batch examples of similar length together (less padding).")
    eval_every: int | str | None = _field(
        "epoch",
        "Evaluate every N optimizer steps, every 'epoch' or every 'N epochs'.",
        aliases=("eval_steps",),
        live="Applies from the next optimizer step.",
    )
    eval_at_start: bool = _field(False, "Evaluate once before the first step (the fresh model's score).")
    log_every: int = _field(
        10,
        "Read losses from the device and log every N optimizer steps.",
        aliases=("logging_steps",),
        ge=1,
        live="Applies from the next optimizer step.",
    )
    save_every: int | str | None = _field(
        "epoch",
        "Checkpoint every N optimizer steps, every 'N min', every 'epoch' or 'N epochs'; null for end-of-run only.",
        aliases=("save_steps",),
        live="Applies from the next optimizer step.",
    )
    save_total_limit: int | None = _field(
        2, "Keep at most this many step checkpoints (the best one is always kept).", ge=1
    )
    metric_for_best: str = _field(
        "eval_loss", "Metric that decides the best checkpoint (eval_loss, eval_accuracy, eval_f1, ...)."
    )
    early_stopping: EarlyStopping | None = _field(
        None, "Stop early when `metric` stops improving, e.g. `{metric: eval_f1, patience: 2}`."
    )
    output_dir: str = _field("runs", "Parent directory of run directories.", aliases=("out", "output"))
    resume_from: str | None = _field(
        None, "Continue from a checkpoint: `last`, `best`, or a checkpoint directory.", aliases=("resume",)
    )
    num_workers: int = _field(0, "DataLoader worker processes.", ge=0)
    keep_cpu_memory: bool = _field(
        True,
        "On a CPU run under Linux (glibc), freed memory stays in the process while it trains, so each step reuses "
        "its buffers instead of faulting in fresh pages (measured: 10-20% faster steps, and steadier); glibc's "
        "defaults come back, and the memory goes back to the OS, when the run ends. false: glibc's defaults "
        "throughout. Not applied on GPUs, under another allocator or with MALLOC_* tuning set.",
    )

    # ---------------------------------------------------------------- experiments (core/track, lr_find, batch_size, sweep)
    track: list[str] | None = _field(
        None,
        "Experiment trackers that receive the run: `mlflow`, `wandb`, `comet`, `tensorboard`, or a list of them. Each "
        "is an optional extra (`pip install nb_finetune[mlflow]`); a failing tracker never stops training.",
        aliases=("report_to", "trackers"),
    )
    lr_find: bool = _field(
        False,
        "Run an LR range test on the model before training and train with its suggestion (`lr: find` is shorthand); "
        "the chosen lr is written into the run's config.yaml.",
    )
    batch_size_auto: bool = _field(
        False,
        "Pick the largest micro-batch that fits (`batch_size: auto` is shorthand): on CUDA by trying, on CPU from the "
        "memory estimate against `max_memory_gb`; `grad_accum` keeps batch_size x grad_accum = `effective_batch`.",
    )
    effective_batch: int | None = _field(
        None,
        "Target examples per optimizer step for `batch_size: auto` (default: batch_size x grad_accum as given).",
        ge=1,
    )
    max_memory_gb: float | None = _field(
        None, "Memory `batch_size: auto` may plan for on CPU. Default: 80% of the free RAM.", gt=0
    )
    sweep: dict[str, Any] | None = _field(
        None,
        "Hyperparameter search with Optuna: search spaces such as `lr: loguniform(1e-5, 1e-3)`, "
        "`freeze: choice(0, 2, 4)`, `batch_size: choice(16, 32)`, `warmup: uniform(0, 0.2)`, `epochs: int(1, 4)`, "
        "plus `n_trials`, `metric`, `direction` (minimize / maximize), `sampler` (tpe / random / grid), "
        "`pruner` (median / hyperband / none). Run with `%%finetune NAME --sweep`.",
    )

    @field_validator("track", mode="before")
    @classmethod
    def _track(cls, v):
        from .track import check_tracker_names

        return check_tracker_names(v)

    @field_validator("sweep")
    @classmethod
    def _sweep(cls, v):
        if v is not None:
            from .sweep_space import parse_sweep

            parse_sweep(v)  # ValueError names the key and the accepted forms
        return v

    @model_validator(mode="before")
    @classmethod
    def _auto_values(cls, data):
        # `lr: find` and `batch_size: auto` keep lr / batch_size numbers: the flags say they get resolved at start
        if isinstance(data, dict):
            if isinstance(data.get("lr"), str) and data["lr"].strip().lower() == "find":
                data = {k: v for k, v in data.items() if k != "lr"} | {"lr_find": True}
            if isinstance(data.get("batch_size"), str) and data["batch_size"].strip().lower() == "auto":
                data = {k: v for k, v in data.items() if k != "batch_size"} | {"batch_size_auto": True}
        return data

    # ---------------------------------------------------------------- validators
    @field_validator("task", mode="before")
    @classmethod
    def _task(cls, v):
        from .tasks.base import canonical_task  # the registry: task modules register themselves

        if not isinstance(v, str):
            raise ValueError("expected a task name")
        try:
            return canonical_task(v)
        except ConfigError as e:
            raise ValueError(str(e).split("task: ", 1)[-1]) from None

    @field_validator("cache_frozen", mode="before")
    @classmethod
    def _bool_cache(cls, v):
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v

    @field_validator("eval_every", "save_every", "unfreeze_every", mode="before")
    @classmethod
    def _bool_interval(cls, v):
        # before pydantic turns True into 1 (every step): true means every epoch, as in parse_interval
        return ("epoch" if v else None) if isinstance(v, bool) else v

    @field_validator("eval_every", "save_every")
    @classmethod
    def _interval(cls, v):
        return _check_interval(v)

    @field_validator("unfreeze_every")
    @classmethod
    def _unfreeze_interval(cls, v):
        _check_interval(v)
        iv = parse_interval(v)
        if iv is not None and iv[0] == "seconds":
            raise ValueError("gradual unfreezing counts optimizer steps (500) or epochs ('epoch', '2 epochs')")
        return v

    @field_validator("freeze", "unfreeze_until")
    @classmethod
    def _freeze(cls, v):
        from .freezing import parse_freeze_spec  # local: freezing imports torch lazily too

        parse_freeze_spec(v)
        return v

    @field_validator("group_lr")
    @classmethod
    def _group_lr(cls, v):
        from .freezing import parse_group_lr

        parse_group_lr(v)
        return v

    @field_validator("model", "tokenizer")
    @classmethod
    def _model_ref(cls, v):
        if isinstance(v, (int, float, bool)):
            raise ValueError(
                f"expected a hub id, a local directory, or {{{{variable}}}}, got {type(v).__name__} {v!r}"
            )
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v):
        from .train.device import parse_device  # no torch import: only the spelling is checked here

        return parse_device(v)

    @field_validator("resume_from", mode="before")
    @classmethod
    def _resume(cls, v):
        if v is True:
            return "last"
        if v is False:
            return None
        return v

    @model_validator(mode="after")
    def _cross(self):
        if self.early_stopping is not None and self.eval_every is None:
            raise ValueError("early_stopping needs evaluation: set eval_every (steps or 'epoch')")
        if self.unfreeze_until is not None and self.unfreeze_every is None:
            raise ValueError("unfreeze_until needs unfreeze_every (how often to unfreeze the next group)")
        return self

    # ---------------------------------------------------------------- constructors
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, lines: Mapping[tuple, int] | None = None) -> FinetuneConfig:
        """Validate a dict (canonical names or aliases). `lines` maps key paths to cell lines for errors."""
        placeholders = getattr(lines, "placeholders", {})
        lines = dict(lines or {})
        normalized, problems = _normalize(cls, data, (), lines)
        if problems:
            raise ConfigError(_format_problems(problems))
        try:
            return cls.model_validate(normalized)
        except ValidationError as e:
            raise ConfigError(_format_validation(e, lines, placeholders)) from None

    @classmethod
    def from_yaml(cls, source: str | Path, namespace: Mapping[str, Any] | None = None) -> FinetuneConfig:
        """From a YAML file path or YAML text (the same syntax as a `%%finetune` cell body)."""
        text = source
        if isinstance(source, Path) or (
            isinstance(source, str) and "\n" not in source and source.endswith((".yaml", ".yml"))
        ):
            path = Path(source)
            if not path.is_file():
                raise ConfigError(f"config file {str(path)!r} does not exist")
            text = path.read_text(encoding="utf-8")
        data, lines = parse_cell(str(text), namespace, first_line=1)
        return cls.from_dict(data, lines=lines)

    @classmethod
    def from_cell(
        cls, body: str, namespace: Mapping[str, Any] | None = None, *, first_line: int = 2
    ) -> FinetuneConfig:
        """From the body of a `%%finetune` cell; line numbers in errors count the magic line as line 1."""
        data, lines = parse_cell(body, namespace, first_line=first_line)
        return cls.from_dict(data, lines=lines)

    # ---------------------------------------------------------------- export
    def to_dict(self) -> dict[str, Any]:
        """Plain dict of canonical names; objects from `{{vars}}` are kept as they are."""
        out = {}
        for name in type(self).model_fields:
            v = getattr(self, name)
            if isinstance(v, BaseModel):
                v = {k: (x.value if isinstance(x, Enum) else x) for k, x in v.__dict__.items()}
            elif isinstance(v, Enum):
                v = v.value
            out[name] = v
        return out

    def to_yaml(self) -> str:
        """YAML text of the resolved config; objects from `{{vars}}` appear as `<object: TypeName>`."""

        def plain(v):
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [plain(x) for x in v]
            if v is None or isinstance(v, (str, int, float, bool)):
                return v
            return f"<object: {type(v).__name__}>"

        return yaml.safe_dump(plain(self.to_dict()), sort_keys=False, allow_unicode=True)

    def replace(self, **changes) -> FinetuneConfig:
        """A copy with some fields changed (names or aliases), validated."""
        d = self.to_dict()
        for k, v in changes.items():
            if k == "data" and isinstance(v, Mapping):
                d["data"] = {**d["data"], **v}
            else:
                d[canonical_name(k)] = v
        return type(self).from_dict(d)

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """JSON schema (draft 2020-12) with `aliases` and `live` on each property, for editors and the lab extension."""
        return cls.model_json_schema()

    @property
    def uses_objects(self) -> bool:
        return not isinstance(self.model, (str, type(None))) or not isinstance(self.data.train, (str, type(None)))


# --------------------------------------------------------------------------------------------- aliases
def alias_table(model: type[BaseModel]) -> dict[str, str]:
    table = {}
    for name, f in model.model_fields.items():
        table[name] = name
        for a in (f.json_schema_extra or {}).get("aliases", []):
            table[a] = name
    return table


def canonical_name(key: str, model: type[BaseModel] | None = None) -> str:
    """`learning_rate` -> `lr`. Raises ConfigError with a suggestion for an unknown key."""
    table = alias_table(model or FinetuneConfig)
    if key in table:
        return table[key]
    raise ConfigError(_unknown_key_message(key, table))


def _unknown_key_message(key: str, table: Mapping[str, str], where: str = "") -> str:
    close = difflib.get_close_matches(key, list(table), n=1, cutoff=0.6)
    hint = f" Did you mean '{table[close[0]]}'?" if close else ""
    if close and close[0] != table[close[0]]:
        hint = f" Did you mean '{close[0]}' (= '{table[close[0]]}')?"
    return f"{where}unknown key '{key}'.{hint}"


_NESTED = {"data": DataConfig, "early_stopping": EarlyStopping, "lora": LoraSettings}


def _normalize(model, data, path, lines):
    """Map aliases to canonical names; collect unknown keys and alias conflicts with their lines."""
    problems: list[tuple[int | None, str]] = []
    if not isinstance(data, Mapping):
        return data, [(lines.get(path), f"{_dotted(path) or 'config'}: expected a mapping of key: value lines")]
    table = alias_table(model)
    out: dict[str, Any] = {}
    given: dict[str, str] = {}
    for key, value in data.items():
        key_s = str(key)
        line = lines.get(path + (key_s,))
        if key_s not in table:
            problems.append((line, _unknown_key_message(key_s, table, _where(line, path + (key_s,)))))
            continue
        canon = table[key_s]
        if canon in given:
            other = given[canon]
            other_line = lines.get(path + (other,))
            at = f" (line {other_line})" if other_line else ""
            problems.append(
                (line, f"{_where(line, path + (key_s,))}'{key_s}' and '{other}'{at} both set '{canon}': keep one.")
            )
            continue
        given[canon] = key_s
        # errors report canonical keys: give them the alias's line, unless the canonical key has its own line
        if canon != key_s and path + (key_s,) in lines and path + (canon,) not in lines:
            lines[path + (canon,)] = lines[path + (key_s,)]
        sub = _NESTED.get(canon) if model is FinetuneConfig else None
        if sub is not None and isinstance(value, Mapping):
            value, sub_problems = _normalize(sub, value, path + (canon,), lines)
            problems.extend(sub_problems)
        elif canon == "data" and value is not None and not isinstance(value, Mapping):
            value = {"train": value}  # `data: reviews.csv` / `data: {{df}}` is shorthand for data.train
        out[canon] = value
    return out, problems


def _dotted(path) -> str:
    return ".".join(str(p) for p in path)


def _where(line: int | None, path) -> str:
    key = _dotted(path)
    return f"line {line} ({key}): " if line else (f"{key}: " if key else "")


def _format_problems(problems) -> str:
    problems = sorted(problems, key=lambda p: (p[0] is None, p[0] or 0))
    msgs = [m for _, m in problems]
    head = "Invalid finetune config:" if len(msgs) > 1 else "Invalid finetune config: "
    return head + ("\n  " + "\n  ".join(msgs) if len(msgs) > 1 else msgs[0])


_TYPE_WORDS = {
    "float_parsing": "a number",
    "float_type": "a number",
    "int_parsing": "a whole number",
    "int_type": "a whole number",
    "int_from_float": "a whole number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "finite_number": "a finite number (not .inf or .nan)",
}


def _format_validation(err: ValidationError, lines: Mapping[tuple, int], placeholders=None) -> str:
    problems = []
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"] if not isinstance(p, int))
        # pydantic appends union member names to loc ("int", "str", "function-after[...]"): drop them
        loc = tuple(p for p in loc if p in _all_field_names())
        line = None
        for n in range(len(loc), 0, -1):
            line = lines.get(loc[:n])
            if line:
                break
        got = _short(e.get("input"))
        kind = e["type"]
        if kind in _TYPE_WORDS:
            msg = f"expected {_TYPE_WORDS[kind]}, got {got!r}"
        elif kind == "enum":
            choices = e.get("ctx", {}).get("expected", "")
            msg = f"{got!r} is not one of {choices}"
        elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            msg = f"{got!r}: {e['msg'].lower()}"
        elif kind == "missing":
            msg = "is required"
        else:
            msg = str(e["msg"]).removeprefix("Value error, ")
        if line in (placeholders or {}):  # name the variable the value came from, and what it is
            msg += "".join(f" ('{{{{{x}}}}}' is of type {t})" for x, t in placeholders[line])
        problems.append((line, f"{_where(line, loc)}{msg}" if loc else msg))
    # one line per location is enough (unions report each member)
    seen, unique = set(), []
    for p in problems:
        key = p[1].split(":")[0]
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return _format_problems(unique)


class _Shown:
    def __init__(self, text):
        self.text = text

    def __repr__(self):
        return self.text


def _short(value):
    """Values as an error message shows them: objects from {{vars}} by type, long strings cut."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return value if len(value) <= 80 else value[:77] + "..."
    if isinstance(value, (list, tuple, dict)) and len(repr(value)) <= 80:
        return value
    return _Shown(f"<{type(value).__name__}>")


def _all_field_names() -> set[str]:
    names = set(FinetuneConfig.model_fields)
    for m in _NESTED.values():
        names |= set(m.model_fields)
    return names


# --------------------------------------------------------------------------------------------- YAML
class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 scalars: `2e-5` is a float; only true/false are booleans (`off` stays a string)."""


_Loader.yaml_implicit_resolvers = {}
for _tag, _regexp, _first in [
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    (
        "tag:yaml.org,2002:float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+0123456789.",
    ),
]:
    _Loader.add_implicit_resolver(_tag, re.compile(_regexp), list(_first))


def _construct_int(loader, node):
    v = loader.construct_scalar(node)
    return int(v, 0) if v.lstrip("+-").startswith(("0x", "0o")) else int(v)


def _construct_float(loader, node):
    return float(loader.construct_scalar(node).replace(".inf", "inf").replace(".Inf", "inf").replace(".nan", "nan"))


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)

_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*$")
_TOKEN = "__nbft_var_{}__"


def parse_cell(
    text: str, namespace: Mapping[str, Any] | None = None, *, first_line: int = 2
) -> tuple[dict[str, Any], dict[tuple, int]]:
    """Parse `%%finetune` cell text into a plain dict and a map from key paths to line numbers.

    `{{name}}` (or `{{name.attr}}`) is looked up in `namespace` by name only: nothing is evaluated. A value that
    is exactly one placeholder becomes that object; a placeholder inside a longer string is replaced by `str(obj)`.

    Example:
        >>> parse_cell("lr: 2e-5\\ncache_frozen: off\\nmodel: {{m}}", {"m": "my-model"})[0]
        {'lr': 2e-05, 'cache_frozen': 'off', 'model': 'my-model'}
    """
    namespace = namespace or {}
    lines = _Lines()
    objects: list[Any] = []
    errors: list[tuple[int, str]] = []
    out_lines = []
    for i, line in enumerate(text.splitlines()):
        lineno = i + first_line

        def sub(m, lineno=lineno, whole=line):
            expr = m.group(1)
            if not _NAME.match(expr):
                errors.append(
                    (
                        lineno,
                        f"line {lineno}: '{{{{{expr}}}}}' is not a variable name; placeholders name a "
                        "notebook variable (optionally .attribute) and are never evaluated",
                    )
                )
                return "null"
            head, *attrs = expr.split(".")
            dunder = next((a for a in (head, *attrs) if a.startswith("__")), None)
            if dunder is not None:
                errors.append(
                    (
                        lineno,
                        f"line {lineno}: '{{{{{expr}}}}}': '{dunder}' is refused; placeholders look up a notebook "
                        "variable and its plain attributes only, never dunder (__...__) names",
                    )
                )
                return "null"
            if head not in namespace:
                close = difflib.get_close_matches(head, [k for k in namespace if not k.startswith("_")], n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                errors.append(
                    (lineno, f"line {lineno}: '{{{{{expr}}}}}': no variable '{head}' in the notebook.{hint}")
                )
                return "null"
            obj = namespace[head]
            for a in attrs:
                why = _plain_attribute(obj, a)
                if why:
                    errors.append((lineno, f"line {lineno}: '{{{{{expr}}}}}': {why}"))
                    return "null"
                obj = getattr(obj, a)
            objects.append(obj)
            lines.placeholders.setdefault(lineno, []).append((expr, type(obj).__name__))
            return _TOKEN.format(len(objects) - 1)

        out_lines.append(_PLACEHOLDER.sub(sub, line))
    if errors:
        raise ConfigError(_format_problems(errors))
    yaml_text = "\n".join(out_lines)
    try:
        loader = _Loader(yaml_text)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + first_line}: " if mark else ""
        raise ConfigError(
            f"Invalid finetune config: {where}{e.problem or e}. The cell body is YAML: `key: value` lines."
        ) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"Invalid finetune config: {e}") from None
    if node is None:
        return {}, lines
    problems: list[tuple[int, str]] = []

    at = [first_line]  # the line being built, for errors of a scalar's own constructor

    def build(n, path):
        at[0] = n.start_mark.line + first_line
        if not n.tag.startswith("tag:yaml.org,2002:") or n.tag.split(":")[-1] not in _PLAIN_TAGS:
            ln = n.start_mark.line + first_line
            problems.append(
                (
                    ln,
                    f"line {ln}: the YAML tag '{n.tag.replace('tag:yaml.org,2002:', '!!')}' is not allowed: the cell "
                    "is plain YAML read by a safe loader (no tags, nothing is constructed or run)",
                )
            )
            return None
        if isinstance(n, yaml.MappingNode):
            d = {}
            for k_node, v_node in n.value:
                ln = k_node.start_mark.line + first_line
                if not isinstance(k_node, yaml.ScalarNode):
                    problems.append((ln, f"line {ln}: a key must be a plain name, not a {k_node.id}"))
                    continue
                k = build(k_node, path)
                if k in d:
                    problems.append(
                        (
                            ln,
                            f"line {ln} ({_dotted(path + (str(k),))}): key '{k}' given twice "
                            f"(first on line {lines[path + (str(k),)]})",
                        )
                    )
                    continue
                lines[path + (str(k),)] = ln
                d[k] = build(v_node, path + (str(k),))
            return d
        if isinstance(n, yaml.SequenceNode):
            return [build(x, path) for x in n.value]
        return _restore(loader.construct_object(n, deep=True), objects)

    try:
        data = build(node, ())
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as e:  # `!!float abc`: its tag cannot build it
        why = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"Invalid finetune config: line {at[0]}: {why}") from None
    if problems:
        raise ConfigError(_format_problems(problems))
    if not isinstance(data, dict):
        raise ConfigError(
            f"Invalid finetune config: line {first_line}: expected `key: value` lines, got {type(data).__name__} {data!r}"
        )
    return data, lines


class _Lines(dict):
    """key path -> cell line; `placeholders`: cell line -> [(placeholder text, type name of what it resolved to)]."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.placeholders: dict[int, list[tuple[str, str]]] = {}


def _plain_attribute(obj, name: str) -> str | None:
    """Why `{{obj.name}}` is refused, or None: only attributes that exist as data, never a property that runs code."""
    import inspect

    try:
        static = inspect.getattr_static(obj, name)
    except AttributeError:
        static = None
    if isinstance(static, property):
        return f"'{name}' is a property (computed by code); assign it to a variable and name that"
    if static is None and not hasattr(obj, name):
        return f"'{type(obj).__name__}' object has no attribute '{name}'"
    return None


_PLAIN_TAGS = {"str", "int", "float", "bool", "null", "map", "seq"}


def _restore(value, objects):
    if isinstance(value, str) and "__nbft_var_" in value:
        full = re.fullmatch(r"__nbft_var_(\d+)__", value)
        if full:
            return objects[int(full.group(1))]
        return re.sub(r"__nbft_var_(\d+)__", lambda m: str(objects[int(m.group(1))]), value)
    return value


# --------------------------------------------------------------------------------------------- entry
def load_config(config: FinetuneConfig | Mapping | str | Path | None = None, /, **overrides) -> FinetuneConfig:
    """Accept whatever a user hands `finetune()`: a config, a dict, YAML text or a YAML path; apply overrides."""
    if config is None:
        cfg_dict: dict[str, Any] = {}
        lines: dict = {}
    elif isinstance(config, FinetuneConfig):
        return config.replace(**overrides) if overrides else config
    elif isinstance(config, Mapping):
        cfg_dict, lines = dict(config), {}
    elif isinstance(config, (str, Path)):
        if isinstance(config, Path) or ("\n" not in config and ":" not in config):
            cfg = FinetuneConfig.from_yaml(Path(config))
            return cfg.replace(**overrides) if overrides else cfg
        cfg_dict, lines = parse_cell(config, first_line=1)
    else:
        raise ConfigError(f"config must be a FinetuneConfig, a dict, YAML text or a path, not {type(config).__name__}")
    for k, v in overrides.items():
        if k == "data" and isinstance(v, Mapping) and isinstance(cfg_dict.get("data"), Mapping):
            cfg_dict["data"] = {**cfg_dict["data"], **v}
        else:
            # an override replaces the key under whichever alias the config used
            table = alias_table(FinetuneConfig)
            canon = table.get(k, k)
            for existing in [e for e in cfg_dict if table.get(e) == canon]:
                del cfg_dict[existing]
                lines = {p: n for p, n in lines.items() if p[0] not in (existing, canon)}  # not the override's line
            cfg_dict[k] = v
    return FinetuneConfig.from_dict(cfg_dict, lines=lines)


# --------------------------------------------------------------------------------------------- reference
def live_fields() -> dict[str, str]:
    """Fields that can change while a run trains, with the rule for the change."""
    return {
        n: f.json_schema_extra["live"]
        for n, f in FinetuneConfig.model_fields.items()
        if f.json_schema_extra and f.json_schema_extra.get("live")
    }


def task_specific_keys() -> dict[str, list[str]]:
    """Config keys (dotted for data.*) that only some tasks read -> those tasks. The rest apply to every task."""
    out = {}
    for prefix, model in (("", FinetuneConfig), ("data.", DataConfig)):
        for n, f in model.model_fields.items():
            tasks = (f.json_schema_extra or {}).get("tasks")
            if tasks:
                out[prefix + n] = list(tasks)
    return out


def check_live_value(name: str, value: Any) -> Any:
    """Validate a new value of the live field `name` with the schema; returns it validated.

    Raises ConfigError `name=value: why` (one line, no pydantic boilerplate)."""
    try:
        return getattr(FinetuneConfig.model_validate({name: value}), name)
    except ValidationError as e:
        why = str(e.errors()[0]["msg"]).removeprefix("Value error, ").removeprefix(f"{name}: ")
        raise ConfigError(f"{name}={_short(value)!r}: {why[:1].lower()}{why[1:]}") from None


def field_help(name: str) -> str:
    name = canonical_name(name)
    return FinetuneConfig.model_fields[name].description or ""


def _default_text(f) -> str:
    if f.default_factory is not None:
        return "(see below)"
    d = f.default
    if isinstance(d, Enum):
        d = d.value
    return "null" if d is None else str(d).lower() if isinstance(d, bool) else str(d)


def _type_text(f) -> str:
    ann = f.annotation
    if isinstance(ann, type) and issubclass(ann, Enum):
        return " \\| ".join(m.value for m in ann)
    s = str(ann).replace("typing.", "").replace("<class '", "").replace("'>", "").replace("NoneType", "null")
    s = s.replace("nb_finetune.core.config.", "").replace("DataConfig", "mapping").replace("EarlyStopping", "mapping")
    s = s.replace("LoraSettings", "mapping")
    return s.replace("None", "null").replace("Any", "any").replace("|", "\\|")


def config_reference_markdown() -> str:
    """The README's config reference table, generated from the schema."""
    rows = ["| key | type | default | aliases | live | tasks | description |", "|---|---|---|---|---|---|---|"]

    def add(prefix, model, parent_tasks=()):
        for n, f in model.model_fields.items():
            extra = f.json_schema_extra or {}
            aliases = ", ".join(f"`{a}`" for a in extra.get("aliases", []))
            live = "yes" if extra.get("live") else ""
            tasks = ", ".join(extra.get("tasks", []) or parent_tasks) or "all"  # a block's keys: the block's tasks
            desc = (f.description or "").replace("|", "\\|")
            if extra.get("live"):
                desc += f" *Live:* {extra['live']}"
            rows.append(
                f"| `{prefix}{n}` | {_type_text(f)} | `{_default_text(f)}` | {aliases} | {live} | {tasks} | {desc} |"
            )
            if prefix == "" and n in _NESTED:
                add(f"{n}.", _NESTED[n], extra.get("tasks", ()))

    add("", FinetuneConfig)
    return "\n".join(rows) + "\n"
