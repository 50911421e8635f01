"""User-facing errors. The magic turns every `FinetuneError` into an IPython `UsageError` (no traceback)."""


class FinetuneError(Exception):
    """A mistake the user can fix: bad config, missing column, unknown model, ...."""


class ConfigError(FinetuneError, ValueError):
    """The config (cell text, YAML file, dict or keyword overrides) is invalid."""


class DataError(FinetuneError):
    """The data cannot be loaded or does not have the columns / labels the config names."""


class ModelError(FinetuneError):
    """The model or tokenizer cannot be resolved or loaded."""


class RunStateError(FinetuneError):
    """The operation does not fit the run's state (e.g. re-running an active run)."""


class CheckpointError(FinetuneError, OSError):
    """A checkpoint cannot be written (disk full, permissions) or read back whole (damaged, truncated)."""


class FinetuneWarning(UserWarning):
    """Something the user should know that does not stop the run (a damaged checkpoint skipped on resume)."""


class NonFiniteLossError(FinetuneError):
    """The loss became NaN or Inf and `on_nonfinite: stop` stopped the run (the step and batch are named)."""


def as_raised(e: FinetuneError) -> FinetuneError:
    """`e` with the message it was raised with. torch re-raises an exception from a DataLoader worker process as the
    same class built from the worker's whole traceback text ("Caught DataError in DataLoader worker process 0.
    Original Traceback ..."); the last line of that text is the original `module.Class: message`. Any other error is
    returned as it is."""
    text = str(e)
    if not (text.startswith("Caught ") and "DataLoader worker" in text.split("\n", 1)[0]):
        return e
    cls = type(e)
    prefix = f"{cls.__module__}.{cls.__qualname__}: "
    lines = text.rstrip("\n").split("\n")
    for k in range(len(lines) - 1, 0, -1):
        if lines[k].startswith(prefix):
            try:
                return cls("\n".join([lines[k][len(prefix) :], *lines[k + 1 :]]))
            except TypeError:  # a subclass that takes other arguments: keep torch's text
                return e
    return e
