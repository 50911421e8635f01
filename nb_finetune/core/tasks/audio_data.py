"""Sound into arrays: decode (files through soundfile, bytes, arrays with a rate), mix to mono, resample with soxr
to the feature extractor's rate, crop or drop long clips. Speech recognition reuses these."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ...errors import DataError
from .media import BadFiles, short_name

__all__ = ["read_audio", "resample", "audio_values", "decode_audio_column"]


def resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    """`x` (1-D float32) from `rate` to `target` Hz with soxr (high quality); unchanged when the rates agree."""
    if rate == target:
        return x
    try:
        import soxr
    except ImportError:
        raise DataError(
            f"audio at {rate} Hz needs resampling to {target} Hz: `pip install soxr` (or nb_finetune[audio])"
        ) from None
    return soxr.resample(x, rate, target, quality="HQ").astype(np.float32, copy=False)


def read_audio(obj, default_rate: int | None, base_dirs=()) -> tuple[np.ndarray, int]:
    """(mono float32 samples, sampling rate) of a path, {bytes|path|array, sampling_rate} dict or an array."""
    if isinstance(obj, dict):
        if obj.get("array") is not None:
            rate = obj.get("sampling_rate") or default_rate
            return _mono(np.asarray(obj["array"], dtype=np.float32)), _need_rate(rate)
        if obj.get("bytes"):
            return _sf_read(io.BytesIO(obj["bytes"]))
        obj = obj.get("path")
    if isinstance(obj, bytes):
        return _sf_read(io.BytesIO(obj))
    if isinstance(obj, (str, Path)):
        p = Path(obj).expanduser()
        if not p.is_absolute() and not p.exists():
            p = next((Path(d) / p for d in base_dirs if (Path(d) / p).exists()), p)
        if not p.exists():
            raise FileNotFoundError(f"no such file {str(obj)!r}")
        return _sf_read(p)
    a = np.asarray(obj, dtype=np.float32)
    return _mono(a), _need_rate(default_rate)


def _need_rate(rate):
    if not rate:
        raise DataError(
            "audio given as plain arrays needs its sampling rate: set `sampling_rate: <Hz>` under data: "
            "(or pass predict(..., sampling_rate=<Hz>))"
        )
    return int(rate)


def _mono(a: np.ndarray) -> np.ndarray:
    if a.ndim == 2:  # (T, channels) as soundfile gives it, or (channels, T)
        a = a.mean(1) if a.shape[1] <= 8 else a.mean(0)
    if a.ndim != 1:
        raise ValueError(f"an audio clip must be 1-D samples (or samples x channels), not shape {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float32)


def _sf_read(src) -> tuple[np.ndarray, int]:
    try:
        import soundfile as sf
    except ImportError:
        raise DataError(
            "reading audio files needs soundfile: `pip install soundfile` (or nb_finetune[audio])"
        ) from None
    a, rate = sf.read(src, dtype="float32", always_2d=True)
    if a.shape[0] == 0:
        raise ValueError("the file holds no samples")
    return _mono(a), int(rate)


def audio_values(ds, col: str) -> list:
    """Raw values of an audio column: undecoded {bytes, path} for an Audio feature, else as stored."""
    import datasets

    feat = ds.features[col]
    if isinstance(feat, datasets.Audio):
        return ds.cast_column(col, datasets.Audio(decode=False))[col]
    return ds[col]


def decode_audio_column(
    values,
    target_rate: int,
    *,
    role: str,
    bad: BadFiles,
    error: bool,
    default_rate: int | None = None,
    max_seconds: float | None = None,
    long_audio: str = "crop",
    base_dirs=(),
):
    """(list of float32 clips at `target_rate`, kept row numbers, {'resampled': n, 'cropped': n})."""
    clips, kept, counts = [], [], {"resampled": 0, "cropped": 0}
    limit = int(max_seconds * target_rate) if max_seconds else None
    for row, obj in enumerate(values):
        try:
            x, rate = read_audio(obj, default_rate, base_dirs)
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - soundfile raises LibsndfileError, RuntimeError, ...
            why = (str(e).splitlines() or [type(e).__name__])[0][:120]
            bad.add(role, row, short_name(obj), why, error=error, key="on_bad_example")
            continue
        if rate != target_rate:
            x = resample(x, rate, target_rate)
            counts["resampled"] += 1
        if limit is not None and len(x) > limit:
            if long_audio == "drop":
                bad.dropped.append((role, row, f"longer than max_duration {max_seconds:g} s"))
                continue
            x = x[:limit]
            counts["cropped"] += 1
        clips.append(x)
        kept.append(row)
    return clips, kept, counts
