"""NaN / Inf losses without a host sync per step: the check runs on the device, the host reads it at log points.

Where the optimizer is fused (CUDA, CPU) a non-finite step is skipped on the device through the optimizer's
`found_inf` (the mechanism a GradScaler uses): the parameters and the optimizer state stay as they were. With
`on_nonfinite: stop` the flag is sticky, so nothing changes from the first bad step until the log (or save) point
that reads it and stops the run; with `skip` each bad step is skipped (the meter counts them: `nonfinite_steps`).
Without a fused optimizer, or under fp16's GradScaler (which skips non-finite gradients itself), the flag is read
on the host each step instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import NonFiniteLossError

__all__ = ["NonFiniteGuard"]


@dataclass
class NonFiniteGuard:
    mode: str  # stop | skip
    on_device: bool  # found_inf applies (fused optimizer, no GradScaler)
    first: object = None  # device int64: the first bad optimizer step, -1 while none
    seen: object = None  # device bool, sticky under `stop`
    batches: dict = field(default_factory=dict)  # step -> (epoch, first micro-batch, last micro-batch)

    @classmethod
    def for_run(cls, mode: str, device, fused: bool, scaler) -> NonFiniteGuard:
        import torch

        g = cls(mode, fused and scaler is None)
        g.first = torch.full((), -1, dtype=torch.int64, device=device)
        g.seen = torch.zeros((), dtype=torch.bool, device=device)
        return g

    def before_step(self, loss, optimizer, step: int, epoch: int, first_batch: int, last_batch: int) -> bool:
        """Call before `optimizer.step()` of optimizer step `step` (1-based); `optimizer`: the torch optimizer of
        now (freezing changes rebuild it). False: skip the step (host path only)."""
        import torch

        bad = ~torch.isfinite(loss.detach()).all()
        self.first = torch.where(bad & (self.first < 0), torch.full_like(self.first, step), self.first)
        self.seen = (self.seen | bad) if self.mode == "stop" else bad
        if self.mode == "stop":
            self.batches.setdefault(step, (epoch, first_batch, last_batch))
            if len(self.batches) > 4096:  # between two reads; keep the oldest (the first bad one is among them)
                self.batches.pop(next(reversed(self.batches)))
        if self.on_device:
            optimizer.found_inf = self.seen.float()  # the fused kernel leaves params and state untouched
            return True
        return not bool(self.seen)  # host sync: only without a fused optimizer

    @property
    def to_read(self) -> tuple:
        """The device value `check` needs (none unless `stop`): a log point reads it with its own values."""
        return (self.first,) if self.mode == "stop" else ()

    def check(self, checkpoints: list, read: list | None = None) -> None:
        """At a log or save point (already sync points), under `stop`: raise when a step's loss was not finite.
        `read`: the host values of `to_read` where the caller has read them already (no second read)."""
        if self.mode != "stop":
            return
        first = int(read[0]) if read else int(self.first)
        if first < 0:
            self.batches.clear()
            return
        epoch, a, b = self.batches.get(first, (None, None, None))
        where = f" (epoch {epoch}, micro-batch {a}" + (f"-{b}" if b != a else "") + ")" if epoch is not None else ""
        good = [c.name for c in checkpoints if int(c.name.split("-")[-1]) < first]
        last = f"the last good checkpoint is {good[-1]} (resume_from: last)" if good else "no checkpoint was written"
        raise NonFiniteLossError(
            f"the loss became NaN or Inf at step {first}{where}; stopped (on_nonfinite: stop): no update was applied "
            f"from that step on and {last}. Lower lr, check those rows of data.train, or set on_nonfinite: skip"
        )

    @staticmethod
    def release(optimizer) -> None:
        if hasattr(optimizer, "found_inf"):
            del optimizer.found_inf
