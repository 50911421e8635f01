"""Where a run trains and in what precision: precision resolution, the Accelerator, device name and memory."""

from __future__ import annotations

import os
import re

from ...errors import ConfigError

__all__ = [
    "parse_device",
    "check_device",
    "resolve_precision",
    "device_type",
    "device_name",
    "memory_mb",
    "make_accelerator",
    "precision_of",
    "keep_thread_count",
    "release_openmp_threads",
]


def resolve_precision(precision: str, device_type: str) -> str:
    """auto -> bf16 on GPUs that support it, fp16 on older GPUs, fp32 elsewhere."""
    import torch

    if precision == "auto":
        if device_type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if precision == "fp16" and device_type != "cuda":
        raise ConfigError(
            "Invalid finetune config: precision: fp16 needs a CUDA GPU; use bf16 or fp32 on this machine"
        )
    return precision


_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(?::\d+)?)$")


def parse_device(value) -> str:
    """Check the spelling of `device:` (no torch needed): auto, cpu, mps, cuda, cuda:N."""
    s = str(value).strip().lower() if isinstance(value, str) else None
    if s is None or not _DEVICE_RE.match(s):
        raise ValueError(f"{value!r} is not a device; use auto, cpu, cuda, cuda:1 (a given GPU) or mps")
    return s


def _machine_has() -> str:
    import torch

    have = ["cpu"]
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        have.append(f"cuda:0..cuda:{n - 1} ({n} GPUs)" if n > 1 else "cuda:0 (1 GPU)")
    if _mps_available():
        have.append("mps")
    return ", ".join(have)


def _mps_available() -> bool:
    import torch

    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def check_device(device: str) -> None:
    """ConfigError when `device` is not on this machine, naming what the machine has."""
    import torch

    device = parse_device(device)
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"Invalid finetune config: device: {device} requested but this machine has no GPU "
                f"(it has: {_machine_has()}); use device: auto or cpu"
            )
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"Invalid finetune config: device: {device} requested but this machine has "
                f"{torch.cuda.device_count()} GPU(s) (it has: {_machine_has()})"
            )
    if device == "mps" and not _mps_available():
        raise ConfigError(
            f"Invalid finetune config: device: mps requested but this machine has no Apple GPU "
            f"(it has: {_machine_has()})"
        )


def device_type(device: str = "auto") -> str:
    """cuda / mps / cpu for the `device:` setting (auto: cuda when there is a GPU, else cpu)."""
    import torch

    if device != "auto":
        return device.split(":")[0]
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
    if device.type == "mps":
        return "Apple GPU (mps)"
    return f"CPU ({torch.get_num_threads()} threads)"


def memory_mb(device) -> float | None:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return None


def make_accelerator(precision: str, device: str = "auto"):
    """A fresh Accelerator for `precision` (fp32 | bf16 | fp16) on `device` (the `device:` setting); TF32 on CUDA."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    # accelerate's state is process-wide: reset it so a bf16 run after an fp32 run gets its own settings
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    mp = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    if device.startswith("cuda:"):
        torch.cuda.set_device(int(device.split(":")[1]))  # accelerate trains on the current CUDA device
    accelerator = Accelerator(mixed_precision=mp, cpu=device == "cpu")
    if accelerator.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return accelerator


def precision_of(accelerator) -> str:
    """The precision a run reports: fp32 | bf16 | fp16."""
    return {"no": "fp32"}.get(accelerator.mixed_precision, accelerator.mixed_precision)


def keep_thread_count() -> None:
    """Give this (worker) thread the intra-op thread count the user set with `torch.set_num_threads(n)`.

    That call sets OpenMP's and MKL's count for the calling thread only: on a new thread MKL's matmuls go back to
    one thread per core while torch still reports n (measured: a 1-thread setting ran the worker's matmuls on 2
    threads). Set again here when it differs from the default; the default is left alone, since setting it also
    turns off MKL's own choice of fewer threads for small matmuls.
    """
    import torch

    n = torch.get_num_threads()
    if n != _default_threads():
        torch.set_num_threads(n)


def _default_threads() -> int:
    """The count torch starts with (OpenMP's default: OMP_NUM_THREADS, else the CPUs this process may use)."""
    try:
        return int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def release_openmp_threads() -> bool:
    """Free the calling thread's idle OpenMP threads; call it on the notebook's thread right before the training
    thread starts. Returns whether the OpenMP runtime did it (Linux with libgomp, LLVM's or Intel's runtime).

    Why: OpenMP keeps one pool of threads per thread that ran parallel work. Once the notebook's thread has run any
    (an import, pre-flight, a user's cell), the training thread's pool makes more OpenMP threads than CPUs, and
    libgomp then cuts its spin-wait from 300,000 to 100 iterations: each of the thousands of parallel regions of a
    CPU training step goes through a futex sleep and wake-up. Measured on 2 CPUs: sys time 5 -> 25-40 ms per step,
    N/B2 0.87x in the benchmark; without the notebook thread's pool the training thread spins as a main thread does.
    The pool comes back by itself the next time the notebook's thread runs parallel work.
    """
    import ctypes

    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            loaded = {line.split()[-1] for line in f if line.rstrip().endswith(".so") or ".so." in line}
    except OSError:
        return False
    names = ("libgomp", "libomp", "libiomp5")
    for path in sorted(loaded):
        if path.rsplit("/", 1)[-1].startswith(names):
            try:  # already loaded: this only looks the library up, it never loads a second runtime
                return ctypes.CDLL(path).omp_pause_resource_all(1) == 0  # 1: omp_pause_soft
            except (OSError, AttributeError):
                return False
    return False
