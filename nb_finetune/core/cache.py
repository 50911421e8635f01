"""Frozen-prefix activation cache.

Frozen blocks run in eval mode (no dropout, fixed normalisation statistics), so the output of the frozen
prefix — embeddings and blocks 0..k-1 — is a pure function of the example. The first pass over the data
stores it (non-pad tokens only); later passes skip the prefix: the embeddings module returns the stored
hidden states and the frozen blocks pass them through untouched, so block k receives exactly what it would
have computed. Whether that holds for a given model is checked once at start-up on real examples (`probe`),
not assumed: a model whose structure does not fit simply trains without the cache.

When freezing goes deeper (k -> k' > k) the stored level-k states still feed blocks k..k'-1, which now run
frozen, and the new level-k' states are captured on the way; when freezing gets shallower the prefix weights
may change later, so everything is dropped.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Any

__all__ = [
    "PrefixCache",
    "PrefixRunner",
    "FrozenPrefixCache",
    "prefix_depth",
    "probe",
    "setup_cache",
    "short_padded_rows",
]


class PrefixCache:
    """Per-example hidden states of one depth, non-pad tokens only, size-bounded.

    Rows live in memory (the training device, or host memory) up to `max_bytes`; past that they spill into a file
    under `spill_dir` up to `spill_bytes` (written with a host copy: the slow path), and past that examples are
    simply not cached (their batches compute the prefix as usual).
    """

    def __init__(
        self, depth: int, dtype, device, max_bytes: int, spill_dir=None, spill_bytes: int = 0, whole: bool = False
    ):
        self.depth = depth
        self.whole = whole  # rows are whole per-example tensors (images: no tokens, no padding), not token prefixes
        self.dtype = dtype
        self.device = device
        self.max_bytes = max_bytes
        self.rows: dict[int, Any] = {}
        self.disk_rows: dict[int, tuple[int, int]] = {}  # example -> (offset, tokens) in the spill file
        self.nbytes = 0
        self.disk_bytes = 0
        self.spill_bytes = spill_bytes if spill_dir is not None else 0
        self.spill_path = None if spill_dir is None else Path(spill_dir) / f"prefix-depth{depth}-{id(self):x}.bin"
        self._fd: int | None = None
        self.hidden = 0
        self.row_shape: tuple[int, ...] = ()
        self.full = False  # both budgets ran out: some examples are not cached

    def __len__(self) -> int:
        return len(self.rows) + len(self.disk_rows)

    def has(self, indices) -> bool:
        rows, disk = self.rows, self.disk_rows
        return all(i in rows or i in disk for i in indices)

    def put(self, indices, lengths, hidden) -> None:
        """Store rows of `hidden` (B, L, H): a device-side copy, no host read of its values (until spilling)."""
        import torch

        h = hidden.detach()
        self.hidden = h.shape[-1]
        self.row_shape = tuple(h.shape[1:])
        per_token = h.shape[-1] * torch.empty((), dtype=self.dtype).element_size()
        if self.whole:
            per_token = h[0].numel() * torch.empty((), dtype=self.dtype).element_size()
        for row, (i, n) in enumerate(zip(indices, lengths)):
            if i in self.rows or i in self.disk_rows:
                continue
            size = (1 if self.whole else int(n)) * per_token
            piece = (h[row] if self.whole else h[row, : int(n)]).to(self.dtype)
            if self.nbytes + size <= self.max_bytes:
                self.rows[i] = self._keep(piece)
                self.nbytes += size
            elif self.disk_bytes + size <= self.spill_bytes:
                self.disk_rows[i] = (self._append(piece), int(n))
                self.disk_bytes += size
            else:
                self.full = True

    def _keep(self, piece):
        import torch

        if piece.device == self.device:
            return piece.clone()
        dst = torch.empty(
            piece.shape,
            dtype=self.dtype,
            device=self.device,
            pin_memory=self.device.type == "cpu" and piece.device.type == "cuda",
        )
        dst.copy_(piece, non_blocking=True)
        return dst

    def _append(self, piece) -> int:
        import torch

        if self._fd is None:
            self.spill_path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.spill_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        raw = piece.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
        offset = os.lseek(self._fd, 0, os.SEEK_END)
        os.write(self._fd, raw)
        return offset

    def _read(self, i: int):
        import torch

        offset, n = self.disk_rows[i]
        shape = self.row_shape if self.whole else (n, self.hidden)
        size = math.prod(shape) * torch.empty((), dtype=self.dtype).element_size()
        buf = bytearray(os.pread(self._fd, size, offset))
        return torch.frombuffer(buf, dtype=self.dtype).view(shape)

    def get(self, indices, width: int, device, dtype):
        """(B, width, H) batch of stored rows, zero-padded on the right (pad positions are masked anyway)."""
        import torch

        if self.whole:
            rows = [self.rows[i] if i in self.rows else self._read(i).to(self.device) for i in indices]
            return torch.stack(rows).to(device=device, dtype=dtype, non_blocking=True)
        out = torch.zeros((len(indices), width, self.hidden), dtype=self.dtype, device=self.device)
        for row, i in enumerate(indices):
            r = self.rows[i] if i in self.rows else self._read(i).to(self.device)
            out[row, : r.shape[0]] = r
        return out.to(device=device, dtype=dtype, non_blocking=True)

    def close(self) -> None:
        """Free memory and delete the spill file."""
        self.rows.clear()
        self.disk_rows.clear()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.spill_path is not None:
            with contextlib.suppress(OSError):
                self.spill_path.unlink()
            with contextlib.suppress(OSError):
                self.spill_path.parent.rmdir()  # only when empty


class PrefixRunner:
    """Hooks that let one forward pass either capture the prefix output or replace the prefix by the cache.

    Modes per forward: `None` (plain forward), `capture` (plain forward, the output of block `capture_depth-1`
    goes into `target`), `replay` (embeddings return the cached states of depth `inject_depth`, blocks below it
    pass them through; blocks `inject_depth..capture_depth-1` run, and their output is captured when
    `target` is set).
    """

    def __init__(self, model, layer_map):
        self.model = model
        modules = dict(model.named_modules())
        emb = [g for g in layer_map.groups if g.kind == "embeddings"]
        self.embeddings = [modules[m] for m in emb[0].module_names] if emb else []
        self.blocks = [modules[g.module_names[0]] for g in layer_map.groups if g.kind == "block"]
        self.inject_depth = 0
        self.inject_states = None
        self.capture_depth = 0
        self.target: PrefixCache | None = None
        self.batch_indices: list[int] = []
        self.batch_lengths: list[int] = []
        self.block_calls = [0] * len(self.blocks)  # real forward passes per block (tests read this)
        self.embedding_calls = 0
        self._out_format: tuple | None = None
        self._saved: list[tuple[Any, Any]] = []
        self._handles = []
        self.installed = False
        self.at_block0 = False

    # ------------------------------------------------------------ install / remove
    def install(self) -> None:
        if self.installed or not self.embeddings:
            return
        # one embeddings module: it returns the cached states. Several (a CNN stem of conv + norm, with an activation
        # in the model's own forward between them and the blocks): the stem runs, and block 0 returns the states
        self.at_block0 = len(self.embeddings) != 1
        if not self.at_block0:
            emb = self.embeddings[0]
            orig_emb = emb.forward

            def emb_forward(*args, **kwargs):
                if self.inject_depth > 0 and self.inject_states is not None:
                    return self.inject_states
                self.embedding_calls += 1
                return orig_emb(*args, **kwargs)

            self._saved.append((emb, orig_emb))
            emb.forward = emb_forward
        for idx, block in enumerate(self.blocks):
            orig = block.forward

            def block_forward(*args, _orig=orig, _idx=idx, **kwargs):
                if _idx < self.inject_depth and self.inject_states is not None:
                    hs = args[0] if args else kwargs.get("hidden_states")
                    if _idx == 0 and self.at_block0:
                        hs = self.inject_states
                    return self._like_output(hs)
                self.block_calls[_idx] += 1
                out = _orig(*args, **kwargs)
                if self._out_format is None:
                    self._out_format = ("tensor",) if not isinstance(out, tuple) else ("tuple", len(out))
                if self.target is not None and _idx == self.capture_depth - 1:
                    hidden = out if not isinstance(out, tuple) else out[0]
                    self.target.put(self.batch_indices, self.batch_lengths, hidden)
                return out

            self._saved.append((block, orig))
            block.forward = block_forward
        self.installed = True

    def remove(self) -> None:
        for mod, orig in self._saved:
            mod.forward = orig
        self._saved.clear()
        self.installed = False

    def _like_output(self, hs):
        fmt = self._out_format or ("tensor",)
        return hs if fmt[0] == "tensor" else (hs,) + (None,) * (fmt[1] - 1)

    # ------------------------------------------------------------ per batch
    def set_batch(
        self,
        indices,
        lengths,
        *,
        inject: PrefixCache | None,
        width: int,
        device,
        dtype,
        target: PrefixCache | None,
        capture_depth: int,
    ) -> None:
        self.batch_indices, self.batch_lengths = indices, lengths
        if inject is not None:
            self.inject_depth = inject.depth
            self.inject_states = inject.get(indices, width, device, dtype)
        else:
            self.inject_depth, self.inject_states = 0, None
        self.target = target
        self.capture_depth = capture_depth

    def clear_batch(self) -> None:
        self.inject_depth, self.inject_states, self.target = 0, None, None


def prefix_depth(layer_map, frozen: set[str]) -> int:
    """How many blocks, from the bottom, form a frozen prefix together with frozen embeddings (0: none)."""
    if "embeddings" not in frozen:
        return 0
    k = 0
    for g in layer_map.groups:
        if g.kind != "block":
            continue
        if g.name not in frozen:
            break
        k += 1
    return k


class FrozenPrefixCache:
    """Decides per batch whether to capture, replay or both, and keeps the stores in step with freezing."""

    def __init__(
        self,
        model,
        layer_map,
        depth: int,
        store_dtype,
        store_device,
        max_bytes: int,
        spill_dir=None,
        spill_bytes: int = 0,
        whole: bool = False,
    ):
        self.runner = PrefixRunner(model, layer_map)
        self.whole = whole
        self.store_dtype, self.store_device, self.max_bytes = store_dtype, store_device, max_bytes
        self.spill_dir, self.spill_bytes = spill_dir, spill_bytes
        self.depth = depth
        self.current = self._new(depth)
        self.source: PrefixCache | None = None
        self.replayed = 0  # micro-batches that skipped the prefix
        self.captured = 0

    def _new(self, depth: int) -> PrefixCache | None:
        if depth <= 0:
            return None
        return PrefixCache(
            depth, self.store_dtype, self.store_device, self.max_bytes, self.spill_dir, self.spill_bytes, self.whole
        )

    def install(self) -> None:
        self.runner.install()

    def remove(self) -> None:
        self.runner.remove()
        for store in (self.current, self.source):
            if store is not None:
                store.close()

    def prepare(self, indices, lengths, width: int, device, dtype) -> int:
        """Set the hooks for this batch; returns how many blocks the batch skips (0: the whole prefix runs)."""
        cur, src = self.current, self.source
        if cur is None:
            self.runner.clear_batch()
            return 0
        if cur.has(indices):  # replay: skip the whole frozen prefix
            inject, target = cur, None
            self.replayed += 1
        elif src is not None and src.has(indices):  # freezing went deeper: replay the old level, capture the new
            inject, target = src, cur
            self.captured += 1
        else:  # first pass: compute the prefix and capture its output
            inject, target = None, cur
            self.captured += 1
        self.runner.set_batch(
            indices,
            lengths,
            inject=inject,
            width=width,
            device=device,
            dtype=dtype,
            target=target,
            capture_depth=self.depth,
        )
        return inject.depth if inject is not None else 0

    def done(self) -> None:
        self.runner.clear_batch()

    def set_depth(self, depth: int) -> None:
        """Freezing changed. Deeper: the old states feed the newly frozen blocks. Shallower: drop everything."""
        if depth == self.depth:
            return
        if self.source is not None:
            self.source.close()
        if depth > self.depth and self.current is not None and len(self.current):
            self.source = self.current
        else:
            if self.current is not None:
                self.current.close()
            self.source = None
        self.depth = depth
        self.current = self._new(depth)

    def describe(self) -> str:
        cur = self.current
        if cur is None:
            return "off (no frozen prefix)"
        spilled = f", {cur.disk_bytes / 2**20:.0f} MiB on disk" if cur.disk_bytes else ""
        full = ", full" if cur.full else ""
        return f"on (depth {self.depth}, {len(cur)} examples, {cur.nbytes / 2**20:.0f} MiB{spilled}{full})"


def probe(model, layer_map, depth: int, batch: dict, store_dtype) -> bool:
    """Check on a real batch that replaying the captured prefix output gives the model's own outputs (its first
    output tensor: logits, start logits, ...)."""
    import torch

    if depth <= 0 or not any(g.kind == "embeddings" for g in layer_map.groups):
        return False
    runner = PrefixRunner(model, layer_map)
    if not runner.embeddings:
        return False
    whole = "input_ids" not in batch  # images: one fixed-shape tensor per example, no tokens
    first = next(iter(batch.values()))
    if whole:
        lengths = [1] * first.shape[0]
    elif "attention_mask" in batch:
        lengths = batch["attention_mask"].sum(-1).tolist()
    else:
        lengths = [batch["input_ids"].shape[1]] * batch["input_ids"].shape[0]
    indices = list(range(len(lengths)))
    device = first.device
    dtype = next(model.parameters()).dtype
    tmp = PrefixCache(depth, store_dtype, device, 1 << 40, whole=whole)
    was_training = model.training
    model.eval()
    runner.install()
    try:
        with torch.inference_mode():
            runner.set_batch(
                indices, lengths, inject=None, width=0, device=device, dtype=dtype, target=tmp, capture_depth=depth
            )
            ref = _first_output(model(**batch)).float()
            if not tmp.has(indices):
                return False
            runner.set_batch(
                indices,
                lengths,
                inject=tmp,
                width=0 if whole else batch["input_ids"].shape[1],
                device=device,
                dtype=dtype,
                target=None,
                capture_depth=depth,
            )
            calls = list(runner.block_calls)
            alt = _first_output(model(**batch)).float()
            skipped = runner.block_calls[:depth] == calls[:depth]
        tol = 1e-5 if store_dtype == torch.float32 else 3e-2
        return bool(skipped and torch.allclose(ref, alt, atol=tol, rtol=tol))
    except Exception:  # noqa: BLE001 - a model this does not fit trains without the cache
        return False
    finally:
        runner.remove()
        model.train(was_training)


def _first_output(out):
    if hasattr(out, "to_tuple"):
        return out.to_tuple()[0]
    return out[0] if isinstance(out, (tuple, list)) else out


def setup_cache(
    cfg, model, lm, frozen, data, collate, device, precision, planned_epochs, spill_dir=None, unfreeze_epochs=None
):
    """The frozen-prefix cache for this run, installed, or None, and a line saying which and why.

    `data`: the training `Examples`; `collate`: the task's collator; `unfreeze_epochs`: epochs between scheduled
    unfreezes (gradual unfreezing), or None. The caller checks first that the task says a frozen prefix is exact.
    """
    import torch

    from .tasks.base import HOST_KEYS

    mode = cfg.cache_frozen.value
    if mode == "off":
        return None, "off (cache_frozen: off)"
    if cfg.compile:
        return None, "off (compile: true; a compiled graph cannot skip modules per batch)"
    if cfg.frozen_mode.value != "eval":
        return None, "off (frozen_mode: train makes the frozen prefix random)"
    if mode == "auto" and planned_epochs <= 1:
        return None, "off (a single pass over the data: nothing to reuse)"
    if mode == "auto" and unfreeze_epochs is not None and unfreeze_epochs < 2:
        return None, "off (gradual unfreezing shrinks the frozen prefix before its activations could be reused)"
    if lm.num_blocks < 1 or len(data) < 2:
        return None, "off (no blocks to skip)"
    store_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    pick = short_padded_rows(data.lengths, 3) or [0, 1]
    batch = collate([data[i] for i in pick])
    for key in (*HOST_KEYS, "labels"):
        batch.pop(key, None)
    batch = {k: v.to(device) for k, v in batch.items()}
    probe_depth = max(1, min(prefix_depth(lm, frozen), lm.num_blocks))
    if not probe(model, lm, probe_depth, batch, store_dtype):
        return None, "off (this model's structure does not allow replaying its prefix exactly)"
    max_bytes = int(cfg.cache_max_gb * 2**30)
    store_device = torch.device("cpu")
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if max_bytes < 0.3 * free:
            store_device = device
    ctl = FrozenPrefixCache(
        model,
        lm,
        prefix_depth(lm, frozen),
        store_dtype,
        store_device,
        max_bytes,
        spill_dir=spill_dir,
        spill_bytes=int(cfg.cache_spill_gb * 2**30),
        whole="input_ids" not in batch,
    )
    ctl.install()
    return ctl, ctl.describe()


def short_padded_rows(lengths, n: int) -> list[int] | None:
    """`n` of the shortest examples, two of them of different lengths: a padded batch that is cheap to run
    (start-up probes). None when every example has the same length."""
    import numpy as np

    order = np.argsort(lengths, kind="stable")
    first = int(order[0])
    other = next((int(i) for i in order if lengths[i] != lengths[first]), None)
    if other is None:
        return None
    rows = [first, other]
    rows += [int(i) for i in order[: n + 1] if int(i) not in rows][: max(0, n - 2)]
    return rows
