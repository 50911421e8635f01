"""Run-level pre-flight: what no single config key or task can check alone, on the calling thread before anything
starts (the task's own `preflight()` has already resolved the model, the data and the labels).

Each check raises a `FinetuneError` that names the key, the numbers and the fix.
"""

from __future__ import annotations

import math

from ..errors import ConfigError
from .config import FinetuneConfig
from .runs import check_output_dir

__all__ = ["check_run", "check_resume", "planned_steps", "out_of_memory_message"]


def planned_steps(cfg: FinetuneConfig, num_train: int) -> tuple[int, int]:
    """(optimizer steps per epoch, planned optimizer steps) for `num_train` training examples."""
    spe = math.ceil(math.ceil(num_train / cfg.batch_size) / cfg.grad_accum)
    return spe, cfg.max_steps if cfg.max_steps is not None else math.ceil(cfg.epochs * spe)


def check_run(cfg: FinetuneConfig, task) -> None:
    """Every cross-cutting mistake of `cfg` for this (pre-flighted) task, or nothing."""
    from .train.device import check_device

    check_output_dir(cfg.output_dir)
    check_device(cfg.device)
    _check_metrics(cfg, task)
    _check_warmup(cfg, task)
    _check_trainable(cfg, task)


def _check_metrics(cfg: FinetuneConfig, task) -> None:
    names = task.metric_names()
    if not names:
        return
    asked = [("metric_for_best", cfg.metric_for_best)]
    if cfg.early_stopping is not None:
        asked.append(("early_stopping.metric", cfg.early_stopping.metric))
    for key, metric in asked:
        full = metric if metric.startswith("eval_") else f"eval_{metric}"  # `mae` means eval_mae (flow.Best)
        if full in names:
            continue
        import difflib

        close = difflib.get_close_matches(full, names, n=1, cutoff=0.6)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            f"Invalid finetune config: {key}: task {task.name} never reports '{metric}'; it reports "
            f"{', '.join(names)}.{hint}"
        )


def _check_warmup(cfg: FinetuneConfig, task) -> None:
    if cfg.warmup < 1 or not task.num_train:
        return
    _, total = planned_steps(cfg, task.num_train)
    if cfg.warmup > total:
        raise ConfigError(
            f"Invalid finetune config: warmup: {cfg.warmup:g} steps, but the run has only {total} optimizer steps "
            f"({task.num_train} examples, batch_size {cfg.batch_size} x grad_accum {cfg.grad_accum}); the learning "
            f"rate would never reach lr. Use fewer steps or a fraction (warmup: 0.1)"
        )


def _check_trainable(cfg: FinetuneConfig, task) -> None:
    """`freeze: all` (or a list naming every group) leaves nothing to train: refuse before building anything real."""
    if cfg.freeze is None or cfg.freeze is False or cfg.unfreeze_every is not None:
        return  # gradual unfreezing starts from a frozen model on purpose
    from .freezing import resolve_freeze

    model = task.build_model(meta=True)
    lm = task.layer_map(model)
    frozen = resolve_freeze(cfg.freeze, lm)
    owner = lm.group_of_param()
    if any(p.requires_grad and owner.get(n) not in frozen for n, p in model.named_parameters()):
        return
    raise ConfigError(
        f"Invalid finetune config: freeze: {cfg.freeze!r} freezes every layer group "
        f"({', '.join(g.name for g in lm.groups[:6])}{' ...' if len(lm.groups) > 6 else ''}): nothing would train. "
        "Use `all_but_head` (train the head only), `bottom 8`, or add `unfreeze_every` for gradual unfreezing"
    )


def check_resume(checkpoint, cfg: FinetuneConfig, task) -> None:
    """`resume_from` a checkpoint of another task or another model is refused before anything starts: the
    checkpoint's task and its weights' names and shapes (read from the safetensors header, no weights loaded) must
    be this run's."""
    import json
    from pathlib import Path

    from safetensors import safe_open

    from ..errors import CheckpointError

    path = Path(checkpoint)
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        state = {}
    saved = state.get("config") or {}
    their = state.get("task") or saved.get("task")
    if their and their != "auto" and their != task.name:
        raise CheckpointError(
            f"resume_from: checkpoint {path.name} is of task {their}, this run is {task.name}; resume a checkpoint of "
            "this task, or start fresh (no resume_from)"
        )
    model = task.build_model(meta=True)
    want = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        have = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    shared = [k for k in want if k in have]
    wrong = [k for k in shared if want[k] != have[k]]
    extra = [k for k in have if k not in want]  # (names missing there may be tied weights, saved once)
    if len(shared) < len(want) // 2 or wrong or extra:
        if wrong:
            detail = f"{wrong[0]} is {list(have[wrong[0]])} there but {list(want[wrong[0]])} here"
        elif extra:
            detail = f"it holds {len(extra)} tensors this model lacks ({extra[0]}, ...)"
        else:
            detail = f"only {len(shared)} of this model's {len(want)} tensors are in it"
        was = f" (it was trained from {saved['model']!r})" if isinstance(saved.get("model"), str) else ""
        raise CheckpointError(
            f"resume_from: checkpoint {path.name} is of another model{was}: {detail}. Use the same model and labels "
            "as the run that wrote it, or start fresh"
        )


def out_of_memory_message(cfg: FinetuneConfig, e: BaseException) -> str | None:
    """The message for an out-of-memory error (CUDA, MPS or the host), or None when `e` is not one."""
    text = str(e)
    if type(e).__name__ != "OutOfMemoryError" and "out of memory" not in text.lower():
        return None
    return (
        f"out of memory at batch_size {cfg.batch_size} (max_length {cfg.max_length or 'auto'}, precision "
        f"{cfg.precision.value}): lower batch_size and raise grad_accum to keep the effective batch, set a shorter "
        "max_length, freeze more layers, or use precision: bf16. The last checkpoint (if any) is intact: "
        f"resume_from: last. ({text.splitlines()[0][:160] if text else type(e).__name__})"
    )
