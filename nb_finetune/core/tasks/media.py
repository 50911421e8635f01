"""What image and audio tasks share: sources (a folder with one sub-folder per class, arrays with labels), finding
the media and label columns, and the tally of unreadable files. Pure helpers; the decoding lives in vision_data.py
and audio_data.py. Later tasks on the same data (object detection, speech recognition) reuse these.

Every source ends up as a `datasets.Dataset` (so `eval_split`, slicing and `task: auto` work as for text): a folder
becomes an `image` / `audio` column of file paths next to a `label` column of sub-folder names; `(X, y)` arrays
become an `Array3D` image column (or a list-of-floats audio column) next to `label`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DataError

__all__ = [
    "IMAGE_SUFFIXES",
    "AUDIO_SUFFIXES",
    "folder_dataset",
    "arrays_dataset",
    "media_source",
    "media_kind",
    "find_media_column",
    "label_column",
    "encode_labels",
    "base_dirs",
    "media_preflight",
    "split_labels",
    "ActivationEstimate",
    "BadFiles",
    "DecodedExamples",
    "why_unreadable",
]

log = logging.getLogger("nb_finetune.data")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif")
IMAGE_NAMES = ("image", "img", "images", "picture", "photo", "pixel_values", "image_path", "path", "file", "filename")
AUDIO_NAMES = ("audio", "speech", "sound", "wav", "audio_path", "path", "file", "filename")


def folder_dataset(path: Path):
    """A Dataset for a folder with one sub-folder of image or audio files per class, or None when it is not one."""
    import datasets

    if not path.is_dir() or (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
        return None
    classes = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    files, labels, kinds = [], [], set()
    for c in classes:
        for f in sorted(c.rglob("*")):
            suffix = f.suffix.lower()
            if f.is_file() and suffix in (*IMAGE_SUFFIXES, *AUDIO_SUFFIXES):
                kinds.add("image" if suffix in IMAGE_SUFFIXES else "audio")
                files.append(str(f))
                labels.append(c.name)
    if not files:
        return None
    if len(kinds) > 1:
        raise DataError(f"data: folder {str(path)!r} mixes image and audio files; keep one kind per folder")
    return datasets.Dataset.from_dict({kinds.pop(): files, "label": labels})


def arrays_dataset(x, y, what: str):
    """`(X, y)`: images (N, H, W[, C]) or a list of 1-D audio arrays, with one label per example."""
    import datasets

    y = list(np.asarray(y).tolist()) if y is not None else None
    if isinstance(x, np.ndarray) and x.ndim in (3, 4) and x.dtype != object:
        if x.ndim == 3:
            x = x[..., None]
        n, h, w, c = x.shape
        if c > 16 and x.shape[1] <= 16:  # channels first (N, C, H, W)
            x = np.moveaxis(x, 1, -1)
            n, h, w, c = x.shape
        dtype = "uint8" if x.dtype == np.uint8 else "float32"
        feats = {"image": datasets.Array3D(shape=(h, w, c), dtype=dtype)}
        cols: dict[str, Any] = {"image": x.astype(dtype, copy=False)}
    else:
        seqs = [np.asarray(a, dtype=np.float32) for a in x]
        if any(a.ndim not in (1, 2) for a in seqs):
            raise DataError(f"{what}: arrays must be images (N, H, W[, C]) or 1-D audio clips")
        feats = {"audio": datasets.Sequence(datasets.Value("float32"))}
        cols = {"audio": [a.mean(-1) if a.ndim == 2 else a for a in seqs]}  # stereo (T, 2) -> mono
        n = len(seqs)
    if y is not None:
        if len(y) != n:
            raise DataError(f"{what}: {n} examples but {len(y)} labels")
        cols["label"] = y
        feats["label"] = datasets.Value("string") if isinstance(y[0], str) else datasets.Value("int64")
    return datasets.Dataset.from_dict(cols, features=datasets.Features(feats))


def media_source(src, what: str):
    """A Dataset for the sources only media tasks have (`(X, y)`, `{"image": X, "label": y}` with an image array,
    a class-per-sub-folder directory), or None for every other source."""
    if isinstance(src, tuple) and len(src) == 2:
        return arrays_dataset(src[0], src[1], what)
    if isinstance(src, dict) and any(isinstance(v, np.ndarray) and v.ndim >= 3 for v in src.values()):
        arrays = [k for k, v in src.items() if isinstance(v, np.ndarray) and v.ndim >= 3]
        rest = {k: v for k, v in src.items() if k not in arrays}
        label = next((rest[k] for k in ("label", "labels", "y", "target") if k in rest), None)
        return arrays_dataset(src[arrays[0]], label, what)
    if isinstance(src, (str, Path)):
        path = Path(str(src)).expanduser()
        if path.is_dir():
            return folder_dataset(path)
    return None


def _feature_kind(feat) -> str | None:
    import datasets

    if isinstance(feat, datasets.Image) or isinstance(feat, (datasets.Array2D, datasets.Array3D)):
        return "image"
    if isinstance(feat, datasets.Audio):
        return "audio"
    return None


def _suffix_kind(values) -> str | None:
    vals = [v for v in values if isinstance(v, str)]
    if not vals:
        return None
    suffixes = {Path(v).suffix.lower() for v in vals}
    if suffixes <= set(IMAGE_SUFFIXES):
        return "image"
    if suffixes <= set(AUDIO_SUFFIXES):
        return "audio"
    return None


def column_kind(ds, col: str) -> str | None:
    """image, audio or None: what a column holds (a feature type, file names with media suffixes, PIL images)."""
    kind = _feature_kind(ds.features.get(col))
    if kind:
        return kind
    feat = ds.features.get(col)
    if getattr(feat, "dtype", None) in ("string", "large_string"):
        return _suffix_kind(ds[col][:50])
    inner = getattr(feat, "feature", None)  # a list of floats named like sound: a clip as an array
    if col.lower() in AUDIO_NAMES[:4] and str(getattr(inner, "dtype", "")).startswith("float"):
        return "audio"
    return None


def media_kind(ds, cfg) -> tuple[str, str] | None:
    """(kind, column) of the image / audio column `ds` has (named by data.image / data.audio or found), or None."""
    cols = list(getattr(ds, "column_names", []) or [])
    for kind in ("image", "audio"):
        named = getattr(cfg.data, kind, None)
        if named is not None and named in cols:
            return kind, named
    for c in cols:
        k = column_kind(ds, c)
        if k:
            return k, c
    return None


def find_media_column(ds, named: str | None, kind: str, role: str) -> str:
    """The image (audio) column of `ds`: `named` (checked) or the one obvious column."""
    from ..data import suggest

    cols = list(ds.column_names)
    if named is not None:
        if named not in cols:
            raise DataError(
                f"data.{kind}: column '{named}' is not in data.{role} (columns: {', '.join(cols)}).{suggest(named, cols)}"
            )
        return named
    found = [c for c in cols if column_kind(ds, c) == kind]
    if len(found) == 1:
        return found[0]
    lower = {c.lower(): c for c in cols}
    names = IMAGE_NAMES if kind == "image" else AUDIO_NAMES
    by_name = next((lower[n] for n in names if n in lower), None)
    if by_name is not None and (not found or by_name in found):
        return by_name
    raise DataError(
        f"data.{kind}: cannot tell which column of data.{role} holds the {kind}s (columns: {', '.join(cols)}); "
        f"name it with `{kind}: <column>` under data:"
    )


def label_column(ds, cfg, media_col: str) -> str:
    """The label column of `ds`: `data.label` (checked), a usual label name, or the one column beside the media."""
    from .. import data as D

    cols = [c for c in ds.column_names if c != media_col]
    if cfg.data.label is not None:
        if cfg.data.label not in ds.column_names:
            raise DataError(
                f"data.label: column '{cfg.data.label}' is not in data.train (columns: {', '.join(ds.column_names)})."
                f"{D.suggest(cfg.data.label, ds.column_names)}"
            )
        return cfg.data.label
    lower = {c.lower(): c for c in cols}
    found = next((lower[c] for c in D.LABEL_CANDIDATES if c in lower), None)
    if found is None and len(cols) == 1:  # the one column beside the media
        found = cols[0]
    if found is None:
        raise DataError(
            f"data.label: no label column found in data.train (columns: {', '.join(ds.column_names)}); "
            "name it with `label: <column>` under data:"
        )
    return found


def encode_labels(values, label_map: dict[Any, int], label_names: list[str], role: str) -> list[int]:
    """Label ids of a label column's values; a value outside the labels is a DataError naming its row."""
    out = []
    for row, v in enumerate(values):
        key = v if isinstance(v, str) else int(v) if isinstance(v, (int, np.integer, bool)) or v == int(v) else v
        try:
            out.append(label_map[key])
        except (KeyError, TypeError):
            raise DataError(
                f"data.label: row {row} of data.{role} has label {v!r}, which is not one of the labels "
                f"{label_names[:20]}"
            ) from None
    return out


def base_dirs(cfg) -> list[Path]:
    """Where relative media paths are looked up: the working directory, then the data files' folders."""
    dirs = [Path.cwd()]
    for src in (cfg.data.train, cfg.data.eval):
        if isinstance(src, (str, Path)):
            p = Path(str(src).split("[", 1)[0]).expanduser()
            if p.is_file():
                dirs.append(p.parent)
    return dirs


def media_preflight(task, kind: str) -> str:
    """The pre-flight image and audio classification share: load the splits, find the `kind` column (returned) and
    the label column, hold out `eval_split`, infer the labels. Sets on `task`: `label_col`, `train`, `eval`,
    `_full_train`, `label_names`, `label_map`, `_base_dirs`."""
    from .. import data as D
    from . import common as C

    cfg = task.cfg
    train, eval_ = C.load_splits(cfg, task._train_source)
    col = find_media_column(train, getattr(cfg.data, kind), kind, "train")
    task.label_col = label_column(train, cfg, col)
    if eval_ is not None:
        find_media_column(eval_, col, kind, "eval")
    task._full_train = train
    task.train, task.eval = C.holdout(cfg, train, eval_)
    user_eval = task.eval if cfg.data.eval is not None else None
    task.label_names, task.label_map = D.infer_labels(train, user_eval, task.label_col, cfg.labels)
    task._base_dirs = base_dirs(cfg)
    return col


def split_labels(task, ds, role: str) -> list[int] | None:
    """Label ids of `ds` (a split with the task's label column), or None when it has no labels."""
    if not task.label_col or task.label_col not in ds.column_names:
        return None
    return encode_labels(ds[task.label_col], task.label_map, task.label_names, role)


class ActivationEstimate:
    """The media tasks' `activation_bytes`: bytes autograd keeps per example, traced once per model and trainable
    set on the meta device from the task's own input shape (image size and channels; audio: the longest clip or
    `max_duration` at the extractor's rate), times the batch; half with bf16 / fp16 autocast. A model whose forward
    cannot run on the meta device falls back to the transformer formula over the tokens its config gives."""

    def __init__(self):
        self._key: tuple | None = None
        self._per_example = 0.0

    def __call__(self, model, layer_map, frozen, batch: int, precision: str, inputs, tokens: int, hf_config) -> int:
        import weakref

        from .vision_models import saved_activation_bytes

        key = (frozenset(frozen), len(layer_map.groups))
        if self._key is None or self._key[0]() is not model or self._key[1] != key:
            rows = inputs()  # two examples: BatchNorm in training mode needs more than one value per channel
            traced = saved_activation_bytes(model, rows, layer_map, frozen)
            if traced is not None:
                self._per_example = traced / 2
            else:
                self._per_example = transformer_activations(hf_config, tokens, layer_map, frozen)
            self._key = (weakref.ref(model), key)
        scale = 0.5 if precision in ("bf16", "fp16") else 1.0
        return int(self._per_example * batch * scale)


def transformer_activations(hf_config, tokens: int, layer_map, frozen) -> float:
    """fp32 bytes per example of the trained transformer blocks over `tokens` (Korthikanti et al. 2022)."""
    hidden = getattr(hf_config, "hidden_size", 0) or 0
    heads = getattr(hf_config, "num_attention_heads", 0) or 0
    trained = sum(1 for g in layer_map.groups if g.kind == "block" and g.name not in frozen)
    return float((tokens * hidden * 17 * 4 + heads * tokens**2 * 2.5 * 4) * trained)


@dataclass
class BadFiles:
    """Examples that could not be read: (split, row, what, why). Reported in describe(), the progress line and
    run.log; with `on_bad_example: error` the first one is a DataError instead."""

    items: list[tuple[str, int, str, str]] = field(default_factory=list)
    dropped: list[tuple[str, int, str]] = field(default_factory=list)  # (split, row, why): e.g. too long

    def add(self, role: str, row: int, name: str, why: str, *, error: bool, key: str) -> None:
        why = why.rstrip(".")  # the decoder's sentence ends here: one full stop, not two
        if error:
            raise DataError(
                f"data.{role}: row {row} ({name}) cannot be read: {why}. Fix or remove the file, or set "
                f"`{key}: skip` to leave such examples out"
            )
        self.items.append((role, row, name, why))

    def lines(self, kind: str) -> list[str]:
        out = []
        if self.items:
            shown = "; ".join(f"data.{r} row {i} ({n}: {w})" for r, i, n, w in self.items[:3])
            more = f" and {len(self.items) - 3} more" if len(self.items) > 3 else ""
            out.append(f"skipped {len(self.items)} unreadable {kind} file(s): {shown}{more}")
        if self.dropped:
            why = self.dropped[0][2]
            out.append(f"dropped {len(self.dropped)} {kind} example(s) ({why})")
        return out

    def log(self, kind: str) -> None:
        for line in self.lines(kind):
            log.warning(line)
        for r, i, n, w in self.items[3:]:
            log.warning(f"skipped data.{r} row {i} ({n}): {w}")


def short_name(obj) -> str:
    if isinstance(obj, str):
        return Path(obj).name
    if isinstance(obj, dict) and obj.get("path"):
        return Path(str(obj["path"])).name
    return type(obj).__name__


def why_unreadable(e: BaseException) -> str:
    """The first line of a decoder's error (what messages quote), or its type when it has no text."""
    return (str(e).splitlines() or [type(e).__name__])[0][:120].rstrip(".") or type(e).__name__


class DecodedExamples:
    """Examples whose media are decoded when read (`column.decode(i)`), in the DataLoader workers when there are some.

    `column` has `decode(i)`, `name(i)`, `rows` (each item's row in the split as pre-flight read it) and `role`. A
    file that fails to decode is marked in `unreadable` (shared memory: DataLoader workers write it, the run reads it)
    and logged once (run.log) with the count so far; its item is a marker `{"idx", "unreadable": True, "fallback"}`
    that the collator leaves out (`fallback`: the next readable example, for a batch left with none). With `error`
    it is a DataError naming the row and the file instead. The same file fails the same way at every read, so a
    resumed run reads what an uninterrupted one does. Mix into an `Examples` subclass that defines
    `_item(i, decoded) -> dict`, the example built from its decoded file (audio_data.py, vision_data.py)."""

    kind = "media"  # what messages call the files: image, audio

    def _setup_decoding(self, column, *, error: bool) -> None:
        import torch

        self.column = column
        self.error = error
        self.unreadable = torch.zeros(len(column), dtype=torch.uint8)
        if len(column):
            self.unreadable.share_memory_()

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            return self._item(i, self.column.decode(i))
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - decoders raise OSError, RuntimeError, LibsndfileError, ...
            self._note(i, e)
        return {"idx": i, "unreadable": True, "fallback": self._fallback(i)}

    @property
    def num_unreadable(self) -> int:
        """Files found unreadable while reading (in any process), each counted once."""
        return int(self.unreadable.sum())

    def _note(self, i: int, e: BaseException) -> None:
        col = self.column
        why, row, name = why_unreadable(e), col.rows[i], col.name(i)
        if self.error:
            raise DataError(
                f"data.{col.role}: row {row} ({name}) cannot be read: {why}. Fix or remove the file, or set "
                "`on_bad_example: skip` to leave such examples out"
            ) from None
        if not self.unreadable[i]:
            self.unreadable[i] = 1
            log.warning(
                f"skipped data.{col.role} row {row} ({name}) while reading: {why} "
                f"({self.num_unreadable} unreadable {self.kind} file(s) found while reading so far)"
            )

    def _fallback(self, i: int) -> dict[str, Any]:
        n = len(self.column)
        for j in (*range(i + 1, n), *range(i)):
            if self.unreadable[j]:
                continue
            try:
                return self._item(j, self.column.decode(j))
            except Exception as e:  # noqa: BLE001
                self._note(j, e)
        raise DataError(f"data.{self.column.role}: no {self.kind} file can be read (every file failed to decode)")
