"""Text classification (single text or sentence pairs): one label per text, a softmax head, accuracy and macro-F1.

`SequenceTask` is the shared shape of every "one text (or pair) in, one prediction out" task: regression and
multi-label classification subclass it and change the labels, the head, the metric and `predict`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import DataError
from .. import data as D
from . import common as C
from .base import Capabilities, Examples, Task, register

__all__ = [
    "SequenceTask",
    "TextClassification",
    "ClassificationMetric",
    "classification_scores",
    "label_column",
    "label_kind",
]


class SequenceTask(Task):
    """A text (or a text pair) -> one prediction. Subclasses set the head and the label handling."""

    head_suffix = "ForSequenceClassification"
    capabilities = Capabilities(prefix_cache=True, length_grouping=True, throughput_unit="tokens")
    label_kind = "class"

    def __init__(self, cfg, **kw):
        super().__init__(cfg, **kw)
        self.model_obj = None
        self.text_col: str = ""
        self.pair_col: str | None = None
        self.label_col: str = ""
        self.label_map: dict[Any, int] = {}
        self._full_train = None  # data.train before the `eval_split` holdout

    # ------------------------------------------------------------ calling thread
    def preflight(self) -> None:
        cfg = self.cfg
        C.require_model_and_data(cfg)
        self.model_obj, self.hf_config, self.model_id = C.resolve_model(
            cfg, head_suffix=self.head_suffix, task_title=self.title
        )
        if self.model_obj is None:
            from transformers import AutoModelForSequenceClassification

            C.check_head(AutoModelForSequenceClassification, self.model_id, self.hf_config)
        self.tokenizer = C.resolve_tokenizer(cfg, self.model_obj, self.model_id)
        train, eval_ = C.load_splits(cfg, self._train_source)
        self.text_col, self.label_col, self.pair_col = D.detect_columns(
            train, cfg.data.text, cfg.data.label, cfg.data.text_pair
        )
        if not any(t is not None and str(t).strip() for t in train[self.text_col]):
            raise DataError(
                f"data.text: every row of column '{self.text_col}' in data.train is empty; there is nothing to learn "
                f"from. Check the column (columns: {', '.join(train.column_names)})"
            )
        if eval_ is not None:
            missing = [c for c in (self.text_col, self.label_col, self.pair_col) if c and c not in eval_.column_names]
            if missing:
                raise DataError(
                    f"data.eval lacks column(s) {missing} that data.train has "
                    f"(data.eval columns: {', '.join(eval_.column_names)})"
                )
        # labels come from, and errors name rows of, data.train as given (before `eval_split` is held out): a rare
        # class whose rows all went to the held-out part is still a class
        self._full_train = train
        self.train, self.eval = C.holdout(cfg, train, eval_)
        self.resolve_labels()
        self.max_length = C.resolve_max_length(cfg, self.tokenizer, self.hf_config)
        # tokenize two examples now, so a broken text column fails here rather than in the worker
        sample = self.train.select(range(min(2, len(self.train))))
        try:
            self.tokenizer([str(t) for t in sample[self.text_col]], truncation=True, max_length=self.max_length)
        except Exception as e:  # noqa: BLE001
            raise DataError(f"data.text: the tokenizer cannot read column '{self.text_col}': {e}") from None
        # encode every label now: a bad value is an error in the cell, naming its row
        self.labels_of(self._full_train, "train")
        if cfg.data.eval is not None:
            self.labels_of(self.eval, "eval")

    def resolve_labels(self) -> None:
        """Label names and the raw value -> id mapping (classification)."""
        user_eval = self.eval if self.cfg.data.eval is not None else None
        names, mapping = D.infer_labels(self._full_train, user_eval, self.label_col, self.cfg.labels)
        if self.model_obj is not None and getattr(self.hf_config, "num_labels", len(names)) != len(names):
            raise DataError(
                f"model: the model object has {self.hf_config.num_labels} labels but the data has "
                f"{len(names)} ({names[:10]}); build it with num_labels={len(names)}"
            )
        self.label_names, self.label_map = names, mapping

    def labels_of(self, ds, role: str) -> list | None:
        """The encoded label of every row of `ds`, or None when it has no label column."""
        if self.label_col not in ds.column_names:
            return None
        out = []
        for row, v in enumerate(ds[self.label_col]):
            key = v if isinstance(v, str) else float(v) if isinstance(v, float) else v
            try:
                out.append(self.label_map[key if isinstance(key, (str, float)) else int(key)])
            except (KeyError, TypeError, ValueError):
                raise DataError(
                    f"data.label: row {row} of data.{role} has label {v!r}, which is not one of the labels "
                    f"{self.label_names[:20]}"
                ) from None
        return out

    def describe(self) -> list[str]:
        lines = super().describe()
        cols = f"text column '{self.text_col}'" + (f" + pair column '{self.pair_col}'" if self.pair_col else "")
        lines.append(f"input: {cols}, label column '{self.label_col}', max_length {self.max_length}")
        lines.append(f"head: {self.head_text()}")
        return lines

    def head_text(self) -> str:
        return f"{len(self.label_names)}-way softmax over [CLS] (cross-entropy)"

    # ------------------------------------------------------------ worker
    def head_kwargs(self) -> dict[str, Any]:
        names = self.label_names
        return dict(
            num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)}
        )

    def build_model(self, *, meta: bool = False):
        from transformers import AutoModelForSequenceClassification

        if self.model_obj is not None:
            model = self.model_obj
        else:
            model = C.from_pretrained(
                AutoModelForSequenceClassification,
                self.cfg,
                self.model_id,
                self.hf_config,
                meta=meta,
                **self.head_kwargs(),
            )
            if meta:
                return model
        return C.finish_model(self.cfg, model, self.tokenizer)

    def encode(self, ds, *, role: str = "eval") -> Examples:
        texts = [str(t) for t in ds[self.text_col]]
        pairs = [str(t) for t in ds[self.pair_col]] if self.pair_col else None
        return D.tokenize(self.tokenizer, texts, pairs, self.max_length, self.labels_of(ds, role))

    def load_eval(self, src):
        ds = super().load_eval(src)
        D.detect_columns(ds, self.text_col, self.label_col, self.pair_col, role="eval")
        return ds

    def collator(self):
        return D.Collator(self.tokenizer.pad_token_id, self.label_kind)

    def _batches(self, texts, pairs, batch_size: int, device):
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer(
                list(texts[i : i + batch_size]),
                list(pairs[i : i + batch_size]) if pairs is not None else None,
                truncation=True,
                max_length=self.max_length,
                padding=True,
                return_tensors="pt",
            )
            yield enc.to(device)

    def _predict_logits(self, model, texts, pairs, batch_size, fn):
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        if pairs is not None:
            pairs = [pairs] if isinstance(pairs, str) else list(pairs)
            if len(pairs) != len(texts):
                raise DataError(f"predict: {len(texts)} texts but {len(pairs)} text pairs")
        elif self.pair_col:
            raise DataError(
                f"predict: this model reads text pairs ('{self.text_col}', '{self.pair_col}'); "
                "pass predict(texts, pairs)"
            )
        batches = self._batches(texts, pairs, batch_size, C.model_device(model))
        return C.batched_inference(model, batches, lambda m, b: fn(m(**b).logits.float().cpu()))

    def predict(self, model, texts, pairs=None, batch_size: int = 32):
        """[{'label': ..., 'score': ...}, ...] for each text (or text pair)."""

        def rows(logits):
            out = []
            for row in logits.softmax(-1):
                j = int(row.argmax())
                out.append({"label": self.label_names[j], "score": float(row[j])})
            return out

        return self._predict_logits(model, texts, pairs, batch_size, rows)

    def metric(self, data: Examples):
        return ClassificationMetric(self.label_names)


@register
class TextClassification(SequenceTask):
    name = "text-classification"
    aliases = ("classification", "sequence-classification", "sentence-pair", "nli")
    title = "text classification"
    default_metric = "eval_accuracy"
    metric_keys = ("accuracy", "f1")

    @classmethod
    def detect(cls, ds, cfg) -> str | None:
        col = label_column(ds, cfg)
        if col is None:
            return None
        kind = label_kind(ds, col)
        if kind == "str":
            return f"text labels in '{col}'"
        if kind == "int":
            return f"integer labels in '{col}'"
        return None


def label_column(ds, cfg) -> str | None:
    cols = list(getattr(ds, "column_names", []) or [])
    # a label column next to a token list is token classification, not this
    if cfg.data.tokens is not None or any(c.lower() in ("tokens", "words") for c in cols):
        return None
    from .media import media_kind

    if media_kind(ds, cfg) is not None:  # a label next to images or sound: image / audio classification
        return None
    if cfg.data.label is not None:
        return cfg.data.label if cfg.data.label in cols else None
    lower = {c.lower(): c for c in cols}
    return next((lower[c] for c in D.LABEL_CANDIDATES if c in lower), None)


def label_kind(ds, col: str) -> str:
    """str, int, float (non-integer numbers), list, or other: what the label column holds."""
    import datasets

    feat = ds.features.get(col)
    if isinstance(feat, datasets.ClassLabel):
        return "int"
    if isinstance(feat, (datasets.Sequence, list)) or type(feat).__name__ == "List":
        return "list"
    values = [v for v in ds[col][:1000] if v is not None]
    if not values:
        return "other"
    if all(isinstance(v, str) for v in values):
        return "str"
    if all(isinstance(v, bool) for v in values):
        return "int"
    if all(isinstance(v, (int, float, np.integer, np.floating)) for v in values):
        floats = [float(v) for v in values]
        return "int" if all(f == int(f) for f in floats if f == f) else "float"
    return "other"


def classification_scores(preds: np.ndarray, labels: np.ndarray, num_labels: int) -> dict[str, float]:
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


class ClassificationMetric:
    """Streaming accuracy / macro-F1 and the confusion matrix: one (B,) transfer per eval batch."""

    def __init__(self, label_names: list[str]):
        self.names = list(label_names)
        k = len(self.names)
        self.confusion = np.zeros((k, k), dtype=np.int64)  # rows: true label, columns: predicted

    def update(self, outputs, batch, host) -> None:
        import torch

        both = torch.stack([outputs.logits.argmax(-1), batch["labels"]]).cpu().numpy()
        np.add.at(self.confusion, (both[1], both[0]), 1)

    def compute(self) -> dict[str, float]:
        k = len(self.names)
        true, pred = np.nonzero(self.confusion)
        counts = self.confusion[true, pred]
        return classification_scores(np.repeat(pred, counts), np.repeat(true, counts), k)

    def extras(self) -> dict[str, Any]:
        if len(self.names) > 30:  # a 100-class matrix does not read in a notebook cell
            return {}
        return {
            "confusion": {
                "kind": "matrix",
                "title": "Confusion matrix (rows: true, columns: predicted)",
                "rows": self.names,
                "cols": self.names,
                "values": self.confusion.tolist(),
            }
        }
