"""Training-time image augmentation on tensors (no torchvision needed): each op takes one (C, H, W) float image and
returns one of the same shape, drawing from torch's default generator (seeded per DataLoader worker, or the run's
seed in the main process). Evaluation never augments: only the training `Examples` carry a pipeline.

Config: `augment: [random_resized_crop, hflip, {rotate: 15}, {color_jitter: {brightness: 0.3}}]`; a bare number is
an op's main parameter (`rotate: 15` = up to 15 degrees).
"""

from __future__ import annotations

import difflib
import math
from typing import Any

from ...errors import ConfigError

__all__ = ["OPS", "Augment", "parse_augment"]


def _rand(lo: float = 0.0, hi: float = 1.0) -> float:
    import torch

    return lo + (hi - lo) * float(torch.rand(()))


def hflip(x, p: float = 0.5):
    return x.flip(-1) if _rand() < p else x


def vflip(x, p: float = 0.5):
    return x.flip(-2) if _rand() < p else x


def rotate(x, degrees: float = 15.0, p: float = 1.0):
    """Rotate by a uniform angle in [-degrees, degrees] about the centre (bilinear, zeros outside)."""
    import torch
    import torch.nn.functional as F

    if _rand() >= p:
        return x
    a = math.radians(_rand(-degrees, degrees))
    c, s = math.cos(a), math.sin(a)
    theta = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=torch.float32)[None]
    grid = F.affine_grid(theta, [1, *x.shape], align_corners=False)
    return F.grid_sample(x[None].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]


def random_resized_crop(x, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3)):
    """A random area fraction in `scale` and aspect ratio in `ratio`, resized back to the image's size."""
    import torch.nn.functional as F

    _, h, w = x.shape
    for _ in range(10):
        area = h * w * _rand(*scale)
        r = math.exp(_rand(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(area * r))), int(round(math.sqrt(area / r)))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = int(_rand(0, h - ch + 1)), int(_rand(0, w - cw + 1))
            crop = x[:, top : top + ch, left : left + cw]
            return F.interpolate(crop[None].float(), size=(h, w), mode="bilinear", align_corners=False)[0]
    return x


def color_jitter(x, brightness: float = 0.2, contrast: float = 0.2, saturation: float = 0.2):
    """Random brightness, contrast and (3 channels) saturation factors in [1 - v, 1 + v]."""
    x = x.float()
    if brightness:
        x = x * _rand(1 - brightness, 1 + brightness)
    if contrast:
        m = x.mean()
        x = (x - m) * _rand(1 - contrast, 1 + contrast) + m
    if saturation and x.shape[0] == 3:
        gray = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
        x = (x - gray) * _rand(1 - saturation, 1 + saturation) + gray
    return x


def random_erasing(x, p: float = 0.25, scale=(0.02, 0.2)):
    """With probability p, zero a random rectangle covering a `scale` fraction of the image."""
    if _rand() >= p:
        return x
    _, h, w = x.shape
    area = h * w * _rand(*scale)
    side = max(1, int(math.sqrt(area)))
    eh, ew = min(h, side), min(w, max(1, int(area / side)))
    top, left = int(_rand(0, h - eh + 1)), int(_rand(0, w - ew + 1))
    x = x.float().clone()
    x[:, top : top + eh, left : left + ew] = 0
    return x


OPS = {
    "hflip": (hflip, "p"),
    "vflip": (vflip, "p"),
    "rotate": (rotate, "degrees"),
    "random_resized_crop": (random_resized_crop, "scale"),
    "color_jitter": (color_jitter, None),
    "random_erasing": (random_erasing, "p"),
}
_ALIASES = {"horizontal_flip": "hflip", "flip": "hflip", "vertical_flip": "vflip", "rotation": "rotate",
            "crop": "random_resized_crop", "resized_crop": "random_resized_crop", "jitter": "color_jitter",
            "erasing": "random_erasing", "cutout": "random_erasing"}  # fmt: skip


class Augment:
    """A picklable pipeline of (op name, kwargs)."""

    def __init__(self, steps: list[tuple[str, dict[str, Any]]]):
        self.steps = steps

    def __call__(self, x):
        for name, kw in self.steps:
            x = OPS[name][0](x, **kw)
        return x

    def __bool__(self) -> bool:
        return bool(self.steps)

    def describe(self) -> str:
        return ", ".join(
            n + (f"({', '.join(f'{k}={v}' for k, v in kw.items())})" if kw else "") for n, kw in self.steps
        )


def parse_augment(spec) -> Augment:
    """`augment:` value -> Augment; ConfigError naming the op or parameter that is wrong."""
    import inspect

    if spec in (None, False, [], "none", "off"):
        return Augment([])
    items = spec if isinstance(spec, (list, tuple)) else [spec]
    steps = []
    for item in items:
        if isinstance(item, str):
            name, param = item, None
        elif isinstance(item, dict) and len(item) == 1:
            name, param = next(iter(item.items()))
        else:
            raise ConfigError(
                f"augment: {item!r} is not an augmentation; use a name (`hflip`) or one name with its parameters "
                "(`{rotate: 15}`)"
            )
        key = str(name).strip().lower().replace("-", "_")
        key = _ALIASES.get(key, key)
        if key not in OPS:
            close = difflib.get_close_matches(key, list(OPS), n=1, cutoff=0.5)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"augment: unknown augmentation {name!r}; use {', '.join(OPS)}.{hint}")
        fn, main = OPS[key]
        allowed = [p for p in inspect.signature(fn).parameters if p != "x"]
        if param is None or param is True:
            kw = {}
        elif isinstance(param, dict):
            kw = dict(param)
        elif main is not None:
            kw = {main: param}
        else:
            raise ConfigError(f"augment: {key} takes named parameters ({', '.join(allowed)}), not {param!r}")
        bad = [k for k in kw if k not in allowed]
        if bad:
            raise ConfigError(f"augment: {key} has no parameter {bad[0]!r}; it takes {', '.join(allowed)}")
        for k, v in kw.items():
            if isinstance(v, list):
                kw[k] = tuple(float(a) for a in v)
            elif not isinstance(v, (int, float)):
                raise ConfigError(f"augment: {key}.{k} = {v!r} is not a number")
        steps.append((key, kw))
    return Augment(steps)
