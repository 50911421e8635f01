"""The training loop: one flat function, `train`, on Hugging Face Accelerate.

Reading order: set-up (accelerator, freezing, optimizer, resume, cache) -> epochs -> micro-batches -> optimizer
step -> log / command / eval / checkpoint points -> finish. Commands arrive through `Controls`: stop, abort and
pause are honoured at every micro-batch; everything else is applied between optimizer steps. The rooms beside
this file hold the pieces: checkpoints.py, optim.py, live.py (commands), flow.py (what is due), device.py,
masks.py, evaluate.py, logs.py. The loop knows its task only through the `Task` interface (core/tasks/base.py).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..batch_size import BatchPlan, evaluate_shrinking, is_oom, oom_error
from ..cache import setup_cache
from ..config import FinetuneConfig
from ..events import CheckpointSaved, ControlApplied, Controls, EvalEnded, RunStarted, StepEnded
from ..flops import FlopModel, peak_flops
from ..freezing import LayerMap, apply_freeze
from ..runs import RunDir
from ..tasks.base import HOST_KEYS, Examples
from . import cpu_memory
from .checkpoints import (
    load_checkpoint,
    prune,
    restore_optimizer,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_best,
)
from .device import (
    device_name,
    device_type,
    keep_thread_count,
    make_accelerator,
    memory_mb,
    precision_of,
    resolve_precision,
)
from .evaluate import evaluate
from .flow import Best, Meter, due, eval_due
from .live import (
    CommandDesk,
    Live,
    Parts,
    apply_command,
    nothing_to_unfreeze,
    scheduled_unfreeze,
    set_frozen,
    train_mode,
)
from .logs import Emitter
from .masks import mask_inputs, probe_4d_mask
from .nonfinite import NonFiniteGuard
from .optim import build_optimizer, lr_factor, set_lrs, warmup_steps

__all__ = ["Job", "RunResult", "train"]


@dataclass
class Job:
    """Everything the loop needs, built before it starts (see api.py)."""

    config: FinetuneConfig
    task: Any  # a core.tasks.base.Task
    model: Any
    train_data: Examples
    eval_data: Examples | None
    layer_map: LayerMap
    run_dir: RunDir
    resume_checkpoint: Path | None = None
    plan: BatchPlan | None = None  # set by the loop: the micro-batches it runs (checkpoints record it)


@dataclass
class RunResult:
    state: str
    reason: str
    step: int
    best_metric: float | None = None
    best_checkpoint: str | None = None
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)  # setup_s, loop_s, finish_s and their *_cpu_s


@dataclass
class Position:
    """Where the run is: `step` optimizer steps done; the next micro-batch is batch `batch` of epoch `epoch`."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    samples: int = 0  # examples seen, counted on the host
    tokens: int = 0  # real (non-pad) tokens seen, from the host lengths
    last_ckpt: int = -1  # the step of the last checkpoint written

    def after(self, n_batches: int) -> tuple[int, int]:
        """(epoch, batch) a resume starts from after the current step."""
        return (self.epoch + 1, 0) if self.batch >= n_batches else (self.epoch, self.batch)


@dataclass
class Cycle:
    """One gradient-accumulation cycle: where it started (a stop goes back there, with the RNG of then)."""

    start: int
    length: int
    rng: dict = field(default_factory=rng_state)
    samples: int = 0  # Position.samples / tokens when the cycle started (an out-of-memory goes back there)
    tokens: int = 0
    micro: int = 0
    loss: Any = None  # device tensor: the sum of the micro-batch losses / length


def train(job: Job, controls: Controls, callbacks=()) -> RunResult:
    """Train `job.model` on `job.train_data`; emits events to `callbacks`; steered by `controls`."""
    import torch
    from torch.utils.data import DataLoader

    cfg, task, lm, rd = job.config, job.task, job.layer_map, job.run_dir
    t_setup, c_setup = time.perf_counter(), time.process_time()
    emit = Emitter(callbacks)

    # ---------------------------------------------------------------- set-up
    keep_thread_count()  # this is the worker thread: the notebook's torch.set_num_threads holds here too
    accelerator = make_accelerator(resolve_precision(cfg.precision.value, device_type(cfg.device)), cfg.device)
    device, precision = accelerator.device, precision_of(accelerator)
    live = Live.from_config(cfg, lm)
    model = job.model.to(device)
    trainable, total_params = apply_freeze(model, lm, live.frozen)
    group_by_length = cfg.group_by_length and task.capabilities.length_grouping
    plan = job.plan = BatchPlan.from_config(cfg)  # micro-batches and accumulation (an out-of-memory may shrink them)
    n_batches = plan.count(job.train_data.lengths, cfg.seed, group_by_length)
    spe = math.ceil(n_batches / plan.grad_accum)  # optimizer steps per epoch
    live.plan_unfreeze(spe)
    fused = device.type in ("cuda", "cpu")
    model, optimizer = accelerator.prepare(model, build_optimizer(model, lm, live, fused))
    parts = Parts(accelerator, model, optimizer, lm, fused, cfg.frozen_mode.value == "eval", trainable, total_params)
    unwrapped = accelerator.unwrap_model(model)
    guard = NonFiniteGuard.for_run(cfg.on_nonfinite.value, device, fused, accelerator.scaler)
    collate = task.collator()
    best = Best.for_run(cfg, task)
    pos = Position()
    if job.resume_checkpoint is not None:
        pos, plan = _resume(job.resume_checkpoint, parts, live, best, cfg, spe, device)
        job.plan = plan
        n_batches = plan.count(job.train_data.lengths, cfg.seed, group_by_length)
    else:
        torch.manual_seed(cfg.seed)  # dropout stream; the data order has its own generator
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)  # what a model or collator drawing from numpy's global generator reads

    mask_4d = probe_4d_mask(model, job.train_data, collate, device) if task.capabilities.mask_4d else None
    param_dtype = next(unwrapped.parameters()).dtype
    parts.cache, cache_note = _prefix_cache(job, parts, live, spe, collate, device, precision)
    # torch.compile for the training forward only (evaluation keeps the eager module: no recompiles for eval mode)
    train_forward = torch.compile(model, dynamic=True) if cfg.compile else model
    parts.flops = FlopModel(unwrapped, lm)
    parts.flops.update(live.frozen, parts.cache.depth if parts.cache is not None else 0)
    peak = peak_flops(device_name(device), precision) if device.type == "cuda" else None
    emit(_run_started(job, parts, live, spe, pos, device, precision, cache_note))
    if job.resume_checkpoint is None and (refusal := nothing_to_unfreeze(live, lm, pos.step)) is not None:
        emit(refusal)
    desk = CommandDesk(controls, rd, emit)

    # freed CPU memory stays in the process while it trains (no fresh pages per step); see cpu_memory.py
    kept_memory = cpu_memory.hold(cfg.keep_cpu_memory, device.type)
    try:
        # ---------------------------------------------------------------- epochs
        train_mode(parts, live.frozen)
        if cfg.eval_at_start and job.eval_data is not None and pos.step == 0:
            metrics, extras = _evaluate(job, parts, live, device, mask_4d)
            emit(EvalEnded(step=0, epoch=0.0, metrics=metrics, extras=extras))

        state, reason, done = "finished", "completed", False
        meter = Meter(device, pos.samples, pos.tokens)
        t_start = t_last_step = time.perf_counter()
        c_start = c_last_step = time.process_time()
        first_step_s = None
        last_save_time = time.monotonic()
        data_gen = torch.Generator()

        while not done and pos.step < live.total_steps(spe):
            batches = plan.batches(job.train_data.lengths, cfg.seed, pos.epoch, group_by_length)
            data_gen.manual_seed(cfg.seed + pos.epoch)  # DataLoader draws its base seed here, not the dropout stream
            loader = DataLoader(
                job.train_data,
                batch_sampler=batches[pos.batch :],
                collate_fn=collate,
                num_workers=cfg.num_workers,
                pin_memory=device.type == "cuda",
                generator=data_gen,
            )
            cycle = Cycle(
                pos.batch, min(plan.grad_accum, n_batches - pos.batch), samples=pos.samples, tokens=pos.tokens
            )
            for b_idx, batch in enumerate(loader, start=pos.batch):
                # ---- stop / pause: honoured at every micro-batch
                desk.poll(pos.step)
                if controls.paused and not controls.stop_requested:
                    desk.acknowledge(pos.step)
                    controls.wait_if_paused(poll=partial(desk.poll_file, pos.step))
                    desk.acknowledge(pos.step)
                if controls.stop_requested:
                    # a stop mid-accumulation discards the partial gradient; the checkpoint is the last optimizer step
                    parts.optimizer.zero_grad(set_to_none=True)
                    desk.acknowledge(pos.step)
                    desk.refuse_pending(pos.step, "not applied: the run stopped first")
                    aborted = controls.abort_event.is_set()
                    state, reason, done = "stopped", "abort" if aborted else controls.stop_reason, True
                    if not aborted and controls.stop_save and pos.last_ckpt != pos.step:
                        emit(_checkpoint("stop", job, parts, live, best, pos, pos.epoch, cycle.start, cycle.rng))
                    break

                # ---- forward / backward
                host = {k: batch.pop(k) for k in HOST_KEYS if k in batch}
                lens = host["lengths"]
                n_tok = host.get("num_tokens", sum(lens))
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                width = max(lens)  # the padded width, known on the host
                served = 0
                if parts.cache is not None:  # replay the frozen prefix from the cache, or capture it
                    served = parts.cache.prepare(host["idx"], lens, width, device, param_dtype)
                meter.batch(parts.flops.per_batch(n_tok, width, len(lens), served), width * len(lens))
                try:
                    loss, _ = task.forward(train_forward, mask_inputs(batch, lens, mask_4d))
                    if parts.cache is not None:
                        parts.cache.done()
                    loss = loss / cycle.length
                    accelerator.backward(loss)
                except Exception as e:
                    if not is_oom(e):
                        raise
                    batch = loss = None  # free what the failed micro-batch holds before anything else
                    n_batches = _shrink_after_oom(job, parts, live, best, pos, cycle, plan, emit, group_by_length)
                    break  # the epoch goes on from the failed cycle's first example, in smaller micro-batches
                cycle.loss = loss.detach() if cycle.loss is None else cycle.loss + loss.detach()
                cycle.micro += 1
                pos.samples += len(lens)
                pos.tokens += n_tok
                if cycle.micro < cycle.length:
                    continue

                # ---- optimizer step (no host sync: nothing below reads a device value)
                total = live.total_steps(spe)
                base_lr = live.lr * lr_factor(pos.step, total, warmup_steps(cfg.warmup, total), cfg.scheduler.value)
                set_lrs(parts.optimizer, base_lr)  # what events report as `lr`; each group: base_lr x lr_mult
                norm = None
                if live.max_grad_norm is not None:
                    norm = accelerator.clip_grad_norm_(model.parameters(), live.max_grad_norm)
                if guard.before_step(
                    cycle.loss, parts.optimizer.optimizer, pos.step + 1, pos.epoch, cycle.start, b_idx
                ):
                    parts.optimizer.step()
                parts.optimizer.zero_grad(set_to_none=True)
                pos.step, pos.batch = pos.step + 1, b_idx + 1
                t_last_step, c_last_step = time.perf_counter(), time.process_time()
                if first_step_s is None:
                    first_step_s = t_last_step - t_start
                meter.step(cycle.loss, norm)
                cur_epoch = pos.epoch + pos.batch / n_batches
                elapsed = t_last_step - t_start
                emit(StepEnded(pos.step, cur_epoch, total, pos.samples, pos.tokens, elapsed, lr=base_lr))

                # ---- log point: the one place device values are read (one transfer for all of them)
                epoch_end = pos.batch >= n_batches
                if pos.step % live.log_every == 0 or pos.step >= live.total_steps(spe) or epoch_end:
                    mem = memory_mb(device)
                    logged = meter.log(
                        pos.step,
                        cur_epoch,
                        pos.samples,
                        pos.tokens,
                        base_lr,
                        parts.optimizer,
                        mem,
                        peak,
                        guard.to_read,
                    )
                    logged.unreadable = _unreadable(job)
                    emit(logged)
                    # on_nonfinite: stop ends the run here, naming the step (read in the log's one transfer)
                    guard.check(rd.checkpoints(), meter.extra_read)

                # ---- commands that change the run, then the unfreezing schedule: between optimizer steps
                for cmd in desk.due(pos.step):
                    if cmd.kind == "checkpoint":
                        emit(_checkpoint("manual", job, parts, live, best, pos, *pos.after(n_batches)))
                        desk.ack(cmd, pos.step)
                    else:
                        desk.ack(cmd, pos.step, *apply_command(cmd, parts, live, pos.step, spe))
                if live.unfreeze_at is not None and live.unfreeze_at <= pos.step < live.total_steps(spe):
                    if (event := scheduled_unfreeze(parts, live, pos.step, spe)) is not None:
                        emit(event)

                # ---- eval / checkpoint / early stopping
                new_best = False
                has_eval = job.eval_data is not None
                if eval_due(live.eval_every, has_eval, pos.step, epoch_end, pos.epoch + 1, live.total_steps(spe)):
                    t0 = time.perf_counter()
                    metrics, extras = _evaluate(job, parts, live, device, mask_4d)
                    meter.pause(time.perf_counter() - t0)  # throughput counts training time only
                    new_best = best.update(metrics, pos.step)
                    emit(EvalEnded(pos.step, cur_epoch, metrics, is_best=new_best, extras=extras))
                since = time.monotonic() - last_save_time
                if due(live.save_every, pos.step, epoch_end, since, pos.epoch + 1) or (
                    new_best and cfg.early_stopping is not None
                ):
                    why = "epoch" if epoch_end and live.save_every == "epoch" else "interval"
                    guard.check(rd.checkpoints())  # never checkpoint past a non-finite step
                    emit(_checkpoint(why, job, parts, live, best, pos, *pos.after(n_batches)))
                    last_save_time = time.monotonic()
                elif new_best and pos.last_ckpt == pos.step:
                    write_best(rd, f"step-{pos.step:06d}", best.metric, best.value)
                if best.stop_early:
                    reason, done = "early_stopping", True
                    break
                if pos.step >= live.total_steps(spe):
                    break
                cycle = Cycle(
                    pos.batch, min(plan.grad_accum, n_batches - pos.batch), samples=pos.samples, tokens=pos.tokens
                )
            if not done and pos.batch >= n_batches:
                pos.epoch, pos.batch = pos.epoch + 1, 0

        # ---------------------------------------------------------------- finish
        if reason == "early_stopping":
            best_ck = rd.best_checkpoint()
            if best_ck is not None:
                load_checkpoint(best_ck, unwrapped, device)
        elif state == "finished" and pos.last_ckpt != pos.step:
            emit(_checkpoint("final", job, parts, live, best, pos, *pos.after(n_batches)))
        model.eval()
        best_ck = rd.best_checkpoint()
        timings = {
            "first_step_s": first_step_s or 0.0,  # includes compilation with compile: true
            "setup_s": t_start - t_setup,
            "setup_cpu_s": c_start - c_setup,
            "loop_s": t_last_step - t_start,
            "loop_cpu_s": c_last_step - c_start,
            "finish_s": time.perf_counter() - t_last_step,
            "finish_cpu_s": time.process_time() - c_last_step,
        }
        return RunResult(state, reason, pos.step, best.value, str(best_ck) if best_ck else None, timings=timings)
    finally:
        cpu_memory.release(kept_memory)
        guard.release(parts.optimizer.optimizer)
        if parts.cache is not None:
            parts.cache.remove()  # the user's model gets its own forward methods back


# --------------------------------------------------------------------------------------------- helpers
def _unreadable(job: Job) -> int:
    """Examples left out so far because their file failed to decode when read (DataLoader workers count them too)."""
    return job.train_data.num_unreadable + (job.eval_data.num_unreadable if job.eval_data is not None else 0)


def _evaluate(job: Job, parts: Parts, live: Live, device, mask_4d):
    """Evaluate on the eval data (an out-of-memory halves the eval batch), then back to training mode."""
    metrics, extras = evaluate_shrinking(evaluate, parts.model, job.eval_data, job.task, job.config, device, mask_4d)
    train_mode(parts, live.frozen)
    return metrics, extras


def _shrink_after_oom(
    job: Job, parts: Parts, live: Live, best: Best, pos: Position, cycle: Cycle, plan, emit, grouped
):
    """Out of memory in a micro-batch: with `batch_size: auto`, checkpoint the last optimizer step, halve the
    micro-batch, double the accumulation and rewind to the failed cycle's start; else a short error. Returns the
    new number of micro-batches per epoch."""
    parts.optimizer.zero_grad(set_to_none=True)
    if not job.config.batch_size_auto or plan.micro <= 1:
        raise oom_error(job.config, plan.micro) from None
    if pos.last_ckpt != pos.step:
        emit(_checkpoint("oom", job, parts, live, best, pos, pos.epoch, cycle.start, cycle.rng))
    old = (plan.micro, plan.grad_accum)
    lengths, seed = job.train_data.lengths, job.config.seed
    pos.batch = plan.shrink_at(lengths, seed, pos.epoch, grouped, cycle.start)
    pos.samples, pos.tokens = cycle.samples, cycle.tokens
    set_rng_state(cycle.rng)
    emit(
        ControlApplied(
            step=pos.step,
            command="set",
            args={"batch_size": plan.micro, "grad_accum": plan.grad_accum},
            seq=0,
            source="oom",
            message=f"out of memory at batch_size {old[0]} x grad_accum {old[1]}: going on with "
            f"{plan.micro} x {plan.grad_accum} (same examples per step)",
        )
    )
    return plan.count(lengths, seed, grouped)


def _checkpoint(
    reason: str,
    job: Job,
    parts: Parts,
    live: Live,
    best: Best,
    pos: Position,
    epoch: int,
    batch: int,
    rng=None,
) -> CheckpointSaved:
    """Write a checkpoint of the current step that resumes at (epoch, batch); the event to emit."""
    state = {
        "step": pos.step,
        "epoch": epoch,
        "batch": batch,
        "samples": pos.samples,
        "tokens": pos.tokens,
        "frozen": sorted(live.frozen),
        "best_metric": best.value,
        "best_step": best.step,
        "live": live.saved(),
        "batch_plan": job.plan.saved() if job.plan is not None else None,
        "task": job.task.name,  # resume_from checks it (core/preflight.py)
    }
    rd, model = job.run_dir, parts.accelerator.unwrap_model(parts.model)
    path = save_checkpoint(rd, model, parts.optimizer.optimizer, state, rng or rng_state(), job.config)
    pos.last_ckpt = pos.step
    if best.step == pos.step:
        write_best(rd, path.name, best.metric, best.value)
    prune(rd, job.config.save_total_limit)
    return CheckpointSaved(step=pos.step, path=str(path), reason=reason)


def _resume(path: Path, parts: Parts, live: Live, best: Best, cfg: FinetuneConfig, spe: int, device):
    """Weights, trainable set, optimizer state, live values, best metric and RNG of a checkpoint."""
    st, opt_tensors, rng = load_checkpoint(path, parts.accelerator.unwrap_model(parts.model), device)
    set_frozen(parts, live, set(st.get("frozen", [])))
    restore_optimizer(parts.optimizer.optimizer, opt_tensors, st.get("optimizer_scalars", {}))
    best.value, best.step = st.get("best_metric"), st.get("best_step")
    live.restore(st, cfg, parts.layer_map, spe)
    for g in parts.optimizer.param_groups:
        g["lr_mult"] = live.lr_mults.get(g["group"], 1.0)
    set_rng_state(rng)
    step = st["step"]
    pos = Position(step, st["epoch"], st["batch"], st.get("samples", 0), st.get("tokens", 0), last_ckpt=step)
    return pos, BatchPlan.restore(st.get("batch_plan"), cfg)


def _prefix_cache(job: Job, parts: Parts, live: Live, spe: int, collate, device, precision: str):
    """The frozen-prefix cache (installed) and its RunStarted note, where the task says a frozen prefix is exact."""
    task = job.task
    if not task.capabilities.prefix_cache:
        return None, f"off (task {task.name}: a frozen prefix is not exact to cache)"
    unfreeze_epochs = None if live.unfreeze_at is None else (live.unfreeze_at - live.unfreeze_from) / spe
    return setup_cache(
        job.config,
        parts.accelerator.unwrap_model(parts.model),
        parts.layer_map,
        live.frozen,
        job.train_data,
        collate,
        device,
        precision,
        live.total_steps(spe) / spe,
        spill_dir=job.run_dir.path / "cache",
        unfreeze_epochs=unfreeze_epochs,
    )


def _run_started(
    job: Job, parts: Parts, live: Live, spe: int, pos: Position, device, precision: str, cache_note: str
) -> RunStarted:
    task, rd = job.task, job.run_dir
    return RunStarted(
        name=rd.name,
        run_dir=str(rd.path),
        total_steps=live.total_steps(spe),
        steps_per_epoch=spe,
        num_train=len(job.train_data),
        num_eval=len(job.eval_data) if job.eval_data else 0,
        device=device_name(device),
        precision=precision,
        params_total=parts.total_params,
        params_trainable=parts.trainable,
        layers=parts.layer_map.table(live.frozen),
        start_step=pos.step,
        cache=cache_note,
        task=task.name,
        task_title=task.title,
        task_detail=task.describe(),
        throughput_unit=task.capabilities.throughput_unit,
    )
