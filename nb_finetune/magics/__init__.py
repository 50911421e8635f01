"""IPython magics: `%%finetune` starts a run, `%finetune` steers runs. Thin: parse, resolve, delegate."""

from .finetune_magic import FinetuneMagic, install_sigterm_handler, uninstall_sigterm_handler

__all__ = ["FinetuneMagic", "load_ipython_extension", "unload_ipython_extension"]


def load_ipython_extension(ipython):
    ipython.register_magics(FinetuneMagic(shell=ipython))
    from .completion import install

    install(ipython)  # completion of config keys and values inside `%%finetune` cells
    install_sigterm_handler()  # a runtime going away stops live runs with a checkpoint first


def unload_ipython_extension(ipython):
    ipython.magics_manager.magics["line"].pop("finetune", None)
    ipython.magics_manager.magics["cell"].pop("finetune", None)
    from .completion import uninstall

    uninstall(ipython)
    uninstall_sigterm_handler()
