"""The loop's decisions: is a log / eval / save point due, is this eval the best so far, is it time to stop early;
and the throughput meter that reads the device values of a log window in one transfer."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import FinetuneConfig, parse_interval
from ..events import Logged

__all__ = ["due", "eval_due", "improved", "Best", "Meter"]


def due(interval, step: int, epoch_end: bool, seconds_since: float | None, epochs_done: int = 1) -> bool:
    """Whether an interval (`500`, `"epoch"`, `"2 epochs"`, `"30min"`, None) fires after this optimizer step."""
    iv = parse_interval(interval)
    if iv is None:
        return False
    kind, amount = iv
    if kind == "epoch":  # every epoch, or every N epochs
        return epoch_end and epochs_done % int(amount) == 0
    if kind == "steps":
        return step % int(amount) == 0
    return seconds_since is not None and seconds_since >= amount


def eval_due(eval_every, has_eval: bool, step: int, epoch_end: bool, epochs_done: int, total: int) -> bool:
    """An eval point: when `eval_every` says so, and always at the last step unless evaluation is off."""
    if not has_eval:
        return False
    return due(eval_every, step, epoch_end, None, epochs_done) or (step >= total and eval_every is not None)


def improved(value: float, best: float, higher_better: bool, min_delta: float = 0.0) -> bool:
    return value > best + min_delta if higher_better else value < best - min_delta


@dataclass
class Best:
    """The best eval so far (for `metric_for_best` or early stopping) and the evals since it improved."""

    metric: str
    higher_better: bool
    min_delta: float = 0.0
    patience: int | None = None  # early stopping: evals without improvement before the run stops
    value: float | None = None
    step: int | None = None
    bad_evals: int = 0

    @classmethod
    def for_run(cls, cfg: FinetuneConfig, task) -> Best:
        es = cfg.early_stopping
        name = es.metric if es else cfg.metric_for_best
        name = name if name.startswith("eval_") else f"eval_{name}"
        mode = es.mode.value if es else "auto"
        higher = mode == "max" if mode != "auto" else task.higher_is_better(name)
        return cls(name, higher, es.min_delta if es else 0.0, es.patience if es else None)

    def update(self, metrics: dict[str, float], step: int) -> bool:
        """Record an eval; True when it is a new best."""
        value = metrics.get(self.metric)
        if value is not None and (
            self.value is None or improved(value, self.value, self.higher_better, self.min_delta)
        ):
            self.value, self.step, self.bad_evals = value, step, 0
            return True
        self.bad_evals += 1
        return False

    @property
    def stop_early(self) -> bool:
        return self.patience is not None and self.bad_evals >= self.patience


@dataclass
class Meter:
    """The steps since the last log point: device values kept on the device, host counters for throughput."""

    device: Any
    samples: int = 0  # marks at the last log point (run totals)
    tokens: int = 0
    flops: float = 0.0  # executed training FLOPs so far (see core/flops.py)
    padded: int = 0  # tokens including padding, to report the share of work spent on padding
    t: float = field(default_factory=time.perf_counter)
    losses: list = field(default_factory=list)  # 0-d device tensors, one per optimizer step since the last log
    grad_norms: list = field(default_factory=list)
    nonfinite: Any = None
    extra_read: list = field(default_factory=list)  # host values of log()'s `extra` tensors, read with the rest
    flops_at: float = 0.0
    padded_at: int = 0

    def __post_init__(self):
        import torch

        self.nonfinite = torch.zeros((), dtype=torch.int32, device=self.device)

    def batch(self, flops: float, padded: int) -> None:
        self.flops += flops
        self.padded += padded

    def step(self, loss, grad_norm=None) -> None:
        """After an optimizer step: device ops only, nothing is read."""
        import torch

        self.nonfinite += (~torch.isfinite(loss)).int()
        self.losses.append(loss)
        if grad_norm is not None:
            self.grad_norms.append(grad_norm)

    def pause(self, seconds: float) -> None:
        """Time spent on something else (evaluation): throughput counts training time only."""
        self.t += seconds

    def log(
        self,
        step: int,
        epoch: float,
        samples: int,
        tokens: int,
        base_lr: float,
        optimizer,
        memory_mb=None,
        peak=None,
        extra=(),
    ) -> Logged:
        """The Logged event of this window (`peak`: the device's FLOP/s or None), then a new window. `extra`: other
        0-d device tensors read in the same transfer (float32: integers exact up to 2**24); their host values are
        left in `extra_read`."""
        import torch

        parts = [torch.stack(self.losses).float(), self.nonfinite.float()[None]]
        parts += [t.float()[None] for t in extra]
        if self.grad_norms:
            parts.append(torch.stack(self.grad_norms).float())
        read = torch.cat(parts).tolist()  # the one device->host transfer of this log point
        n, k = len(self.losses), len(extra)
        vals, bad, self.extra_read, norms = read[:n], int(read[n]), read[n + 1 : n + 1 + k], read[n + 1 + k :]
        now = time.perf_counter()
        dt = max(now - self.t, 1e-9)
        tflops = (self.flops - self.flops_at) / dt / 1e12
        event = Logged(
            step=step,
            epoch=epoch,
            loss=float(np.mean(vals)),
            lr=base_lr,
            group_lrs={g["group"]: g["lr"] for g in optimizer.param_groups},
            grad_norm=float(np.mean(norms)) if norms else None,
            samples_per_s=(samples - self.samples) / dt,
            tokens_per_s=(tokens - self.tokens) / dt,
            nonfinite_steps=bad,
            losses=vals,
            memory_mb=memory_mb,
            tflops=tflops,
            mfu=tflops * 1e12 / peak if peak else None,
            padding=1 - (tokens - self.tokens) / max(self.padded - self.padded_at, 1),
        )
        self.losses, self.grad_norms = [], []
        self.nonfinite.zero_()
        self.t, self.samples, self.tokens, self.flops_at, self.padded_at = (
            now,
            samples,
            tokens,
            self.flops,
            self.padded,
        )
        return event
