"""Batch sizes that fit (`batch_size: auto`, `effective_batch`, `max_memory_gb`) and out-of-memory handling.

- At start: on CUDA the largest micro-batch that runs a forward + backward on the longest training examples (with
  the optimizer state's memory held) is found with accelerate's `find_executable_batch_size`, halving from the
  target; on a CPU (no out-of-memory error there: the OOM killer ends the process) the dry run's memory estimate is
  compared with `max_memory_gb` (default 80% of the free RAM). `grad_accum` = effective_batch / batch_size.
- During training (`BatchPlan`): an out-of-memory in a micro-batch of a `batch_size: auto` run checkpoints the last
  optimizer step, splits every planned batch in two and doubles the accumulation, and goes on from the start of
  the accumulation cycle that failed: the same examples make each optimizer step, at the same effective batch.
  Without `auto` it is a short error naming what to lower.
- In evaluation: an out-of-memory halves the eval batch (only) and evaluates again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import FinetuneError

__all__ = [
    "BatchChoice",
    "BatchPlan",
    "is_oom",
    "oom_error",
    "estimate_bytes",
    "memory_budget",
    "resolve_batch_size",
    "evaluate_shrinking",
]


def is_oom(e: BaseException) -> bool:
    """Out of device (or host allocator) memory, as torch and accelerate report it."""
    import torch

    if isinstance(e, torch.OutOfMemoryError):
        return True
    from accelerate.utils.memory import should_reduce_batch_size

    return isinstance(e, Exception) and should_reduce_batch_size(e)


def oom_error(cfg, micro: int, where: str = "training") -> FinetuneError:
    """The one-screen error for an out-of-memory a run cannot handle itself."""
    eff = micro * cfg.grad_accum
    return FinetuneError(
        f"out of memory in {where} at batch_size {micro} (x grad_accum {cfg.grad_accum} = {eff} per step). Lower one "
        f"of: batch_size (e.g. {max(1, micro // 2)}, with grad_accum {cfg.grad_accum * 2} for the same effective "
        "batch), max_length, the trained layers (freeze: bottom N), or use precision: bf16 / fp16 on a GPU. "
        "`batch_size: auto` picks a size that fits and shrinks it on an out-of-memory."
    )


def _clear_cache() -> None:
    """Free what a failed attempt held on the GPU (on a CPU there is no cache to empty)."""
    import gc

    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        gc.collect()
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------- the plan
@dataclass
class BatchPlan:
    """Micro-batches as the loop runs them: each planned batch of `planned` examples (the data order of
    `epoch_batches`) is split into `split` micro-batches of `micro` examples; `grad_accum` micro-batches per step."""

    planned: int
    grad_accum: int
    split: int = 1

    @classmethod
    def from_config(cls, cfg) -> BatchPlan:
        return cls(cfg.batch_size, cfg.grad_accum)

    @property
    def micro(self) -> int:
        return math.ceil(self.planned / self.split)

    def batches(self, lengths, seed: int, epoch: int, group_by_length: bool) -> list[np.ndarray]:
        from .data import epoch_batches

        planned = epoch_batches(lengths, self.planned, seed, epoch, group_by_length)
        if self.split == 1:
            return planned
        return [piece for b in planned for piece in np.array_split(b, min(self.split, len(b)))]

    def count(self, lengths, seed: int, group_by_length: bool) -> int:
        """Micro-batches per epoch (the same for every epoch: sizes depend on the counts only)."""
        return len(self.batches(lengths, seed, 0, group_by_length))

    def shrink(self) -> bool:
        """Halve the micro-batch, double the accumulation; False when it is one example already."""
        if self.micro <= 1:
            return False
        self.split *= 2
        self.grad_accum *= 2
        return True

    def shrink_at(self, lengths, seed: int, epoch: int, grouped: bool, index: int) -> int:
        """`shrink()`, and the micro-batch index of the new plan that starts where `index` of the old one did."""
        seen = sum(len(b) for b in self.batches(lengths, seed, epoch, grouped)[:index])
        self.shrink()
        j, count = 0, 0
        for b in self.batches(lengths, seed, epoch, grouped):
            if count >= seen:
                break
            count += len(b)
            j += 1
        return j

    def saved(self) -> dict[str, int]:
        return {"planned": self.planned, "grad_accum": self.grad_accum, "split": self.split}

    @classmethod
    def restore(cls, d: dict[str, Any] | None, cfg) -> BatchPlan:
        if not d or not cfg.batch_size_auto:
            return cls.from_config(cfg)
        return cls(int(d["planned"]), int(d["grad_accum"]), int(d["split"]))


# --------------------------------------------------------------------------------------------- eval
def evaluate_shrinking(evaluate, model, data, task, cfg, device, mask_4d: bool):
    """`evaluate(...)`, halving `cfg.eval_batch_size` on an out-of-memory (the training batch stays)."""
    while True:
        try:
            return evaluate(model, data, task, cfg, device, mask_4d)
        except Exception as e:
            if not is_oom(e):
                raise
            bs = cfg.eval_batch_size or 2 * cfg.batch_size
            if bs <= 1:
                raise oom_error(cfg, cfg.batch_size, "evaluation (eval_batch_size 1)") from None
            _clear_cache()
            cfg.eval_batch_size = bs // 2  # the run keeps the smaller size for its later evaluations


# --------------------------------------------------------------------------------------------- at start
@dataclass
class BatchChoice:
    batch_size: int
    grad_accum: int
    how: str  # "probe" (tried on the device) | "estimate" (memory estimate against the budget)
    detail: str

    def __str__(self) -> str:
        return (
            f"batch_size: auto -> batch_size {self.batch_size} x grad_accum {self.grad_accum} = "
            f"{self.batch_size * self.grad_accum} per step ({self.detail})"
        )


def estimate_bytes(
    task, cfg, layer_map, frozen: set[str], batch: int, total_params: int, trainable: int, model=None
) -> int:
    """The dry run's estimate for one micro-batch of `batch`: weights, gradients, AdamW state, activations (the
    task's `activation_bytes`)."""
    from .train.device import device_type, resolve_precision

    precision = resolve_precision(cfg.precision.value, device_type())
    activations = task.activation_bytes(model, layer_map, frozen, batch, precision)
    return int(total_params * 4 + trainable * 12 + activations)


def memory_budget(cfg) -> tuple[int, str]:
    """Bytes `batch_size: auto` may plan for on a CPU, and where the number comes from."""
    if cfg.max_memory_gb is not None:
        return int(cfg.max_memory_gb * 2**30), f"max_memory_gb {cfg.max_memory_gb:g}"
    free = _available_ram()
    return int(0.8 * free), f"80% of the free RAM ({free / 2**30:.1f} GiB free)"


def _available_ram() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return 8 * 2**30


def _fits(target: int | None, fit: int) -> tuple[int, int]:
    """(batch_size, grad_accum): the largest batch <= fit that divides the target, and the accumulation."""
    if target is None:
        return fit, 1
    b = min(fit, target)
    while target % b:
        b -= 1
    return b, target // b


def _start(target: int | None, n_train: int) -> int:
    cap = min(n_train, 1024) if target is None else min(target, n_train, 1024)
    return max(1, 2 ** int(math.log2(max(1, cap))))


def resolve_batch_size(
    cfg, task, model, train_data, layer_map, frozen: set[str], *, method: str | None = None, device=None
) -> BatchChoice:
    """`batch_size: auto`: probe on CUDA (`method="probe"`), estimate elsewhere (`method="estimate"`)."""
    import torch

    from .train.device import device_type

    dev = torch.device(device or device_type())
    method = method or ("probe" if dev.type == "cuda" else "estimate")
    target = cfg.effective_batch
    start = _start(target, len(train_data))
    owner = layer_map.group_of_param()
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for n, p in model.named_parameters() if owner.get(n) not in frozen)
    if method == "estimate":
        budget, why = memory_budget(cfg)
        b = start
        while b >= 1 and estimate_bytes(task, cfg, layer_map, frozen, b, total, trainable, model) > budget:
            b //= 2
        if b < 1:
            need = estimate_bytes(task, cfg, layer_map, frozen, 1, total, trainable, model)
            raise FinetuneError(
                f"batch_size: auto: even one example needs ~{need / 2**30:.2f} GiB, more than {why}. Raise "
                "max_memory_gb, lower max_length, or freeze more layers (freeze: bottom N)"
            )
        est = estimate_bytes(task, cfg, layer_map, frozen, b, total, trainable, model)
        bs, ga = _fits(target, b)
        return BatchChoice(bs, ga, "estimate", f"estimate {est / 2**30:.2f} GiB at {b} within {why}")
    fit = probe_batch_size(task, model, train_data, trainable, start, dev)
    bs, ga = _fits(target, fit)
    return BatchChoice(bs, ga, "probe", f"largest that ran on {dev.type}: {fit}")


def probe_batch_size(task, model, train_data, trainable: int, start: int, device) -> int:
    """Largest power-of-two micro-batch (<= start) whose forward + backward on the longest examples runs, with
    the AdamW state's memory held meanwhile (accelerate's find_executable_batch_size, halving)."""
    import torch
    from accelerate.utils import find_executable_batch_size

    from .tasks.base import HOST_KEYS

    longest = np.argsort(-np.asarray(train_data.lengths), kind="stable")
    collate = task.collator()
    size = {"b": start}

    def halve():
        size["b"] //= 2
        return size["b"]

    model.to(device)
    modes = {n: m.training for n, m in model.named_modules()}
    st_rng = _rng()

    @find_executable_batch_size(starting_batch_size=start, reduce_batch_size_fn=halve)
    def attempt(batch_size):
        held = torch.empty(2 * trainable, dtype=torch.float32, device=device)  # the AdamW moments' memory
        try:
            batch = collate([train_data[int(i)] for i in longest[:batch_size]])
            batch = {k: v.to(device) for k, v in batch.items() if k not in HOST_KEYS}
            model.train()
            loss, _ = task.forward(model, batch)
            loss.backward()
            return batch_size
        finally:
            del held
            model.zero_grad(set_to_none=True)

    try:
        return attempt()
    finally:
        for n, m in model.named_modules():
            m.training = modes[n]
        _set_rng(st_rng)
        _clear_cache()


def _rng():
    import random

    import torch

    st = {"torch": torch.get_rng_state().clone(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = [s.clone() for s in torch.cuda.get_rng_state_all()]
    return st


def _set_rng(st) -> None:
    import random

    import torch

    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    if "cuda" in st:
        torch.cuda.set_rng_state_all(st["cuda"])
