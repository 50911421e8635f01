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
