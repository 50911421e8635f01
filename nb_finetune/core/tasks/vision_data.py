"""Images into tensors: decode (files, bytes, PIL images, arrays), convert channels, resize, and batch.

Images are decoded once, on the calling thread (so an unreadable file is found before the run starts), into one
(N, C, S, S) tensor: uint8 for 8-bit images, float32 for float arrays. A training item is one row of it, augmented
in the DataLoader worker when the run augments; the collator stacks rows and normalises (cheap: one division and
one subtraction per batch).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError, DataError
from .base import Examples
from .media import BadFiles, short_name

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "decode_image", "decode_column", "ImageExamples", "PixelCollator"]

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


def _fit_channels(t, channels: int):
    c = t.shape[0]
    if c == channels:
        return t
    if c == 4 and channels == 3:  # RGBA: drop alpha
        return t[:3]
    if c == 1:
        return t.expand(channels, -1, -1).clone()
    if channels == 1 and c in (3, 4):
        import torch

        g = 0.299 * t[0].float() + 0.587 * t[1].float() + 0.114 * t[2].float()
        return (g.round().clamp(0, 255).to(torch.uint8) if t.dtype == torch.uint8 else g)[None]
    raise ValueError(f"the image has {c} channels but the model reads {channels}; set `channels: {c}`")


def decode_column(values, size: int, channels: int, *, role: str, bad: BadFiles, error: bool, base_dirs=()):
    """(tensor (N, C, S, S), kept row numbers) for a column of images; unreadable ones are tallied in `bad`."""
    import torch

    out, kept = [], []
    for row, obj in enumerate(values):
        try:
            out.append(decode_image(obj, size, channels, base_dirs))
            kept.append(row)
        except ValueError as e:
            if "channels" in str(e):
                raise DataError(f"data.{role}: row {row}: {e}") from None
            bad.add(role, row, short_name(obj), str(e).splitlines()[0][:120], error=error, key="on_bad_example")
        except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, UnidentifiedImageError, ...
            why = (str(e).splitlines() or [type(e).__name__])[0][:120]
            bad.add(role, row, short_name(obj), why, error=error, key="on_bad_example")
    if not out:
        return torch.zeros((0, channels, size, size), dtype=torch.uint8), kept
    if len({t.dtype for t in out}) > 1:  # 8-bit files next to float arrays: everything as floats in [0, 1]
        out = [t if t.dtype.is_floating_point else t.float() / 255.0 for t in out]
    return torch.stack(out), kept


def column_values(ds, col: str) -> list:
    """The raw values of an image column: undecoded {bytes, path} for an Image feature, arrays for Array3D."""
    import datasets

    feat = ds.features[col]
    if isinstance(feat, datasets.Image):
        return ds.cast_column(col, datasets.Image(decode=False))[col]
    if isinstance(feat, (datasets.Array2D, datasets.Array3D)):
        return list(ds.with_format("numpy")[col])
    return ds[col]


class ImageExamples(Examples):
    """Examples whose `pixel_values` rows are augmented when read (training data only)."""

    def __init__(self, pixels, labels, augment=None):
        super().__init__({"pixel_values": pixels}, labels, lengths=np.ones(len(pixels), dtype=np.int64))
        self.augment = augment

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = super().__getitem__(i)
        if self.augment:
            x = item["pixel_values"]
            x = x.float() / 255.0 if not x.dtype.is_floating_point else x
            item["pixel_values"] = self.augment(x)
        return item


class PixelCollator:
    """Stacks (C, S, S) rows and normalises: uint8 rows are scaled to [0, 1] first, float rows are taken as given
    in that range (augmented rows already are). Host keys: one `length` per image, `num_tokens` = images."""

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

        out = {"pixel_values": self.pixels([it["pixel_values"] for it in items])}
        if "labels" in items[0]:
            out["labels"] = torch.tensor([it["labels"] for it in items], dtype=torch.long)
        out["lengths"] = [1] * len(items)
        out["num_tokens"] = len(items)
        out["idx"] = [it["idx"] for it in items]
        return out
