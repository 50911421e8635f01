"""The optimizer and the schedule: AdamW over trainable parameters in layer groups, the lr factor of each step,
and the rebuild after the trainable set changed."""

from __future__ import annotations

import contextlib
import math

from ..freezing import LayerMap

__all__ = ["build_optimizer", "rebuild_optimizer", "lr_factor", "warmup_steps", "set_lrs"]


def build_optimizer(model, layer_map: LayerMap, live, fused: bool, old=None):
    """AdamW over trainable parameters only, one group per layer group x (decay, no decay).

    Each group's `lr_mult` comes from `live.lr_mults` (layer_lr_decay / group_lr); the loop sets
    `lr = live.lr x lr_mult x schedule factor` before every optimizer step (`set_lrs`).

    `old`: a previous optimizer whose per-parameter state is carried over for parameters that stay trainable.
    """
    import torch

    owner = layer_map.group_of_param()
    groups: dict[tuple[str, bool], list] = {}
    names: dict[tuple[str, bool], list[str]] = {}
    for pname, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.ndim >= 2  # biases and norm weights get no weight decay
        key = (owner.get(pname, "head"), decay)
        groups.setdefault(key, []).append(p)
        names.setdefault(key, []).append(pname)
    param_groups = [
        {
            "params": ps,
            "weight_decay": live.weight_decay if decay else 0.0,
            "lr": live.lr,
            "group": g,
            "decay": decay,
            "lr_mult": live.lr_mults.get(g, 1.0),
            "param_names": names[(g, decay)],
        }
        for (g, decay), ps in groups.items()
    ]
    opt = None
    if fused:  # one kernel for all parameters: 4x faster than foreach on a CPU, the fastest path on CUDA
        try:
            opt = torch.optim.AdamW(param_groups, lr=live.lr, betas=(0.9, 0.999), eps=1e-8, fused=True)
        except (RuntimeError, ValueError):  # device or dtype without a fused kernel
            opt = None
    if opt is None:
        opt = torch.optim.AdamW(param_groups, lr=live.lr, betas=(0.9, 0.999), eps=1e-8)
    if old is not None:
        for group in opt.param_groups:
            for p in group["params"]:
                if p in old.state:
                    opt.state[p] = old.state[p]
    return opt


def rebuild_optimizer(accelerator, model, layer_map: LayerMap, live, fused: bool, old):
    """A new accelerate-wrapped optimizer over the current trainable set; `old`'s state carries over."""
    new = build_optimizer(accelerator.unwrap_model(model), layer_map, live, fused, old=old.optimizer)
    with contextlib.suppress(ValueError):
        accelerator._optimizers.remove(old)
    return accelerator.prepare_optimizer(new)


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """Multiplier of the base lr for the optimizer step that follows `step` completed steps."""
    if warmup > 0 and step < warmup:
        return (step + 1) / (warmup + 1)
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    progress = min(max(progress, 0.0), 1.0)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def warmup_steps(warmup: float, total: int) -> int:
    """`warmup` is steps when >= 1, a share of the planned steps when < 1."""
    return int(warmup) if warmup >= 1 else int(round(warmup * total))


def set_lrs(optimizer, base_lr: float) -> None:
    """Each group trains at base_lr x its lr_mult (host floats: no device work)."""
    for g in optimizer.param_groups:
        g["lr"] = base_lr * g.get("lr_mult", 1.0)
