"""nb_finetune: fine-tune pretrained models from a `%%finetune` notebook cell, and steer the run while it trains.

%load_ext nb_finetune            # in a notebook
from nb_finetune import finetune # from Python
"""

from .api import DryRunReport, Run, finetune, get_run
from .core.config import FinetuneConfig
from .errors import ConfigError, DataError, FinetuneError, ModelError, RunStateError

__version__ = "0.1.0.dev0"
__all__ = [
    "finetune",
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


def load_ipython_extension(ipython):
    """`%load_ext nb_finetune` registers the `%%finetune` / `%finetune` magics."""
    from .magics import load_ipython_extension as _load

    _load(ipython)


def unload_ipython_extension(ipython):
    from .magics import unload_ipython_extension as _unload

    _unload(ipython)
