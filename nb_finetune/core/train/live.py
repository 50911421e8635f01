"""Commands that change a running run: the live values, `set` and `freeze` applied between optimizer steps,
gradual unfreezing, and the acknowledgement of every command (from `Controls` and from control.jsonl)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from ...errors import FinetuneError
from ..cache import prefix_depth
from ..config import FinetuneConfig, canonical_name, check_live_value, live_fields, parse_interval
from ..events import Command, ControlApplied, Controls
from ..freezing import LayerMap, apply_freeze, lr_multipliers, next_unfreeze, resolve_freeze, set_frozen_eval
from ..runs import ControlFileReader, RunDir
from .optim import rebuild_optimizer

__all__ = [
    "IMMEDIATE",
    "AT_STEP",
    "Live",
    "Parts",
    "CommandDesk",
    "apply_set",
    "apply_command",
    "values_before",
    "frozen_list",
    "set_frozen",
    "train_mode",
    "scheduled_unfreeze",
    "nothing_to_unfreeze",
]

log = logging.getLogger("nb_finetune")

IMMEDIATE = ("stop", "abort", "pause", "resume")  # in effect as soon as sent (see Controls), acknowledged at once
AT_STEP = ("set", "freeze", "checkpoint")  # applied between optimizer steps, acknowledged then


@dataclass
class Live:
    """Hyperparameters that may change while the run trains (config fields with a `live` rule)."""

    lr: float
    weight_decay: float
    max_grad_norm: float | None
    epochs: float
    max_steps: int | None
    eval_every: Any
    save_every: Any
    log_every: int
    frozen: set[str] = field(default_factory=set)
    layer_lr_decay: float | None = None
    group_lr: dict[str, float] | None = None
    lr_mults: dict[str, float] = field(default_factory=dict)  # per layer group, from the two above
    unfreeze_every: Any = None
    unfreeze_until: Any = None
    unfreeze_floor: set[str] = field(default_factory=set)  # groups gradual unfreezing never opens
    unfreeze_from: int = 0  # the step the unfreezing interval counts from (start, last unfreeze, user freeze)
    unfreeze_at: int | None = None  # the step of the next scheduled unfreeze; None: no schedule

    @classmethod
    def from_config(cls, cfg: FinetuneConfig, lm: LayerMap) -> Live:
        live = cls(
            cfg.lr,
            cfg.weight_decay,
            cfg.max_grad_norm,
            cfg.epochs,
            cfg.max_steps,
            cfg.eval_every,
            cfg.save_every,
            cfg.log_every,
            resolve_freeze(cfg.freeze, lm),
            layer_lr_decay=cfg.layer_lr_decay,
            group_lr=cfg.group_lr,
            unfreeze_every=cfg.unfreeze_every,
            unfreeze_until=cfg.unfreeze_until,
        )
        live.lr_mults = lr_multipliers(lm, live.layer_lr_decay, live.group_lr)  # unknown group names: ConfigError
        live.unfreeze_floor = resolve_freeze(cfg.unfreeze_until, lm)
        return live

    def total_steps(self, steps_per_epoch: int) -> int:
        """The planned number of optimizer steps (changes when `epochs` or `max_steps` is set live)."""
        return self.max_steps if self.max_steps is not None else math.ceil(self.epochs * steps_per_epoch)

    def plan_unfreeze(self, steps_per_epoch: int) -> None:
        """Recompute `unfreeze_at` from `unfreeze_every` and `unfreeze_from`."""
        iv = parse_interval(self.unfreeze_every)
        if iv is None:
            self.unfreeze_at = None
        elif iv[0] == "epoch":  # on epoch boundaries: the N-th epoch end after unfreeze_from
            self.unfreeze_at = (self.unfreeze_from // steps_per_epoch + int(iv[1])) * steps_per_epoch
        else:
            self.unfreeze_at = self.unfreeze_from + int(iv[1])

    def saved(self) -> dict[str, Any]:
        """The live values a checkpoint stores (and resume restores)."""
        return {
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "max_grad_norm": self.max_grad_norm,
            "epochs": self.epochs,
            "max_steps": self.max_steps,
            "layer_lr_decay": self.layer_lr_decay,
            "group_lr": self.group_lr,
            "unfreeze_every": self.unfreeze_every,
            "unfreeze_from": self.unfreeze_from,
        }

    def restore(self, st: dict[str, Any], cfg: FinetuneConfig, lm: LayerMap, steps_per_epoch: int) -> None:
        """The live values of a checkpoint's `state.json` (resume)."""
        saved = st.get("live", {})
        self.lr = saved.get("lr", self.lr)
        self.weight_decay = saved.get("weight_decay", self.weight_decay)
        # layer-wise lr and the unfreezing schedule: the values the run had (set live or not), unless the config
        # given for the resume changes them; checkpoints written before these existed lack them
        saved_cfg = st.get("config") or {}
        for name in ("layer_lr_decay", "group_lr", "unfreeze_every"):
            if name in saved and saved_cfg.get(name, getattr(cfg, name)) == getattr(cfg, name):
                setattr(self, name, saved[name])
        self.lr_mults = lr_multipliers(lm, self.layer_lr_decay, self.group_lr)
        # where the unfreezing schedule was (no double unfreeze after a resume)
        self.unfreeze_from = saved.get("unfreeze_from", st["step"])
        self.plan_unfreeze(steps_per_epoch)


@dataclass
class Parts:
    """What a change of the trainable set touches, kept together: `set_frozen` rebuilds or adjusts each."""

    accelerator: Any
    model: Any  # as accelerate prepared it
    optimizer: Any  # accelerate's wrapper; `.optimizer` is the torch one
    layer_map: LayerMap
    fused: bool
    frozen_eval: bool  # frozen_mode: eval
    trainable: int
    total_params: int
    cache: Any = None  # FrozenPrefixCache, or None
    flops: Any = None  # FlopModel, once built


def train_mode(parts: Parts, frozen: set[str]) -> None:
    """Training mode, with frozen groups in eval mode unless frozen_mode: train."""
    parts.model.train()
    if parts.frozen_eval:
        set_frozen_eval(parts.model, parts.layer_map, frozen)


def set_frozen(parts: Parts, live: Live, new: set[str]) -> None:
    """Change the trainable set (a `freeze` command, the unfreezing schedule, a resume), between optimizer steps."""
    if new == live.frozen:
        return
    lm = parts.layer_map
    parts.trainable, _ = apply_freeze(parts.accelerator.unwrap_model(parts.model), lm, new)
    live.frozen = new
    # rebuilt over the new trainable set; parameters that stay trainable keep their state, lr_mult from live
    parts.optimizer = rebuild_optimizer(parts.accelerator, parts.model, lm, live, parts.fused, parts.optimizer)
    if parts.cache is not None:
        parts.cache.set_depth(prefix_depth(lm, live.frozen))
    if parts.flops is not None:
        parts.flops.update(live.frozen, parts.cache.depth if parts.cache is not None else 0)
    train_mode(parts, live.frozen)


def scheduled_unfreeze(parts: Parts, live: Live, step: int, steps_per_epoch: int) -> ControlApplied | None:
    """Gradual unfreezing: the top-most frozen group above the floor becomes trainable. The event, or None."""
    lm = parts.layer_map
    new = next_unfreeze(lm, live.frozen, live.unfreeze_floor)
    live.unfreeze_from = step
    live.plan_unfreeze(steps_per_epoch)
    if new is None:  # nothing left above the floor; a later `freeze` command gives the schedule work again
        return None
    opened = ", ".join(g for g in lm.names if g in live.frozen and g not in new)
    before = frozen_list(lm, live.frozen)
    set_frozen(parts, live, new)
    more = next_unfreeze(lm, live.frozen, live.unfreeze_floor) is not None
    after = f"; next at step {live.unfreeze_at}" if more else "; nothing left to unfreeze"
    return ControlApplied(
        step=step,
        command="freeze",
        args={"spec": sorted(live.frozen)},
        seq=0,
        source="schedule",
        message=f"gradual unfreezing: {opened} trainable "
        f"(trainable {parts.trainable:,} of {parts.total_params:,}{after})",
        previous={"spec": before},
    )


def nothing_to_unfreeze(live: Live, lm: LayerMap, step: int) -> ControlApplied | None:
    """At start: the refusal event when `unfreeze_every` is set but nothing above the floor is frozen."""
    if live.unfreeze_at is None or next_unfreeze(lm, live.frozen, live.unfreeze_floor) is not None:
        return None
    note = "unfreeze_every is set but nothing is frozen" + (" above unfreeze_until" if live.unfreeze_floor else "")
    log.warning("gradual unfreezing: %s", note)
    return ControlApplied(
        step=step,
        command="freeze",
        args={"spec": sorted(live.frozen)},
        seq=0,
        source="schedule",
        ok=False,
        message=f"gradual unfreezing: {note}, so it has nothing to do. "
        "Freeze layers to unfreeze gradually, e.g. `freeze: all_but_head`.",
    )


def apply_set(values: dict[str, Any], live: Live, optimizer, step: int, steps_per_epoch: int, lm: LayerMap) -> str:
    """Apply `set` values with the schema's live rules. Raises FinetuneError for a value it refuses."""
    allowed = live_fields()
    changes = []
    for key, value in values.items():
        name = canonical_name(key)
        if name == "freeze" or name not in allowed:
            raise FinetuneError(
                f"'{name}' cannot change during a run; live fields: {', '.join(k for k in allowed if k != 'freeze')}"
            )
        checked = check_live_value(name, value)  # type and range checks from the schema: ConfigError, a refusal
        if name in ("layer_lr_decay", "group_lr"):
            decay = checked if name == "layer_lr_decay" else live.layer_lr_decay
            group_lr = checked if name == "group_lr" else live.group_lr
            mults = lr_multipliers(lm, decay, group_lr)  # unknown group names: ConfigError, the command is refused
            live.layer_lr_decay, live.group_lr, live.lr_mults = decay, group_lr, mults
            for g in optimizer.param_groups:  # the next optimizer step uses lr x lr_mult x schedule factor
                g["lr_mult"] = mults.get(g["group"], 1.0)
        elif name == "unfreeze_every":
            if live.unfreeze_at is None:  # turned on now: the first interval starts now
                live.unfreeze_from = step
            live.unfreeze_every = checked
            live.plan_unfreeze(steps_per_epoch)
        elif name == "lr":
            live.lr = float(value)
        elif name == "weight_decay":
            live.weight_decay = float(value)
            for g in optimizer.param_groups:
                if g.get("decay"):
                    g["weight_decay"] = live.weight_decay
        elif name == "max_grad_norm":
            live.max_grad_norm = None if value is None else float(value)
        elif name == "epochs":
            if math.ceil(float(value) * steps_per_epoch) < step and live.max_steps is None:
                raise FinetuneError(f"epochs: {value} would end before the current step {step}")
            live.epochs = float(value)
        elif name == "max_steps":
            if value is not None and int(value) < step:
                raise FinetuneError(f"max_steps: {value} is below the current step {step}")
            live.max_steps = None if value is None else int(value)
        elif name in ("eval_every", "save_every"):
            parse_interval(value)
            setattr(live, name, value)
        elif name == "log_every":
            live.log_every = int(value)
        changes.append(f"{name}={value}")
    return ", ".join(changes)


def frozen_list(lm: LayerMap, frozen: set[str]) -> list[str]:
    """Frozen group names in layer-map order (embeddings first)."""
    return [g for g in lm.names if g in frozen]


def values_before(cmd: Command, live: Live, lm: LayerMap) -> dict[str, Any]:
    """What a `set` or `freeze` is about to change, as it is now (`ControlApplied.previous`)."""
    if cmd.kind == "freeze":
        return {"spec": frozen_list(lm, live.frozen)}
    out = {}
    for key in cmd.args:
        try:
            name = canonical_name(key)
        except (FinetuneError, KeyError, ValueError):
            continue  # an unknown key: the command is refused, naming it
        if name != "freeze" and hasattr(live, name):
            out[key] = getattr(live, name)
    return out


def apply_command(
    cmd: Command, parts: Parts, live: Live, step: int, steps_per_epoch: int
) -> tuple[bool, str, dict[str, Any]]:
    """Apply a `set` or `freeze` command between optimizer steps: (ok, message, the values before) for its
    acknowledgement."""
    before = values_before(cmd, live, parts.layer_map)
    ok, message = _apply(cmd, parts, live, step, steps_per_epoch)
    return ok, message, before


def _apply(cmd: Command, parts: Parts, live: Live, step: int, steps_per_epoch: int) -> tuple[bool, str]:
    try:
        if cmd.kind == "freeze":
            set_frozen(parts, live, resolve_freeze(cmd.args.get("spec"), parts.layer_map))
            # the unfreezing schedule goes on from the new frozen set, a full interval from now
            live.unfreeze_from = step
            live.plan_unfreeze(steps_per_epoch)
            return True, f"trainable {parts.trainable:,} of {parts.total_params:,}"
        return True, apply_set(cmd.args, live, parts.optimizer, step, steps_per_epoch, parts.layer_map)
    except FinetuneError as e:
        return False, str(e)


class CommandDesk:
    """Where the loop takes its commands: `Controls` plus the run's control.jsonl, every command acknowledged
    (a `ControlApplied` event) in the order it came, once it took effect or was refused."""

    POLL_S = 0.2  # control.jsonl is read at most this often (a stat and a small read)

    def __init__(self, controls: Controls, run_dir: RunDir, emit):
        self.controls = controls
        self.emit = emit
        self.file = ControlFileReader(run_dir.path, start_after_seq=int(run_dir.status().get("last_command") or 0))
        self.pending: list[Command] = []
        self.last_poll = 0.0

    def poll(self, step: int) -> None:
        """Read control.jsonl when it is due (called at every micro-batch)."""
        now = time.monotonic()
        if now - self.last_poll > self.POLL_S:
            self.last_poll = now
            self.poll_file(step)

    def poll_file(self, step: int) -> None:
        """New commands from control.jsonl go into `Controls`; a malformed one is refused here."""
        for rec in self.file.poll():
            try:
                # "file:<who wrote it>" (cli, magic, server = the sidebar): acknowledged in status.json as "file"
                source = f"file:{rec['source']}" if rec.get("source") else "file"
                self.controls.send(rec["cmd"], source=source, seq=int(rec["seq"]), **(rec.get("args") or {}))
            except (ValueError, TypeError) as e:
                cmd = Command(str(rec.get("cmd")), rec.get("args") or {}, int(rec["seq"]), "file")
                self.ack(cmd, step, ok=False, message=str(e))

    def due(self, step: int, at_step: bool = True):
        """Acknowledge stop / abort / pause / resume (already in effect); yield, in order, the commands to apply
        now (`at_step`: between optimizer steps) and keep the others for the next step boundary."""
        queue, self.pending = [*self.pending, *self.controls.drain()], []
        for cmd in queue:
            if cmd.kind in IMMEDIATE:
                self.ack(cmd, step)
            elif at_step:
                yield cmd
            else:
                self.pending.append(cmd)

    def acknowledge(self, step: int) -> None:
        """Between micro-batches: acknowledge what is in effect, keep the rest."""
        for _ in self.due(step, at_step=False):
            pass

    def refuse_pending(self, step: int, message: str) -> None:
        for cmd in self.pending:
            self.ack(cmd, step, ok=False, message=message)
        self.pending.clear()

    def ack(self, cmd: Command, step: int, ok: bool = True, message: str = "", previous: dict | None = None) -> None:
        self.emit(
            ControlApplied(
                step=step,
                command=cmd.kind,
                args=cmd.args,
                seq=cmd.seq,
                source=cmd.source,
                ok=ok,
                message=message,
                previous=dict(previous or {}),
            )
        )
