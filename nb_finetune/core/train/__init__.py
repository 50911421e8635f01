"""The training loop (loop.py) and the rooms beside it: checkpoints, optimizer and schedule, live commands, what is
due when, device and precision, attention masks, evaluation, logging."""

from .device import device_name, device_type, release_openmp_threads, resolve_precision
from .evaluate import evaluate
from .logs import library_logging_to
from .loop import Job, RunResult, train

__all__ = [
    "Job",
    "RunResult",
    "train",
    "evaluate",
    "library_logging_to",
    "resolve_precision",
    "device_type",
    "device_name",
    "release_openmp_threads",
]
