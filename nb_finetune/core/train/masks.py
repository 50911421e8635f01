"""The attention mask a batch is given: none without padding, a prebuilt 4D one where the model gives the same
outputs with it (checked on the model at start-up), else the collator's 2D one.

The prebuilt mask is additive (0 where a key is attended, the dtype's minimum where it is padding), in the model's
dtype, built as (B, 1, 1, K) and expanded without a copy. Measured on the benchmark's 6-layer BERT on CPU (fp32,
batch 32 x 64, forward + backward): a boolean 4D mask made each step 5.6% slower than the 2D mask, because the
CPU attention kernels turn a boolean mask into an additive one in the forward and again in the backward; the
additive mask is as fast as the 2D one, and keeps what the 4D mask is for (no `padding_mask.all()` host sync)."""

from __future__ import annotations

from typing import Any

from ..cache import short_padded_rows
from ..tasks.base import HOST_KEYS

__all__ = ["mask_inputs", "as_4d_mask", "probe_4d_mask", "first_output"]


def mask_inputs(batch: dict[str, Any], lengths: list[int], mask_4d: Any) -> dict[str, Any]:
    """The attention mask the model gets. A batch without padding (known on the host from its lengths) needs none,
    which lets SDPA pick its unmasked kernels; otherwise a prebuilt 4D mask where the model accepts one
    (`mask_4d`: that mask's dtype, as `probe_4d_mask` returns it; None / False keeps the 2D mask).
    `batch` itself is left as it is (an eval metric reads its 2D mask)."""
    if "attention_mask" not in batch:
        return batch
    if min(lengths) == max(lengths):
        batch = dict(batch)
        batch.pop("attention_mask")
        return batch
    return as_4d_mask(dict(batch), mask_4d) if mask_4d else batch


def as_4d_mask(batch: dict[str, Any], dtype: Any = None) -> dict[str, Any]:
    """(B, K) padding mask -> (B, 1, K, K) additive mask in `dtype` (float32 by default), in place. A device op:
    no host read."""
    import torch

    dtype = dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float32
    m = batch["attention_mask"]
    b, k = m.shape
    add = torch.zeros((b, 1, 1, k), dtype=dtype, device=m.device).masked_fill(
        m[:, None, None, :] == 0, torch.finfo(dtype).min
    )
    batch["attention_mask"] = add.expand(b, 1, k, k)
    return batch


def first_output(out):
    """The first tensor a model returns besides its loss (logits, start logits, ...)."""
    if hasattr(out, "to_tuple"):
        return out.to_tuple()[0]
    return out[0] if isinstance(out, (tuple, list)) else out


def probe_4d_mask(model, data, collate, device):
    """Whether this model gives identical outputs when handed a prebuilt 4D additive attention mask.

    With a 2D mask, transformers' SDPA path asks `padding_mask.all()` on every forward to decide whether the
    mask can be skipped: a host-device sync per micro-batch. A 4D mask is passed through as it is. Checked on
    this model (two forwards in eval mode at start-up) rather than assumed, so models that expect another mask
    format keep the 2D one. Returns the mask's dtype (the model's parameters') when it may be used, else None.
    """
    import torch

    if getattr(getattr(model, "config", None), "_attn_implementation", None) != "sdpa" or len(data) < 2:
        return None
    if "attention_mask" not in data.features:
        return None
    rows = short_padded_rows(data.lengths, 2)  # two short examples of different lengths: cheap, and padded
    if rows is None:
        return None
    batch = collate([data[i] for i in rows])
    for key in (*HOST_KEYS, "labels"):
        batch.pop(key, None)
    batch = {k: v.to(device) for k, v in batch.items()}
    dtype = next(model.parameters()).dtype
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            ref = first_output(model(**batch))
            alt = first_output(model(**as_4d_mask(dict(batch), dtype)))
        same = bool(torch.allclose(ref.float(), alt.float(), atol=1e-5, rtol=1e-4))
    except Exception:  # noqa: BLE001 - any failure means: keep the 2D mask
        return None
    finally:
        model.train(was_training)
    return (dtype if dtype.is_floating_point else torch.float32) if same else None
