"""Checkpoints on disk: written atomically, loaded back exactly (weights, optimizer state by parameter name, RNG),
pruned to `save_total_limit`, and `best.json` naming the best one."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

from ...errors import FinetuneError
from ..config import FinetuneConfig
from ..runs import RunDir, write_json_atomic

__all__ = [
    "rng_state",
    "set_rng_state",
    "save_checkpoint",
    "load_checkpoint",
    "restore_optimizer",
    "prune",
    "write_best",
]


def rng_state() -> dict[str, Any]:
    import torch

    st = {"torch": torch.get_rng_state().clone(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = [s.clone() for s in torch.cuda.get_rng_state_all()]
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def save_checkpoint(
    run_dir: RunDir, model, optimizer, state: dict[str, Any], rng: dict[str, Any], config: FinetuneConfig
) -> Path:
    """Write checkpoints/step-N atomically: into a temporary directory, then one rename."""
    final = run_dir.checkpoints_dir / f"step-{state['step']:06d}"
    tmp = run_dir.checkpoints_dir / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _write_files(tmp, model, optimizer, state, rng, config)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # never leave a half checkpoint behind
        raise
    if final.exists():
        trash = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
    return final


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
    save_file(rng_t, str(tmp / "rng.safetensors"))
    doc = {
        **state,
        "optimizer_scalars": meta,
        "python_rng": _jsonable(rng["python"]),
        "config": json.loads(json.dumps(config.to_dict(), default=lambda o: f"<object: {type(o).__name__}>")),
    }
    (tmp / "state.json").write_text(json.dumps(doc, indent=1, default=str), encoding="utf-8")
    for f in tmp.iterdir():  # data on disk before the rename makes it visible
        with open(f, "rb") as fh:
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
