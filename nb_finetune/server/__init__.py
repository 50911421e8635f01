"""jupyter_server extension: the runs sidebar's REST API (`<base_url>nb-finetune/api/...`).

Lists the runs of the per-user run index and appends numbered commands to a run's `control.jsonl`, so a run can
be stopped or paused while the kernel that started it is busy. The contract is in `handlers.py`'s docstring.

Importing this package (and everything it imports) never imports torch, transformers or IPython: the server
process stays light. Enabled as `nb_finetune` (`jupyter server extension enable nb_finetune`), whose
`_jupyter_server_extension_points` points here.
"""

from __future__ import annotations

__all__ = ["_jupyter_server_extension_points", "_load_jupyter_server_extension"]


def _jupyter_server_extension_points():
    return [{"module": "nb_finetune.server"}]


def _load_jupyter_server_extension(serverapp) -> None:
    from .handlers import setup_handlers

    setup_handlers(serverapp.web_app)
    serverapp.log.info("nb_finetune: runs API at %snb-finetune/api/", serverapp.web_app.settings.get("base_url", "/"))


# jupyter_server < 2 looked for the name without the underscore
load_jupyter_server_extension = _load_jupyter_server_extension
