"""The attention mask a batch is given: none without padding, a prebuilt 4D one where the model gives the same
outputs with it (checked on the model at start-up), else the collator's 2D one."""

from __future__ import annotations

from typing import Any

from ..cache import short_padded_rows
from ..tasks.base import HOST_KEYS

__all__ = ["mask_inputs", "as_4d_mask", "probe_4d_mask", "first_output"]


def mask_inputs(batch: dict[str, Any], lengths: list[int], mask_4d: bool) -> dict[str, Any]:
    """The attention mask the model gets. A batch without padding (known on the host from its lengths) needs none,
    which lets SDPA pick its unmasked kernels; otherwise a prebuilt 4D mask where the model accepts one.
    `batch` itself is left as it is (an eval metric reads its 2D mask)."""
    if "attention_mask" not in batch:
        return batch
    if min(lengths) == max(lengths):
        batch = dict(batch)
        batch.pop("attention_mask")
        return batch
    return as_4d_mask(dict(batch)) if mask_4d else batch


def as_4d_mask(batch: dict[str, Any]) -> dict[str, Any]:
    """(B, K) padding mask -> (B, 1, K, K) boolean mask, in place. A device op: no host read."""
    m = batch["attention_mask"]
    batch["attention_mask"] = m[:, None, None, :].bool().expand(m.shape[0], 1, m.shape[1], m.shape[1])
    return batch


def first_output(out):
    """The first tensor a model returns besides its loss (logits, start logits, ...)."""
    if hasattr(out, "to_tuple"):
        return out.to_tuple()[0]
    return out[0] if isinstance(out, (tuple, list)) else out


def probe_4d_mask(model, data, collate, device) -> bool:
    """Whether this model gives identical outputs when handed a prebuilt 4D boolean attention mask.

    With a 2D mask, transformers' SDPA path asks `padding_mask.all()` on every forward to decide whether the
    mask can be skipped: a host-device sync per micro-batch. A 4D mask is passed through as it is. Checked on
    this model (two forwards in eval mode at start-up) rather than assumed, so models that expect another mask
    format keep the 2D one.
    """
    import torch

    if getattr(getattr(model, "config", None), "_attn_implementation", None) != "sdpa" or len(data) < 2:
        return False
    if "attention_mask" not in data.features:
        return False
    rows = short_padded_rows(data.lengths, 2)  # two short examples of different lengths: cheap, and padded
    if rows is None:
        return False
    batch = collate([data[i] for i in rows])
    for key in (*HOST_KEYS, "labels"):
        batch.pop(key, None)
    batch = {k: v.to(device) for k, v in batch.items()}
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            ref = first_output(model(**batch))
            alt = first_output(model(**as_4d_mask(dict(batch))))
        return bool(torch.allclose(ref.float(), alt.float(), atol=1e-5, rtol=1e-4))
    except Exception:  # noqa: BLE001 - any failure means: keep the 2D mask
        return False
    finally:
        model.train(was_training)
