"""The experiment verbs of the magic: `%%finetune lr_find NAME`, `%%finetune NAME --sweep`, `%finetune compare`,
`%finetune lr_find NAME`. Each parses nothing itself and calls the API."""

from __future__ import annotations

from .. import api
from ..errors import FinetuneError

__all__ = ["cell_lr_find", "line_lr_find", "cell_sweep", "line_compare"]


def _show_lr_find(shell, name: str, res):
    shell.user_ns[f"{name}_lr_find"] = res
    try:
        from ..ui.experiments import show_lr_find

        show_lr_find(res)
    except ImportError:  # no notebook extra: the text says it all
        print(res)
    if res.suggestion is not None:
        print(
            f"suggested lr: {res.suggestion:.2e} (valley); put `lr: {res.suggestion:.2e}` in the cell, or `lr: find`"
        )
    return None


def cell_lr_find(shell, cfg):
    """`%%finetune lr_find NAME`: the range test on the cell's model and data; the result in `NAME_lr_find`."""
    return _show_lr_find(shell, cfg.name, api.lr_find(cfg))


def line_lr_find(shell, name: str):
    """`%finetune lr_find NAME`: the range test for a run of this kernel that has not started."""
    run = api.get_run(name)
    if run.started:
        raise FinetuneError(
            f"%finetune lr_find {name}: the run has started; run the range test before it does "
            f"(%%finetune {name} --paused, then %finetune lr_find {name}), or use `lr: find` in the cell"
        )
    res = api.lr_find(run.config)
    out = _show_lr_find(shell, name, res)
    if res.suggestion is not None:
        print(f"to train with it: {name}.configure(lr={res.suggestion:.2e}).start()")
    return out


def cell_sweep(magic, cfg, args):
    """`%%finetune NAME --sweep [--wait] [--resume]`: the cell's sweep: block through Optuna."""
    from ..sweeps import sweep

    if args.resume:  # --resume continues the study; each trial starts fresh
        cfg = cfg.replace(resume_from=None)
    s = sweep(cfg, wait=False, resume=args.resume, namespace=magic.shell.user_ns)
    magic.shell.user_ns[cfg.name] = s
    try:
        from ..ui.sweep_view import SweepView

        view = SweepView(s)
        view.display(buttons=not args.wait)  # a waiting cell does not receive widget clicks
    except ImportError:
        view = None
    if args.wait:
        s.wait(pump=view.pump if view else None)
        if view:
            view.pump(final=True)
        if s.status == "failed":
            raise FinetuneError(f"sweep '{s.name}' failed: {s.error}")
    elif view:
        view.follow()
    return None


def line_compare(names: list[str]):
    """`%finetune compare a b c`."""
    from ..compare import compare

    return compare(*names)
