"""nb_finetune: fine-tune pretrained models from a `%%finetune` notebook cell, and steer the run while it trains.

%load_ext nb_finetune            # in a notebook
from nb_finetune import finetune # from Python
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported lazily (PEP 562): the server extension and the CLI must not pull in torch
    from .api import DryRunReport, Run, finetune, get_run, lr_find
    from .compare import compare, runs_table
    from .core.config import FinetuneConfig
    from .errors import ConfigError, DataError, FinetuneError, ModelError, RunStateError
    from .sweeps import sweep

_LAZY = {
    "finetune": ".api",
    "lr_find": ".api",
    "compare": ".compare",
    "runs_table": ".compare",
    "sweep": ".sweeps",
    "Run": ".api",
    "DryRunReport": ".api",
    "get_run": ".api",
    "FinetuneConfig": ".core.config",
    "FinetuneError": ".errors",
    "ConfigError": ".errors",
    "DataError": ".errors",
    "ModelError": ".errors",
    "RunStateError": ".errors",
}

__version__ = "0.1.0.dev0"
__all__ = [
    "finetune",
    "lr_find",
    "compare",
    "runs_table",
    "sweep",
    "Run",
    "DryRunReport",
    "FinetuneConfig",
    "get_run",
    "FinetuneError",
    "ConfigError",
    "DataError",
    "ModelError",
    "RunStateError",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def _jupyter_server_extension_points():
    """`jupyter server extension enable nb_finetune`: the handlers live in `nb_finetune.server` (no torch)."""
    return [{"module": "nb_finetune.server"}]


def load_ipython_extension(ipython):
    """`%load_ext nb_finetune` registers the `%%finetune` / `%finetune` magics."""
    from .magics import load_ipython_extension as _load

    _load(ipython)


def unload_ipython_extension(ipython):
    from .magics import unload_ipython_extension as _unload

    _unload(ipython)
