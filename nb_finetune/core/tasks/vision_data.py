"""Images into tensors: check (files, bytes), decode (files, bytes, PIL images, arrays), convert channels, resize,
and batch.

Pre-flight (calling thread) decodes no file: it checks that each file exists and that its header reads (PIL `open`,
no pixel data), and reads the first `VERIFY_SAMPLE` files of a split through (PIL `verify`, which decodes nothing);
in-memory images (arrays, PIL images) are converted there once. A file is decoded each time its example is read:
in the DataLoader workers when there are some. A file that only fails then (truncated after a good header) is left
out of its batch, logged once (run.log) with the count so far, or stops the run with `on_bad_example: error`; a
batch left with no image takes the next readable one, so every step still trains. The same file fails the same way
at every read, so resume and the frozen-prefix cache stay exact. The collator stacks (C, S, S) rows and normalises
(one division and one subtraction per batch).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError, DataError
from .base import Examples
from .media import BadFiles, DecodedExamples, short_name, why_unreadable

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VERIFY_SAMPLE",
    "decode_image",
    "check_image",
    "prepare_column",
    "ImageColumn",
    "ImageExamples",
    "PixelCollator",
]

log = logging.getLogger("nb_finetune.data")

VERIFY_SAMPLE = 32  # files per split read through in pre-flight (a download that broke every file shows at once)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def parse_normalize(spec, channels: int, default=None) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """(mean, std, description) per channel for `normalize:` (imagenet | none | [mean, std])."""
    if spec is None:
        spec = default if default is not None else "imagenet"
    if isinstance(spec, str):
        s = spec.strip().lower()
        if s == "imagenet":
            mean, std, text = IMAGENET_MEAN, IMAGENET_STD, "imagenet"
        elif s in ("none", "off", "no"):
            return (0.0,) * channels, (1.0,) * channels, "none"
        else:
            raise ConfigError(f"normalize: {spec!r} is not understood; use imagenet, none or [mean, std]")
    elif isinstance(spec, (list, tuple)) and len(spec) == 2:
        mean, std = ([float(v)] if isinstance(v, (int, float)) else [float(a) for a in v] for v in spec)
        text = f"mean {list(mean)}, std {list(std)}"
        if any(v <= 0 for v in std):
            raise ConfigError("normalize: std values must be > 0")
    else:
        raise ConfigError(f"normalize: {spec!r} is not understood; use imagenet, none or [mean, std]")

    def fit(v):
        v = tuple(v)
        if len(v) == channels:
            return v
        if len(v) == 1:
            return v * channels
        if channels == 1:
            return (float(np.mean(v)),)
        if len(v) == 3:  # more bands than RGB: the RGB statistics, then their mean for the other bands
            return v + (float(np.mean(v)),) * (channels - 3) if channels > 3 else v[:channels]
        raise ConfigError(f"normalize: {len(v)} values for {channels} channels; give one value or one per channel")

    return fit(mean), fit(std), text


def _open(obj, base_dirs: list[Path]):
    from PIL import Image

    if isinstance(obj, Image.Image):
        return obj
    if isinstance(obj, dict):
        if obj.get("bytes"):
            return Image.open(io.BytesIO(obj["bytes"]))
        obj = obj.get("path")
    if isinstance(obj, bytes):
        return Image.open(io.BytesIO(obj))
    if isinstance(obj, (str, Path)):
        p = Path(obj).expanduser()
        if not p.is_absolute() and not p.exists():
            p = next((d / p for d in base_dirs if (d / p).exists()), p)
        if not p.exists():
            raise FileNotFoundError(f"no such file {str(obj)!r}")
        return Image.open(p)
    raise TypeError(f"cannot read a {type(obj).__name__} as an image")


def decode_image(obj, size: int, channels: int, base_dirs: list[Path] = ()):
    """One image -> (C, size, size) tensor: uint8 for 8-bit images, float32 for float arrays."""
    import torch
    import torch.nn.functional as F

    if isinstance(obj, (np.ndarray, list)) or hasattr(obj, "__array_interface__") and not hasattr(obj, "convert"):
        a = np.asarray(obj)
        if a.ndim == 2:
            a = a[..., None]
        if a.ndim != 3:
            raise ValueError(f"an image array must be (H, W) or (H, W, C), not {a.shape}")
        if a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3, 4):  # (C, H, W)
            a = np.moveaxis(a, 0, -1)
        t = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)
        t = _fit_channels(t, channels)
        integer = t.dtype == torch.uint8
        t = F.interpolate(t[None].float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
        return t.round().clamp(0, 255).to(torch.uint8) if integer else t
    from PIL import Image

    img = _open(obj, list(base_dirs))
    img.load()  # a truncated file fails here, not later in a worker
    if channels == 1:
        img = img.convert("L")
    elif channels == 3:
        img = img.convert("RGB")
    elif img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    a = np.asarray(img, dtype=np.uint8)
    t = torch.from_numpy(a.copy()).reshape(size, size, -1).permute(2, 0, 1)
    return _fit_channels(t, channels)


def _channel_problem(c: int, channels: int) -> str | None:
    """Why an image of `c` channels cannot feed a model reading `channels`, or None when it can."""
    if c == channels or (c == 4 and channels == 3) or c == 1 or (channels == 1 and c in (3, 4)):
        return None
    return f"the image has {c} channels but the model reads {channels}; set `channels: {c}`"


def _fit_channels(t, channels: int):
    c = t.shape[0]
    if (why := _channel_problem(c, channels)) is not None:
        raise ValueError(why)
    if c == channels:
        return t
    if c == 4 and channels == 3:  # RGBA: drop alpha
        return t[:3]
    if c == 1:
        return t.expand(channels, -1, -1).clone()
    import torch

    g = 0.299 * t[0].float() + 0.587 * t[1].float() + 0.114 * t[2].float()
    return (g.round().clamp(0, 255).to(torch.uint8) if t.dtype == torch.uint8 else g)[None]


def file_backed(obj) -> bool:
    """A path, encoded bytes or a {bytes, path} record: decoded when read, never in pre-flight."""
    if isinstance(obj, dict):
        return bool(obj.get("bytes") or obj.get("path"))
    return isinstance(obj, (str, Path, bytes))


def check_image(obj, channels: int, base_dirs=(), verify: bool = False) -> None:
    """Pre-flight check of a file-backed image without decoding it: it exists, its header reads (PIL `open`) and
    its bands fit `channels`; `verify`: PIL's `verify()` reads the whole file through too (no pixel decoding)."""
    img = _open(obj, list(base_dirs))
    try:
        bands = len(img.getbands())
        if channels not in (1, 3):  # 1 and 3 convert from any mode; other counts take L or RGB (others as RGB)
            why = _channel_problem(bands if img.mode in ("L", "RGB") else 3, channels)
            if why is not None:
                raise ValueError(why)
        if verify:
            img.verify()
    finally:
        img.close()


def prepare_column(values, size: int, channels: int, *, role: str, bad: BadFiles, error: bool, base_dirs=()):
    """(items, kept row numbers) of a column of images for `ImageColumn`: file-backed images checked and kept as
    they are (decoded when read), in-memory ones decoded now to (C, S, S) tensors. Unreadable ones are tallied in
    `bad` (a DataError with `error`); a channel count the model cannot read is a DataError."""
    items, kept, verified = [], [], 0
    for row, obj in enumerate(values):
        try:
            if file_backed(obj):
                check_image(obj, channels, base_dirs, verify=verified < VERIFY_SAMPLE)
                verified += 1
                items.append(obj)
            else:
                items.append(decode_image(obj, size, channels, base_dirs))
            kept.append(row)
        except ValueError as e:
            if "channels" in str(e):
                raise DataError(f"data.{role}: row {row}: {e}") from None
            bad.add(role, row, short_name(obj), str(e).splitlines()[0][:120], error=error, key="on_bad_example")
        except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, UnidentifiedImageError, ...
            bad.add(role, row, short_name(obj), why_unreadable(e), error=error, key="on_bad_example")
    return items, kept


class ImageColumn:
    """One split's images: (C, S, S) tensors already converted, or files decoded at each read (`decode(i)`).

    `rows`: each item's row in the split as pre-flight read it (what messages name); `role`: train or eval."""

    def __init__(self, items: list, rows: list[int], size: int, channels: int, base_dirs=(), role: str = "train"):
        self.items = items
        self.rows = rows
        self.size = size
        self.channels = channels
        self.base_dirs = list(base_dirs)
        self.role = role

    def __len__(self) -> int:
        return len(self.items)

    def decode(self, i: int):
        import torch

        v = self.items[i]
        return v if isinstance(v, torch.Tensor) else decode_image(v, self.size, self.channels, self.base_dirs)

    def name(self, i: int) -> str:
        return short_name(self.items[i])


def column_values(ds, col: str) -> list:
    """The raw values of an image column: undecoded {bytes, path} for an Image feature, arrays for Array3D."""
    import datasets

    feat = ds.features[col]
    if isinstance(feat, datasets.Image):
        return ds.cast_column(col, datasets.Image(decode=False))[col]
    if isinstance(feat, (datasets.Array2D, datasets.Array3D)):
        return list(ds.with_format("numpy")[col])
    return ds[col]


class ImageExamples(DecodedExamples, Examples):
    """Examples whose `pixel_values` are decoded when read and augmented then (training data only); a file that
    fails to decode is skipped or stops the run as `DecodedExamples` says."""

    kind = "image"

    def __init__(self, column: ImageColumn, labels, augment=None, *, error: bool = False):
        super().__init__({"pixel_values": column}, labels, lengths=np.ones(len(column), dtype=np.int64))
        self.augment = augment
        self._setup_decoding(column, error=error)

    def _item(self, i: int, x) -> dict[str, Any]:
        item = {"pixel_values": x, "idx": i}
        if self.labels is not None:
            item["labels"] = self.labels[i]
        if self.augment:
            x = x.float() / 255.0 if not x.dtype.is_floating_point else x
            item["pixel_values"] = self.augment(x)
        return item


class PixelCollator:
    """Stacks (C, S, S) rows and normalises: uint8 rows are scaled to [0, 1] first, float rows are taken as given
    in that range (augmented rows already are). Unreadable items are left out (a batch of only those takes the
    next readable image). Host keys: one `length` per image, `num_tokens` = images."""

    def __init__(self, mean, std):
        self.mean = tuple(mean)
        self.std = tuple(std)

    def pixels(self, rows):
        import torch

        scaled = [r.float() / 255.0 if not r.dtype.is_floating_point else r for r in rows]
        x = torch.stack(scaled)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        return (x - mean) / std

    def __call__(self, items):
        import torch

        items = [it for it in items if not it.get("unreadable")] or [items[0]["fallback"]]
        out = {"pixel_values": self.pixels([it["pixel_values"] for it in items])}
        if "labels" in items[0]:
            out["labels"] = torch.tensor([it["labels"] for it in items], dtype=torch.long)
        out["lengths"] = [1] * len(items)
        out["num_tokens"] = len(items)
        out["idx"] = [it["idx"] for it in items]
        return out
