"""Evaluation: loss and the task's streaming metric over examples sorted by length (least padding)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..tasks.base import HOST_KEYS
from .masks import mask_inputs

__all__ = ["evaluate"]


def evaluate(model, data, task, cfg, device, mask_4d=None) -> tuple[dict[str, float], dict[str, Any]]:
    """(metrics, extras) of `model` on `data` (the task's `Examples`).

    Metrics are `eval_loss` (when the model returns a loss) and the task metric's values with an `eval_` prefix;
    extras are what the metric asks the panel to draw (`StreamingMetric.extras()`). The metric keeps what it needs
    batch by batch: one device->host transfer per batch for it, one at the end for the loss.
    """
    import torch

    metric = task.metric(data)
    collate = task.collator()
    model.eval()
    bs = cfg.eval_batch_size or 2 * cfg.batch_size
    order = np.argsort(-data.lengths, kind="stable")  # sorted by length: least padding
    loss_sum, n = None, 0
    with torch.inference_mode():
        for i in range(0, len(order), bs):
            batch = collate([data[int(j)] for j in order[i : i + bs]])
            host = {k: batch.pop(k) for k in HOST_KEYS if k in batch}
            host.pop("num_tokens", None)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            out = model(**mask_inputs(batch, host["lengths"], mask_4d))
            k = len(host["lengths"])
            loss = getattr(out, "loss", None)
            if loss is not None:
                weighted = loss.detach().float() * k
                loss_sum = weighted if loss_sum is None else loss_sum + weighted
            n += k
            metric.update(out, batch, host)
    metrics = {} if loss_sum is None else {"eval_loss": float(loss_sum.item() / max(n, 1))}
    metrics.update({f"eval_{k}": v for k, v in metric.compute().items()})
    extras = metric.extras() if hasattr(metric, "extras") else {}
    return metrics, extras or {}
