"""Multi-label classification: a text (or a text pair) -> any number of labels out of K (topics, tags, toxicity
kinds). One sigmoid per label, binary cross-entropy; a label is predicted when its score is above `threshold`.

The label column holds lists (`["sports", "politics"]`, `[0, 3]`, `[]` for none), strings split on `label_sep`
(`"sports,politics"`), or lists written out as text by a CSV round trip (`"['sports', 'politics']"`).
Metrics: `f1_micro`, `f1_macro`, `subset_accuracy` (every label of the text right).
"""

from __future__ import annotations

import ast
from typing import Any

import numpy as np

from ...errors import DataError
from .base import Examples, register
from .text_classification import SequenceTask, label_column, label_kind

__all__ = ["MultiLabelClassification", "MultiLabelMetric", "multi_label_scores"]


@register
class MultiLabelClassification(SequenceTask):
    """Any number of labels per text; `predict` returns the labels scoring above `threshold`, best first."""

    name = "multi-label-classification"
    aliases = ("multi-label", "multilabel")
    title = "multi-label classification"
    label_kind = "multi_hot"
    default_metric = "eval_f1_micro"
    metric_keys = ("f1_micro", "f1_macro", "subset_accuracy")

    def __init__(self, cfg, **kw):
        super().__init__(cfg, **kw)
        self.int_ids = False  # the label column holds class ids (ints) rather than names
        self.labels_per_text = 0.0

    @classmethod
    def detect(cls, ds, cfg) -> str | None:
        col = label_column(ds, cfg)
        if col is None:
            return None
        kind = label_kind(ds, col)
        if kind == "list":
            return f"label lists in '{col}'"
        if kind == "str" and cfg.label_sep:
            return f"labels separated by {cfg.label_sep!r} in '{col}'"
        return None

    @property
    def threshold(self) -> float:
        return float(self.cfg.threshold)

    # ------------------------------------------------------------ calling thread
    def _rows(self, ds, role: str) -> list[list]:
        """The label list of every row of `ds` (strings or ints), or a DataError naming the row."""
        sep = self.cfg.label_sep
        out = []
        for row, v in enumerate(ds[self.label_col]):
            items = _as_list(v, sep)
            if items is None:
                hint = (
                    'set `label_sep: ","` (the delimiter) if it holds several labels in one string'
                    if isinstance(v, str)
                    else "use a list of labels per row ([] for none)"
                )
                raise DataError(
                    f"data.label: row {row} of data.{role} has label {v!r} in column '{self.label_col}', "
                    f"which is not a list of labels; {hint}"
                )
            bad = next((x for x in items if not isinstance(x, (str, int, np.integer)) or isinstance(x, bool)), None)
            if bad is not None:
                raise DataError(
                    f"data.label: row {row} of data.{role} has {bad!r} in its label list; labels are names "
                    "(strings) or class ids (integers)"
                )
            out.append(items)
        return out

    def resolve_labels(self) -> None:
        full = self._rows(self._full_train, "train")
        eval_rows = self._rows(self.eval, "eval") if self.cfg.data.eval is not None else []
        given = [str(n) for n in self.cfg.labels] if self.cfg.labels else None
        ints = [x for r in full for x in r if not isinstance(x, str)]
        strs = [x for r in full for x in r if isinstance(x, str)]
        if ints and strs:
            raise DataError(
                f"data.label: column '{self.label_col}' of data.train mixes label names ({strs[0]!r}) and "
                f"class ids ({ints[0]!r}); use one kind"
            )
        self.int_ids = bool(ints)
        if self.int_ids:
            names = self._int_names(full, eval_rows, given)
        else:
            names = given or sorted({x for r in full for x in r})
            known = set(names)
            for role, rows in (("train", full if given else []), ("eval", eval_rows)):
                for row, r in enumerate(rows):
                    unknown = next((x for x in r if x not in known), None)
                    if unknown is not None:
                        where = "labels:" if given else "data.train"
                        raise DataError(
                            f"data.label: row {row} of data.{role} has label {unknown!r}, which is not in {where} "
                            f"({names[:20]}); add it to `labels:` or fix that row"
                        )
        if not names:
            raise DataError(
                f"data.label: column '{self.label_col}' of data.train holds only empty label lists; "
                "multi-label classification needs at least one label"
            )
        if len(set(names)) != len(names):
            raise DataError(f"labels: names repeat ({names}); give each label once")
        if self.model_obj is not None and getattr(self.hf_config, "num_labels", len(names)) != len(names):
            raise DataError(
                f"model: the model object has {self.hf_config.num_labels} labels but the data has "
                f"{len(names)} ({names[:10]}); build it with num_labels={len(names)}"
            )
        self.label_names = names
        self.label_map = {(i if self.int_ids else n): i for i, n in enumerate(names)}
        self.labels_per_text = float(np.mean([len(set(r)) for r in full])) if full else 0.0

    def _int_names(self, full, eval_rows, given):
        ids = [
            (role, row, x)
            for role, rows in (("train", full), ("eval", eval_rows))
            for row, r in enumerate(rows)
            for x in r
        ]
        neg = next((t for t in ids if int(t[2]) < 0), None)
        if neg is not None:
            raise DataError(f"data.label: row {neg[1]} of data.{neg[0]} has class id {neg[2]}; ids are 0..K-1")
        if given:
            high = next((t for t in ids if int(t[2]) >= len(given)), None)
            if high is not None:
                raise DataError(
                    f"data.label: row {high[1]} of data.{high[0]} has class id {high[2]}, but `labels:` names "
                    f"only {len(given)} labels (ids 0..{len(given) - 1})"
                )
            return given
        k = max((int(t[2]) for t in ids), default=-1) + 1
        return [str(i) for i in range(k)]

    def labels_of(self, ds, role: str) -> list | None:
        """The multi-hot vector (floats, one per label) of every row of `ds`, or None when it has no label column."""
        if self.label_col not in ds.column_names:
            return None
        k = len(self.label_names)
        out = []
        for row, items in enumerate(self._rows(ds, role)):
            vec = [0.0] * k
            for x in items:
                key = int(x) if self.int_ids and not isinstance(x, str) else x
                j = self.label_map.get(key)
                if j is None:
                    raise DataError(
                        f"data.label: row {row} of data.{role} has label {x!r}, which is not one of the labels "
                        f"{self.label_names[:20]}"
                    )
                vec[j] = 1.0
            out.append(vec)
        return out

    def describe(self) -> list[str]:
        lines = super().describe()
        lines.append(f"labels per text: {self.labels_per_text:.2f} on average (data.train)")
        return lines

    def head_text(self) -> str:
        return (
            f"{len(self.label_names)} sigmoids over [CLS] (binary cross-entropy); a label is predicted when its "
            f"score > threshold {self.threshold:g}"
        )

    # ------------------------------------------------------------ worker
    def head_kwargs(self) -> dict[str, Any]:
        return {**super().head_kwargs(), "problem_type": "multi_label_classification"}

    def build_model(self, *, meta: bool = False):
        model = super().build_model(meta=meta)
        model.config.problem_type = "multi_label_classification"  # BCE over multi-hot labels, also for model objects
        return model

    def predict(self, model, texts, pairs=None, batch_size: int = 32, threshold: float | None = None):
        """Per text, the labels scoring above the threshold as [{'label': ..., 'score': ...}], best first.

        A single string gives that one list. `threshold`: default the run's `threshold`."""
        t = self.threshold if threshold is None else float(threshold)

        def rows(logits):
            out = []
            for row in logits.sigmoid().tolist():
                hits = [{"label": self.label_names[j], "score": s} for j, s in enumerate(row) if s > t]
                out.append(sorted(hits, key=lambda h: -h["score"]))
            return out

        out = self._predict_logits(model, texts, pairs, batch_size, rows)
        return out[0] if isinstance(texts, str) else out

    def metric(self, data: Examples):
        return MultiLabelMetric(self.label_names, self.threshold)


def _as_list(v, sep: str | None) -> list | None:
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if isinstance(v, (list, tuple)):
        return list(v)
    if isinstance(v, str):
        s = v.strip()
        if s.startswith("[") and s.endswith("]"):  # a list written out as text (a DataFrame saved to CSV)
            try:
                parsed = ast.literal_eval(s)
            except (ValueError, SyntaxError):
                parsed = None
            if isinstance(parsed, (list, tuple)):
                return list(parsed)
        if sep:
            return [p.strip() for p in s.split(sep) if p.strip()]
    return None


def multi_label_scores(tp, fp, fn, exact: int, n: int) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """(scores, per-label F1, which labels have one) from per-label counts and the number of exact matches.

    f1_micro pools the counts of every label; f1_macro averages per-label F1 over the labels that occur in the
    labels or the predictions (a label absent from both has no F1 and is skipped, as in text classification)."""
    tp, fp, fn = (np.asarray(a, dtype=np.int64) for a in (tp, fp, fn))
    denom = 2 * tp + fp + fn
    defined = denom > 0
    f1 = np.where(defined, 2 * tp / np.maximum(denom, 1), 0.0)
    pooled = int(denom.sum())
    scores = {
        "f1_micro": float(2 * tp.sum() / pooled) if pooled else 0.0,
        "f1_macro": float(f1[defined].mean()) if defined.any() else 0.0,
        "subset_accuracy": exact / n if n else 0.0,
    }
    return scores, f1, defined


class MultiLabelMetric:
    """Streaming counts per label (tp, fp, fn) and exact matches: one (3K + 1,) transfer per eval batch."""

    def __init__(self, label_names: list[str], threshold: float = 0.5):
        self.names = list(label_names)
        self.threshold = float(threshold)
        k = len(self.names)
        self.tp = np.zeros(k, dtype=np.int64)
        self.fp = np.zeros(k, dtype=np.int64)
        self.fn = np.zeros(k, dtype=np.int64)
        self.exact = 0
        self.n = 0

    def update(self, outputs, batch, host) -> None:
        import torch

        pred = outputs.logits.float().sigmoid() > self.threshold
        true = batch["labels"] > 0.5
        counts = torch.cat(
            [
                (pred & true).sum(0),
                (pred & ~true).sum(0),
                (~pred & true).sum(0),
                (pred == true).all(1).sum().reshape(1),
            ]
        ).cpu()
        k = len(self.names)
        c = counts.numpy().astype(np.int64)
        self.tp += c[:k]
        self.fp += c[k : 2 * k]
        self.fn += c[2 * k : 3 * k]
        self.exact += int(c[3 * k])
        self.n += int(true.shape[0])

    def compute(self) -> dict[str, float]:
        return multi_label_scores(self.tp, self.fp, self.fn, self.exact, self.n)[0]

    def extras(self) -> dict[str, Any]:
        _, f1, defined = multi_label_scores(self.tp, self.fp, self.fn, self.exact, self.n)
        if len(self.names) > 50:  # more bars than read in a notebook cell
            return {}
        keep = np.flatnonzero(defined)
        return {
            "label_f1": {
                "kind": "bars",
                "title": "F1 by label",
                "labels": [self.names[j] for j in keep],
                "values": [float(f1[j]) for j in keep],
            }
        }
