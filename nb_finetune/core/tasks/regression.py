"""Regression: a text (or a text pair: similarity, STS) -> one number. One linear output over [CLS], MSE loss.

Metrics: `mse`, `mae` (lower is better), `r2`, `pearson`, `spearman` (higher is better). Labels are used as given
(no scaling); `describe()` reports their mean and spread so a user can read an MSE against them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ...errors import DataError
from .base import Examples, register
from .text_classification import SequenceTask, label_column, label_kind

__all__ = ["Regression", "RegressionMetric", "regression_scores", "average_ranks"]


@register
class Regression(SequenceTask):
    """A float label per text (or text pair); `predict` returns one float per text."""

    name = "regression"
    aliases = ("text-regression", "similarity")
    title = "regression"
    label_kind = "float"
    lower_is_better = frozenset({"mse", "mae"})
    # the training objective in the label's own units, defined for any eval set (r2 is not when the eval labels are
    # all equal); on a fixed eval set r2 = 1 - mse / var(labels), so both pick the same best checkpoint
    default_metric = "eval_mse"
    metric_keys = ("mse", "mae", "r2", "pearson", "spearman")

    def __init__(self, cfg, **kw):
        super().__init__(cfg, **kw)
        self.label_stats: dict[str, float] = {}

    @classmethod
    def detect(cls, ds, cfg) -> str | None:
        col = label_column(ds, cfg)
        if col is not None and label_kind(ds, col) == "float":
            return f"float labels in '{col}'"
        return None

    # ------------------------------------------------------------ calling thread
    def resolve_labels(self) -> None:
        if self.model_obj is not None and getattr(self.hf_config, "num_labels", 1) != 1:
            raise DataError(
                f"model: the model object has {self.hf_config.num_labels} outputs; regression needs one: "
                "build it with num_labels=1 (or pass a hub id / directory and the head is added for you)"
            )
        self.labels_of(self._full_train, "train")
        if self.cfg.data.eval is not None:
            self.labels_of(self.eval, "eval")
        y = np.asarray(self.labels_of(self.train, "train"), dtype=np.float64)
        self.label_names = []
        self.label_stats = {
            "mean": float(y.mean()),
            "std": float(y.std()),
            "min": float(y.min()),
            "max": float(y.max()),
        }

    def labels_of(self, ds, role: str) -> list[float] | None:
        """The label of every row of `ds` as a float, or None when it has no label column."""
        if self.label_col not in ds.column_names:
            return None
        out = []
        for row, v in enumerate(ds[self.label_col]):
            x = _as_number(v)
            if x is None:
                what = "no label (an empty cell)" if v is None else f"label {v!r}, which is not a number,"
                raise DataError(
                    f"data.label: row {row} of data.{role} has {what} in column '{self.label_col}'; regression "
                    "needs one number per row: fix or drop that row"
                )
            out.append(x)
        return out

    def describe(self) -> list[str]:
        lines = super().describe()
        s = self.label_stats
        if s:
            lines.append(
                f"labels: mean {s['mean']:.4g}, std {s['std']:.4g}, range {s['min']:.4g} .. {s['max']:.4g} "
                f"({self.num_train} training rows); used as given (no scaling)"
            )
        return lines

    def head_text(self) -> str:
        return "1 linear output over [CLS] (mean squared error)"

    # ------------------------------------------------------------ worker
    def head_kwargs(self) -> dict[str, Any]:
        name = self.label_col or "score"
        return dict(num_labels=1, id2label={0: name}, label2id={name: 0}, problem_type="regression")

    def build_model(self, *, meta: bool = False):
        model = super().build_model(meta=meta)
        model.config.problem_type = "regression"  # a model object may say nothing: the loss must be MSE
        return model

    def predict(self, model, texts, pairs=None, batch_size: int = 32):
        """One float per text (or text pair); a float for a single string."""
        out = self._predict_logits(model, texts, pairs, batch_size, lambda logits: logits[:, 0].tolist())
        return out[0] if isinstance(texts, str) else out

    def metric(self, data: Examples):
        return RegressionMetric()


def _as_number(v) -> float | None:
    """`v` as a finite float (numbers and numeric strings such as '3.5'), else None."""
    if v is None or isinstance(v, (list, tuple, dict)):
        return None
    try:
        x = float(v.strip()) if isinstance(v, str) else float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of `x`, ties given the mean of the ranks they span (what Spearman's rho needs)."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.r_[0, np.flatnonzero(xs[1:] != xs[:-1]) + 1]
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum()) / denom if denom > 0 else 0.0


def regression_scores(preds, labels) -> dict[str, float]:
    """mse, mae, r2, pearson, spearman of 1-D predictions against labels.

    Where a score is undefined it is 0.0 rather than NaN (metrics.jsonl stays plain JSON): r2 when the labels are
    all equal (1.0 if the predictions match them exactly), pearson / spearman when either side is constant.
    """
    p = np.asarray(preds, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if len(y) == 0:
        return {"mse": 0.0, "mae": 0.0, "r2": 0.0, "pearson": 0.0, "spearman": 0.0}
    err = p - y
    sse = float((err * err).sum())
    sst = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - sse / sst if sst > 0 else (1.0 if sse == 0 else 0.0)
    return {
        "mse": sse / len(y),
        "mae": float(np.abs(err).mean()),
        "r2": r2,
        "pearson": _pearson(p, y),
        "spearman": _pearson(average_ranks(p), average_ranks(y)),
    }


class RegressionMetric:
    """Streaming regression scores: one (2, B) device->host transfer per eval batch, computed once at the end."""

    BINS = 6

    def __init__(self):
        self._parts: list[np.ndarray] = []

    def update(self, outputs, batch, host) -> None:
        import torch

        preds = outputs.logits.reshape(len(batch["labels"]), -1)[:, 0]
        both = torch.stack([preds.detach().float(), batch["labels"].reshape(-1).float()]).cpu().numpy()
        self._parts.append(both)

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._parts:
            return np.zeros(0), np.zeros(0)
        both = np.concatenate(self._parts, axis=1)
        return both[0], both[1]

    def compute(self) -> dict[str, float]:
        return regression_scores(*self._arrays())

    def extras(self) -> dict[str, Any]:
        """Predicted vs true, binned over the range of the true values: a regression's confusion matrix."""
        p, y = self._arrays()
        if len(y) == 0 or y.min() == y.max():
            return {}
        edges = np.linspace(y.min(), y.max(), self.BINS + 1)
        names = [f"{edges[i]:.3g}..{edges[i + 1]:.3g}" for i in range(self.BINS)]
        row = np.clip(np.searchsorted(edges, y, side="right") - 1, 0, self.BINS - 1)
        col = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, self.BINS - 1)
        counts = np.zeros((self.BINS, self.BINS), dtype=np.int64)
        np.add.at(counts, (row, col), 1)
        return {
            "pred_vs_true": {
                "kind": "matrix",
                "title": "Predicted vs true (rows: true bin, columns: predicted bin; outside the range: the end bins)",
                "rows": names,
                "cols": names,
                "values": counts.tolist(),
            }
        }
