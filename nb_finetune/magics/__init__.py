"""IPython magics: `%%finetune` starts a run, `%finetune` steers runs. Thin: parse, resolve, delegate."""

from .finetune_magic import FinetuneMagic

__all__ = ["FinetuneMagic", "load_ipython_extension", "unload_ipython_extension"]


def load_ipython_extension(ipython):
    ipython.register_magics(FinetuneMagic(shell=ipython))
    from .completion import install

    install(ipython)  # completion of config keys and values inside `%%finetune` cells


def unload_ipython_extension(ipython):
    ipython.magics_manager.magics["line"].pop("finetune", None)
    ipython.magics_manager.magics["cell"].pop("finetune", None)
    from .completion import uninstall

    uninstall(ipython)
