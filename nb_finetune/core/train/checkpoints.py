"""Checkpoints on disk: written atomically, loaded back exactly (weights, optimizer state by parameter name, RNG),
pruned to `save_total_limit`, and `best.json` naming the best one."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

from ...errors import CheckpointError, FinetuneError
from ..config import FinetuneConfig
from ..runs import RunDir, replace_or_copy, write_json_atomic

__all__ = [
    "rng_state",
    "set_rng_state",
    "save_checkpoint",
    "load_checkpoint",
    "restore_optimizer",
    "prune",
    "write_best",
    "verify_checkpoint",
    "MANIFEST",
]

# written last, after every other file is on disk: a checkpoint without it (or whose files do not match the sizes
# and checksums it lists) is incomplete and never resumed from
MANIFEST = "state.json"
DATA_FILES = ("model.safetensors", "optimizer.safetensors", "rng.safetensors")


def rng_state() -> dict[str, Any]:
    """The process's random streams: torch (and CUDA), Python's `random` and numpy's global generator (what a model
    or collator drawing from `np.random` uses)."""
    import numpy as np
    import torch

    st = {"torch": torch.get_rng_state().clone(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = [s.clone() for s in torch.cuda.get_rng_state_all()]
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    if "numpy" in st:  # checkpoints written before it was saved have none
        import numpy as np

        np.random.set_state(st["numpy"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def save_checkpoint(
    run_dir: RunDir, model, optimizer, state: dict[str, Any], rng: dict[str, Any], config: FinetuneConfig
) -> Path:
    """Write checkpoints/step-N atomically: into a temporary directory, then one rename."""
    final = run_dir.checkpoints_dir / f"step-{state['step']:06d}"
    tmp = run_dir.checkpoints_dir / f".{final.name}.tmp-{os.getpid()}"
    remove_stale_partials(run_dir)
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _write_files(tmp, model, optimizer, state, rng, config)
        _publish(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)  # never leave a half checkpoint behind
        os_error = e if isinstance(e, OSError) else _os_error_inside(e)
        if os_error is None:
            raise
        # disk full, quota, permissions: say so; what was there before stays as it was
        raise CheckpointError(_write_failed(run_dir, final, os_error)) from None
    return final


def _os_error_inside(e: BaseException) -> OSError | None:
    """The OS error behind a writer's own exception: safetensors reports a failed write (a full disk: ENOSPC) as a
    SafetensorError whose text ends in "(os error N)"."""
    import re

    m = re.search(r"\(os error (\d+)\)", str(e))
    return OSError(int(m.group(1)), os.strerror(int(m.group(1)))) if m else None


def remove_stale_partials(run_dir: RunDir) -> list[str]:
    """Delete the half-written checkpoint directories of processes that are gone (killed mid-write, kill -9, a
    lost runtime); a live writer's are left alone. Returns the names removed."""
    from ..runs import pid_alive

    removed = []
    if not run_dir.checkpoints_dir.is_dir():
        return removed
    for p in run_dir.checkpoints_dir.glob(".step-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    return removed


def _write_failed(run_dir: RunDir, final: Path, e: OSError) -> str:
    import errno

    code = errno.errorcode.get(e.errno, "") if e.errno else ""
    why = f"{e.strerror or e}" + (f" ({code})" if code else "")
    good = [c.name for c in run_dir.checkpoints() if c != final]
    kept = f"the last good checkpoint {good[-1]} is intact" if good else "there is no earlier checkpoint"
    return (
        f"checkpoint {final.name} could not be written in {run_dir.checkpoints_dir}: {why}. Nothing partial was "
        f"left and {kept}. Free space (or set output_dir elsewhere), then rerun with resume_from: last"
    )


def _publish(tmp: Path, final: Path) -> None:
    """Make the finished `tmp` directory the checkpoint `final`: one rename where the file system allows it; where it
    does not (a mounted Google Drive: EXDEV / EPERM), a copy with the manifest copied last."""
    if final.exists():
        trash = final.with_name(f".{final.name}.old-{os.getpid()}")
        replace_or_copy(final, trash)
        replace_or_copy(tmp, final, last=MANIFEST)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        replace_or_copy(tmp, final, last=MANIFEST)


def file_digests(folder: Path, names=DATA_FILES) -> dict[str, dict[str, Any]]:
    """{file: {bytes, sha256}} of the checkpoint's data files, recorded in the manifest."""
    import hashlib

    out = {}
    for name in names:
        h = hashlib.sha256()
        with open(folder / name, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
        out[name] = {"bytes": (folder / name).stat().st_size, "sha256": h.hexdigest()}
    return out


def verify_checkpoint(path: Path) -> str | None:
    """Why the checkpoint at `path` is not whole (no manifest, a missing, truncated or altered file), or None.

    Checkpoints written before checksums existed (no `files` in the manifest) count as whole when their files exist."""
    try:
        state = json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no {MANIFEST} (an interrupted write)"
    except (OSError, ValueError) as e:
        return f"{MANIFEST} cannot be read ({type(e).__name__})"
    files = state.get("files") if isinstance(state, dict) else None
    if not isinstance(files, dict):
        missing = [n for n in DATA_FILES if not (Path(path) / n).is_file()]
        return f"{', '.join(missing)} missing" if missing else None
    for name, want in files.items():
        f = Path(path) / name
        if not f.is_file():
            return f"{name} is missing"
        size = f.stat().st_size
        if size != want.get("bytes"):
            return f"{name} is {size} bytes, the manifest says {want.get('bytes')} (truncated or overwritten)"
    got = file_digests(Path(path), list(files))
    for name, want in files.items():
        if got[name]["sha256"] != want.get("sha256"):
            return f"{name} does not match its checksum (the file was altered or damaged)"
    return None


def _write_files(tmp: Path, model, optimizer, state, rng, config) -> None:
    import torch
    from safetensors.torch import save_file, save_model

    from ..lora import trained_state

    part = trained_state(model)  # a LoRA model: the adapters only, the frozen base never changes
    if part is None:
        save_model(model, str(tmp / "model.safetensors"))
    else:
        save_file({k: v.cpu() for k, v in part.items()}, str(tmp / "model.safetensors"))
    # optimizer state keyed by parameter name, so it survives a rebuilt optimizer (freezing changes)
    tensors, meta = {}, {}
    for group in optimizer.param_groups:
        for pname, p in zip(group["param_names"], group["params"]):
            for k, v in optimizer.state.get(p, {}).items():
                if torch.is_tensor(v):
                    tensors[f"{pname}::{k}"] = v.detach().contiguous().cpu()
                else:
                    meta[f"{pname}::{k}"] = v
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    rng_t = {"torch": rng["torch"]}
    for i, s in enumerate(rng.get("cuda", [])):
        rng_t[f"cuda.{i}"] = s
    numpy_rng = None
    if "numpy" in rng:  # ('MT19937', 624 uint32 keys, pos, has_gauss, cached_gaussian): the keys as a tensor
        kind, keys, *rest = rng["numpy"]
        rng_t["numpy"] = torch.from_numpy(keys.astype("int64"))
        numpy_rng = {"kind": kind, "pos": int(rest[0]), "has_gauss": int(rest[1]), "cached_gaussian": float(rest[2])}
    save_file(rng_t, str(tmp / "rng.safetensors"))
    for name in DATA_FILES:  # data on disk before the manifest that vouches for it
        with open(tmp / name, "rb") as fh:
            os.fsync(fh.fileno())
    doc = {
        **state,
        "files": file_digests(tmp),
        "optimizer_scalars": meta,
        "python_rng": _jsonable(rng["python"]),
        "numpy_rng": numpy_rng,
        "config": json.loads(json.dumps(config.to_dict(), default=lambda o: f"<object: {type(o).__name__}>")),
    }
    with open(tmp / MANIFEST, "w", encoding="utf-8") as fh:  # the manifest last
        fh.write(json.dumps(doc, indent=1, default=str))
        fh.flush()
        os.fsync(fh.fileno())


def _jsonable(o):
    if isinstance(o, tuple):
        return [_jsonable(x) for x in o]
    return o


def _tupled(o):
    if isinstance(o, list):
        return tuple(_tupled(x) for x in o)
    return o


def load_checkpoint(path: Path, model, device) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Load weights into `model`; return (state, optimizer tensors by name, rng)."""
    from safetensors.torch import load_file, load_model

    from ..lora import is_adapter_model, load_trained_state

    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        if is_adapter_model(model):
            weights = load_file(str(path / "model.safetensors"), device=str(device))
            missing, unexpected = load_trained_state(model, weights)
        else:
            missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False, device=str(device))
    except Exception as e:  # noqa: BLE001
        raise FinetuneError(f"resume_from: checkpoint {str(path)!r} cannot be loaded into this model: {e}") from None
    if missing or unexpected:
        raise FinetuneError(
            f"resume_from: checkpoint {str(path)!r} does not match this model "
            f"(missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]})"
        )
    opt_tensors = load_file(str(path / "optimizer.safetensors"))
    rng_t = load_file(str(path / "rng.safetensors"))
    rng = {"torch": rng_t["torch"], "python": _tupled(state["python_rng"])}
    cuda = [rng_t[f"cuda.{i}"] for i in range(len(rng_t)) if f"cuda.{i}" in rng_t]
    if cuda:
        rng["cuda"] = cuda
    np_meta = state.get("numpy_rng")
    if "numpy" in rng_t and isinstance(np_meta, dict):
        keys = rng_t["numpy"].numpy().astype("uint32")
        rng["numpy"] = (np_meta["kind"], keys, np_meta["pos"], np_meta["has_gauss"], np_meta["cached_gaussian"])
    return state, opt_tensors, rng


def restore_optimizer(optimizer, opt_tensors: dict, scalars: dict) -> None:
    """Put the saved per-parameter state (keyed by parameter name) into `optimizer`."""
    import torch

    by_name: dict[str, dict[str, Any]] = {}
    for key, t in opt_tensors.items():
        pname, k = key.split("::", 1)
        by_name.setdefault(pname, {})[k] = t
    for key, v in scalars.items():
        pname, k = key.split("::", 1)
        by_name.setdefault(pname, {})[k] = v
    sd = optimizer.state_dict()
    idx = 0
    for group in optimizer.param_groups:
        for pname in group["param_names"]:
            if pname in by_name:
                sd["state"][idx] = by_name[pname]
            idx += 1
    optimizer.load_state_dict(sd)  # torch casts / places each state tensor like its parameter
    for st in optimizer.state.values():
        if "step" in st and not torch.is_tensor(st["step"]):
            st["step"] = torch.tensor(float(st["step"]))


def prune(run_dir: RunDir, keep: int | None) -> None:
    """Keep the newest `keep` checkpoints besides the best one."""
    if not keep:
        return
    best = run_dir.best_checkpoint()
    cks = [c for c in run_dir.checkpoints() if c != best]
    for old in cks[: max(0, len(cks) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


def write_best(run_dir: RunDir, checkpoint_name: str, metric: str, value: float | None) -> None:
    write_json_atomic(
        run_dir.checkpoints_dir / "best.json", {"checkpoint": checkpoint_name, "metric": metric, "value": value}
    )
