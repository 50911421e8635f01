"""The task seam: what differs between text classification, NER, extractive QA, regression, a causal LM, images...

A task is one class registered here under its `name` (and `aliases`). The loop, the API, the panel and the CLI
know a task only through this interface; adding a task is adding a module under `core/tasks/`, never editing the
loop. One `Task` instance belongs to one run: `preflight()` runs on the calling thread (every user mistake is a
`FinetuneError` raised there), everything after it runs on the worker thread.

Data flow of one run, seen from the task:

    task = resolve_task(cfg)         # the registry; `task: auto` asks each task's `detect` about the data
    task.preflight()                 # calling thread: model config, tokenizer, data, columns, labels
    model = task.build_model()       # worker: weights and a head for this task
    train, eval = task.build_data()  # `Examples`: per-example features, labels, lengths
    collate = task.collator()        # picklable: DataLoader workers call it
    loss, out = task.forward(model, batch)           # in the loop (batch without the host keys)
    m = task.metric(eval); m.update(out, batch, host); m.compute()   # streaming evaluation
    task.predict(model, ...); task.save(model, path)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from ...errors import ConfigError, DataError, FinetuneError

__all__ = [
    "Capabilities",
    "Examples",
    "StreamingMetric",
    "Task",
    "register",
    "registry",
    "task_names",
    "get_task_class",
    "resolve_task",
    "HOST_KEYS",
]

# keys a collated batch carries for the host only (never moved to the device, never given to the model)
HOST_KEYS = ("num_tokens", "lengths", "idx")


@dataclass(frozen=True)
class Capabilities:
    """What the loop, the cache and the panel may assume about a task."""

    prefix_cache: bool = True  # a frozen prefix of blocks is exact to compute once and cache (inputs never change)
    length_grouping: bool = True  # examples have a length and batching by length saves padding
    throughput_unit: str = "tokens"  # what `tokens_per_s` counts: tokens, images, seconds of audio
    mask_4d: bool = True  # a prebuilt 4D attention mask may replace the 2D one (checked on the model too)


@dataclass
class Examples:
    """Encoded examples: per-example feature lists (ragged), one label per example (any shape) and lengths.

    `features` maps model input names to one list per example (`input_ids`, `attention_mask`, ...). `labels` holds
    what the collator turns into the `labels` tensor (an int, a float, a multi-hot list, a tag-id list), or None.
    `extra` holds per-example fields that are not model inputs (offsets, example ids, word ids): a metric or
    `predict` looks them up by the batch's `idx`; items do not carry them.
    """

    features: dict[str, list]
    labels: list | None = None
    extra: dict[str, list] = field(default_factory=dict)
    lengths: np.ndarray | None = None

    def __post_init__(self):
        if self.lengths is None:
            first = self.features.get("input_ids")
            if first is None:
                first = next(iter(self.features.values()))
                self.lengths = np.ones(len(first), dtype=np.int64)
            else:
                self.lengths = np.fromiter((len(x) for x in first), dtype=np.int64, count=len(first))
        self.lengths = np.asarray(self.lengths, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def num_unreadable(self) -> int:
        """Examples left out so far because their file failed to decode when read (media decoded lazily); the
        loop reports it at each log point."""
        return 0

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {k: v[i] for k, v in self.features.items()}  # `extra` stays here: metrics look it up by `idx`
        item["idx"] = i
        if self.labels is not None:
            item["labels"] = self.labels[i]
        return item


class StreamingMetric(Protocol):
    """Evaluation metric updated once per eval batch and computed once at the end.

    `update(outputs, batch, host)`: `outputs` is the model's output, `batch` the device tensors the model got
    (with `labels`), `host` the host keys (`idx`: example indices into the eval `Examples`, `lengths`). Move to the
    host what you keep (one transfer per batch); never keep tensors to concatenate across batches of other widths.
    `compute()` -> metric values without the `eval_` prefix (the loop adds it), floats in the usual 0-1 range.
    `extras()` (optional) -> what the panel draws besides the common plots, JSON-serialisable, each entry one of
      {"kind": "matrix", "title": str, "rows": [...], "cols": [...], "values": [[...]]}
      {"kind": "bars", "title": str, "labels": [...], "values": [...]}
    """

    def update(self, outputs: Any, batch: dict[str, Any], host: dict[str, Any]) -> None: ...

    def compute(self) -> dict[str, float]: ...


class Task(ABC):
    """Base class of every task. Subclass, set the class attributes, implement the methods that raise here.

    Class attributes:
        name: canonical `task:` value (`token-classification`).
        aliases: other accepted `task:` values (`ner`, `pos`).
        title: how the panel header, the progress line and the dry run name it (`token classification`).
        capabilities: see `Capabilities`.
        lower_is_better: metric names (without `eval_`) where smaller is better, besides losses.
        default_metric: what `metric_for_best` / early stopping mean by "the" task metric in examples and docs.
        metric_keys: the names `metric(...).compute()` returns (without `eval_`); empty when the task cannot say.
    """

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    title: ClassVar[str] = ""
    capabilities: ClassVar[Capabilities] = Capabilities()
    lower_is_better: ClassVar[frozenset[str]] = frozenset()
    default_metric: ClassVar[str] = "eval_loss"
    metric_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg, *, train_source=None, picked: str | None = None):
        self.cfg = cfg
        self.picked = picked  # why `task: auto` chose this task, or None when the config named it
        self._train_source = train_source  # the loaded train Dataset when auto-detection already read it
        # filled in by preflight; attributes the API, the dry run and the panel read on every task
        self.model_id: str = ""
        self.hf_config: Any = None
        self.tokenizer: Any = None
        self.train: Any = None  # datasets.Dataset (or the task's own container)
        self.eval: Any = None
        self.label_names: list[str] = []
        self.max_length: int | None = None

    @classmethod
    def keys(cls) -> list[str]:
        """The task-specific config keys this task reads (the schema's `tasks=` says; dotted for `data.*`)."""
        from ..config import task_specific_keys

        return [k for k, tasks in task_specific_keys().items() if cls.name in tasks]

    # ------------------------------------------------------------ detection (task: auto)
    @classmethod
    def detect(cls, ds, cfg) -> str | None:
        """Whether this task fits `ds` (the training data): a short reason ("float labels") or None."""
        return None

    # ------------------------------------------------------------ calling thread
    @abstractmethod
    def preflight(self) -> None:
        """Resolve model config, tokenizer, data, columns and labels; raise a FinetuneError for any user mistake."""

    def describe(self) -> list[str]:
        """Lines for the dry run and `RunStarted.task_detail`: the task (and why auto picked it), the head, labels."""
        lines = [f"task: {self.name}" + (f" (auto: {self.picked})" if self.picked else "")]
        if self.label_names:
            shown = ", ".join(self.label_names[:20]) + (" ..." if len(self.label_names) > 20 else "")
            lines.append(f"labels ({len(self.label_names)}): {shown}")
        return lines

    @property
    def num_train(self) -> int:
        return len(self.train) if self.train is not None else 0

    @property
    def num_eval(self) -> int:
        return len(self.eval) if self.eval is not None else 0

    def activation_bytes(self, model, layer_map, frozen: set[str], batch: int, precision: str) -> int:
        """Bytes of activations one training micro-batch of `batch` examples keeps for its backward pass: the dry
        run's memory estimate and `batch_size: auto` on a CPU. Default: transformer blocks over `max_length` tokens,
        trained blocks only (a frozen block keeps nothing for the backward pass)."""
        hc = self.hf_config
        hidden = getattr(hc, "hidden_size", 0) or 0
        heads = getattr(hc, "num_attention_heads", 0) or 0
        seq = self.max_length or 0
        trained_blocks = sum(1 for g in layer_map.groups if g.kind == "block" and g.name not in frozen)
        act = 2 if precision in ("bf16", "fp16") else 4
        # per trained block: ~17 hidden-sized tensors per token plus attention scores (Korthikanti et al. 2022)
        per_block = batch * seq * hidden * 17 * act + batch * heads * seq**2 * 2.5 * act
        return int(per_block * trained_blocks)

    # ------------------------------------------------------------ worker thread
    @abstractmethod
    def build_model(self, *, meta: bool = False):
        """The model with this task's head. `meta=True`: shapes only, on the meta device (dry run, layer preview)."""

    def layer_map(self, model):
        """The model's layer groups for freezing; the generic map unless the task knows better."""
        from ..freezing import build_layer_map

        return build_layer_map(model)

    def build_data(self) -> tuple[Examples, Examples | None]:
        """Encoded train and eval examples."""
        return self.encode(self.train, role="train"), (
            self.encode(self.eval, role="eval") if self.eval is not None else None
        )

    @abstractmethod
    def encode(self, ds, *, role: str = "eval") -> Examples:
        """Encode a dataset of this task's shape (also `Run.evaluate(data=...)`)."""

    def load_eval(self, src) -> Any:
        """Load and check a user-given evaluation source (`Run.evaluate(data=...)`): same columns as train."""
        from .. import data as D

        return D.load_source(src, role="eval", trust_remote_code=self.cfg.trust_remote_code)

    @abstractmethod
    def collator(self):
        """A picklable callable: list of `Examples` items -> batch dict of tensors plus the HOST_KEYS."""

    def forward(self, model, batch: dict[str, Any]):
        """(loss, outputs) for one batch on the device (host keys removed). Default: the model computes its loss."""
        out = model(**batch)
        return out.loss, out

    @abstractmethod
    def metric(self, data: Examples) -> StreamingMetric:
        """A fresh streaming metric over `data` (the eval examples)."""

    def metric_names(self) -> list[str]:
        """Every metric an evaluation of this task reports (`eval_` names); [] when the task does not declare them.

        `metric_for_best` and `early_stopping.metric` are checked against this list in pre-flight."""
        if not self.metric_keys:
            return []
        return ["eval_loss", *(f"eval_{k}" for k in self.metric_keys)]

    def higher_is_better(self, metric: str) -> bool:
        short = metric.removeprefix("eval_")
        return "loss" not in short and short not in self.lower_is_better

    def predict(self, model, *args, **kwargs):
        """Optional: a task without its own `predict` says so, naming the fix (built-in tasks all have one)."""
        raise FinetuneError(
            f"task {self.name!r} has no predict(): define `predict(self, model, inputs)` on its class, "
            "or call run.model directly"
        )

    def save(self, model, path: Path) -> None:
        """Write the model (safetensors) and its tokenizer / processor so `from_pretrained(path)` loads them."""
        model.save_pretrained(path, safe_serialization=True)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(path)


# --------------------------------------------------------------------------------------------- registry
_REGISTRY: dict[str, type[Task]] = {}
_ALIASES: dict[str, str] = {}
_BUILTIN = (
    "text_classification",
    "regression",
    "multi_label",
    "token_classification",
    "question_answering",
    "causal_lm",
    "image_classification",
    "audio_classification",
)


def register(cls: type[Task]) -> type[Task]:
    """Class decorator: make a task available as `task: <name>` (and its aliases)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _REGISTRY[cls.name] = cls
    for a in (cls.name, *cls.aliases):
        _ALIASES[a] = cls.name
    return cls


def _load_builtin() -> None:
    import importlib

    for mod in _BUILTIN:
        try:
            importlib.import_module(f"{__package__}.{mod}")
        except ModuleNotFoundError as e:  # a task module not written yet must not break the others
            if e.name != f"{__package__}.{mod}":
                raise


def registry() -> dict[str, type[Task]]:
    """name -> Task class, built-in tasks first."""
    _load_builtin()
    return dict(_REGISTRY)


def task_names() -> list[str]:
    return list(registry())


def canonical_task(name: str) -> str:
    registry()
    key = str(name).strip().lower().replace("_", "-")
    if key == "auto":
        return "auto"
    if key not in _ALIASES:
        import difflib

        close = difflib.get_close_matches(key, list(_ALIASES), n=1, cutoff=0.6)
        hint = f" Did you mean '{_ALIASES[close[0]]}'?" if close else ""
        raise ConfigError(
            f"Invalid finetune config: task: {name!r} is not a task; use auto, {', '.join(_REGISTRY)}.{hint}"
        )
    return _ALIASES[key]


def get_task_class(name: str) -> type[Task]:
    return registry()[canonical_task(name)]


def resolve_task(cfg) -> Task:
    """The task instance for this config; with `task: auto`, the one whose `detect` fits the training data."""
    name = cfg.task if isinstance(cfg.task, str) else cfg.task.value
    if canonical_task(name) != "auto":
        cls = get_task_class(name)
        check_task_keys(cfg, cls)
        return cls(cfg)
    if cfg.data.train is None:
        raise ConfigError("Invalid finetune config: 'data.train' is required (a file, a hub dataset or {{df}})")
    from .. import data as D

    ds = D.load_source(cfg.data.train, role="train", trust_remote_code=cfg.trust_remote_code)
    _check_named_columns(cfg, ds)
    fits = [(cls, why) for cls in registry().values() if (why := cls.detect(ds, cfg))]
    if len(fits) > 1:  # a key only some tasks read (label_sep, doc_stride) decides between those that fit
        fits = [(c, w) for c, w in fits if _reads_every_set_key(cfg, c)] or fits
    if len(fits) == 1:
        cls, why = fits[0]
        check_task_keys(cfg, cls)
        return cls(cfg, train_source=ds, picked=why)
    cols = ", ".join(getattr(ds, "column_names", []) or [])
    if not fits:
        raise DataError(
            f"task: auto cannot tell the task from data.train (columns: {cols}); name it with `task:` "
            f"({', '.join(task_names())})"
        )
    named = "; ".join(f"{c.name} ({why})" for c, why in fits)
    raise DataError(f"task: auto: data.train fits several tasks: {named}. Name one with `task:`")


def _check_named_columns(cfg, ds) -> None:
    """A column named under `data:` that data.train lacks is the mistake to report, not the task it leaves unclear."""
    from ..data import suggest

    cols = list(getattr(ds, "column_names", []) or [])
    for key in ("text", "text_pair", "label", "tokens", "question", "context", "answers", "image", "audio"):
        col = getattr(cfg.data, key, None)
        if col is not None and col not in cols:
            raise DataError(
                f"data.{key}: column '{col}' is not in data.train (columns: {', '.join(cols)}).{suggest(col, cols)}"
            )


def check_task_keys(cfg, cls: type[Task]) -> None:
    """A key the chosen task does not use is a mistake: name the tasks that do use it."""
    from ..config import task_specific_keys

    for key, tasks in task_specific_keys().items():
        if cls.name in tasks or not _is_set(cfg, key):
            continue
        users = ", ".join(t for t in tasks if t in registry()) or ", ".join(tasks)
        raise ConfigError(
            f"Invalid finetune config: `{key}` is not used by task {cls.name}; it is for: {users}. "
            "Remove it, or set `task:` to one of those"
        )


def _reads_every_set_key(cfg, cls: type[Task]) -> bool:
    from ..config import task_specific_keys

    return all(cls.name in tasks for key, tasks in task_specific_keys().items() if _is_set(cfg, key))


def _is_set(cfg, dotted: str) -> bool:
    obj = cfg
    *parents, last = dotted.split(".")
    for p in parents:
        obj = getattr(obj, p)
    value = getattr(obj, last)
    # `replace()` marks every field as set: a value equal to the default is no choice of the user's
    return last in obj.model_fields_set and value is not None and value != type(obj).model_fields[last].default
