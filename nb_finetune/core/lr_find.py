"""LR range test (`lr: find`, `nb_finetune.lr_find(...)`, `%%finetune lr_find NAME`): train for a few steps with
an exponentially growing learning rate on the run's own model and optimizer, record the smoothed loss, stop when
it diverges, and put weights, optimizer state and RNG back exactly as they were.

Suggestions, read from the smoothed curve:
- steepest: where the loss falls fastest per decade of lr;
- valley: two thirds of the way along the longest stretch over which the smoothed loss keeps falling (a value
  that is still safely below the divergence, the one `lr: find` trains with);
- minimum / 10: a tenth of the lr at the lowest smoothed loss.
"""

from __future__ import annotations

import copy
import json
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["LRFindResult", "range_test", "suggest", "find_lr_for_run", "snapshot", "restore"]


@dataclass
class LRFindResult:
    """The curve and the suggestions of one LR range test (plot it with `nb_finetune.ui.lr_find_plot`)."""

    lrs: list[float]
    losses: list[float]  # raw loss of each step
    smoothed: list[float]  # bias-corrected exponential moving average
    steepest: float | None
    valley: float | None
    min_div10: float | None
    stopped: str  # "diverged" (the smoothed loss passed diverge x its best, or went non-finite) or "end"
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def suggestion(self) -> float | None:
        """The lr `lr: find` trains with: valley, else steepest, else minimum / 10."""
        return self.valley or self.steepest or self.min_div10

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "suggestion": self.suggestion}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> LRFindResult:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        d.pop("suggestion", None)
        return cls(**d)

    def __str__(self) -> str:
        fmt = lambda v: "-" if v is None else f"{v:.2e}"  # noqa: E731
        return (
            f"LR range test: {len(self.lrs)} steps from {fmt(self.lrs[0] if self.lrs else None)} to "
            f"{fmt(self.lrs[-1] if self.lrs else None)} ({self.stopped}); suggestions: valley {fmt(self.valley)}, "
            f"steepest {fmt(self.steepest)}, minimum/10 {fmt(self.min_div10)} -> lr {fmt(self.suggestion)}"
        )

    def _repr_pretty_(self, p, cycle):
        p.text(str(self))


# --------------------------------------------------------------------------------------------- state
def snapshot(model, optimizer) -> dict[str, Any]:
    """Everything a range test changes: weights and buffers, optimizer state and lrs, grads, train/eval modes, RNG."""
    import torch

    st: dict[str, Any] = {
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "optimizer": copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None,
        "grads": {n: (None if p.grad is None else p.grad.detach().clone()) for n, p in model.named_parameters()},
        "modes": {n: m.training for n, m in model.named_modules()},
        "torch": torch.get_rng_state().clone(),
        "python": random.getstate(),
    }
    try:
        import numpy as np

        st["numpy"] = np.random.get_state()
    except ImportError:
        pass
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = [s.clone() for s in torch.cuda.get_rng_state_all()]
    return st


def restore(model, optimizer, st: dict[str, Any]) -> None:
    import torch

    with torch.no_grad():
        model.load_state_dict(st["model"])  # copies into the same tensors: the optimizer keeps its parameters
    if optimizer is not None:
        optimizer.load_state_dict(st["optimizer"])
    for n, p in model.named_parameters():
        g = st["grads"].get(n)
        p.grad = None if g is None else g.clone()
    for n, m in model.named_modules():
        if n in st["modes"]:
            m.training = st["modes"][n]
    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    if "numpy" in st:
        import numpy as np

        np.random.set_state(st["numpy"])
    if "cuda" in st:
        torch.cuda.set_rng_state_all(st["cuda"])


# --------------------------------------------------------------------------------------------- the test
def range_test(
    model,
    optimizer,
    batches: Iterable,
    loss_fn: Callable[[Any, Any], Any],
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    beta: float = 0.9,
    diverge: float = 4.0,
    max_grad_norm: float | None = None,
    restore_state: bool = True,
) -> LRFindResult:
    """Exponential LR sweep from `start_lr` to `end_lr` over `num_steps` optimizer steps (batches are cycled).

    `loss_fn(model, batch)` returns the loss tensor. Each param group trains at lr x its `lr_mult` (layer-wise
    decay keeps its shape). With `restore_state` (the default) the model, optimizer and RNG are put back bit for bit.
    """
    import torch

    if not (0 < start_lr < end_lr):
        raise ValueError(f"lr_find: start_lr ({start_lr}) must be > 0 and below end_lr ({end_lr})")
    saved = snapshot(model, optimizer) if restore_state else None
    ratio = (end_lr / start_lr) ** (1.0 / max(1, num_steps - 1))
    lrs, losses, smoothed = [], [], []
    avg, best, stopped = 0.0, math.inf, "end"
    params = [p for g in optimizer.param_groups for p in g["params"]]
    model.train()
    try:
        it = _cycle(batches)
        for i in range(num_steps):
            lr = start_lr * ratio**i
            for g in optimizer.param_groups:
                g["lr"] = lr * g.get("lr_mult", 1.0)
            batch = next(it)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model, batch)
            loss.backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            optimizer.step()
            value = float(loss.detach())  # one host read per step: the range test is short, the curve is the point
            lrs.append(lr)
            losses.append(value)
            if not math.isfinite(value):
                stopped = "diverged"
                break
            avg = beta * avg + (1 - beta) * value
            s = avg / (1 - beta ** (i + 1))
            smoothed.append(s)
            best = min(best, s)
            if i > 0 and s > diverge * best:
                stopped = "diverged"
                break
    finally:
        optimizer.zero_grad(set_to_none=True)
        if saved is not None:
            restore(model, optimizer, saved)
    n = len(smoothed)
    steepest, valley, min_div10 = suggest(lrs[:n], smoothed)
    settings = dict(start_lr=start_lr, end_lr=end_lr, num_steps=num_steps, beta=beta, diverge=diverge)
    return LRFindResult(lrs, losses, smoothed, steepest, valley, min_div10, stopped, settings)


def suggest(lrs: list[float], smoothed: list[float]) -> tuple[float | None, float | None, float | None]:
    """(steepest, valley, minimum / 10) from a smoothed curve; None where the curve is too short to tell."""
    n = len(smoothed)
    if n < 5:
        return None, None, None
    skip = max(1, n // 20)  # the first points carry the smoothing's start-up
    logs = [math.log10(x) for x in lrs]
    i_min = min(range(n), key=lambda i: smoothed[i])
    min_div10 = lrs[i_min] / 10
    # steepest: the most negative slope d(loss)/d(log10 lr) before the minimum
    hi = max(i_min, skip + 2)
    slopes = [((smoothed[i + 1] - smoothed[i - 1]) / (logs[i + 1] - logs[i - 1]), i) for i in range(max(1, skip), hi)]
    steepest = lrs[min(slopes)[1]] if slopes and min(slopes)[0] < 0 else None
    # valley: the longest run of falling values (short rises inside it tolerated), 2/3 along it
    best_len, best_start, start, rises = 0, 0, skip, 0
    for i in range(skip + 1, n):
        if smoothed[i] < smoothed[i - 1]:
            rises = 0
        else:
            rises += 1
            if rises > 2:  # the stretch ended
                start, rises = i, 0
                continue
        if i - start > best_len:
            best_len, best_start = i - start, start
    valley = lrs[best_start + (2 * best_len) // 3] if best_len >= 3 else None
    return steepest, valley, min_div10


def _cycle(batches):
    while True:
        got = False
        for b in batches:
            got = True
            yield b
        if not got:
            raise ValueError("lr_find: no training batches")


# --------------------------------------------------------------------------------------------- on a run
def find_lr_for_run(cfg, task, model, train_data, layer_map, *, num_steps: int | None = None) -> LRFindResult:
    """The range test for a run about to start: the run's trainable set, optimizer (AdamW over the same layer
    groups, layer-wise multipliers included), batches, device and autocast; nothing of it survives the test."""
    import torch
    from torch.utils.data import DataLoader

    from .data import epoch_batches
    from .freezing import apply_freeze
    from .tasks.base import HOST_KEYS
    from .train.device import device_type, resolve_precision
    from .train.live import Live
    from .train.optim import build_optimizer

    dev = torch.device(device_type())
    precision = resolve_precision(cfg.precision.value, dev.type)
    live = Live.from_config(cfg, layer_map)
    requires = {n: p.requires_grad for n, p in model.named_parameters()}
    model.to(dev)
    apply_freeze(model, layer_map, live.frozen)
    optimizer = build_optimizer(model, layer_map, live, fused=dev.type in ("cuda", "cpu"))
    steps = num_steps or min(100, max(20, len(train_data) // cfg.batch_size * 2))
    order = epoch_batches(train_data.lengths, cfg.batch_size, cfg.seed, 0, cfg.group_by_length)
    collate = task.collator()
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(train_data, batch_sampler=order, collate_fn=collate, generator=gen)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def loss_fn(m, batch):
        batch = {k: v.to(dev) for k, v in batch.items() if k not in HOST_KEYS}
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            loss, _ = task.forward(m, batch)
        return loss.float()

    try:
        return range_test(
            model, optimizer, loader, loss_fn, num_steps=steps, max_grad_norm=cfg.max_grad_norm, end_lr=1.0
        )
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(requires[n])
