"""Sound into arrays: check (files, bytes), decode (files through soundfile, bytes, arrays with a rate), mix to mono,
resample with soxr to the feature extractor's rate, crop or drop long clips. Speech recognition reuses these.

Pre-flight (calling thread) decodes no file beyond the first `VERIFY_SAMPLE` of a split: it checks that each exists
and reads its header (soundfile.info: frames and rate, so `max_duration: drop` is decided there, and reported);
in-memory clips are resampled there once. A file is decoded, resampled and cropped each time its example is read: in
the DataLoader workers when there are some. A file that only fails then is left out of its batch and counted, or
stops the run with `on_bad_example: error` (DecodedExamples in media.py)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ...errors import DataError
from .base import Examples
from .media import BadFiles, DecodedExamples, short_name, why_unreadable

__all__ = [
    "VERIFY_SAMPLE",
    "read_audio",
    "resample",
    "audio_header",
    "audio_values",
    "AudioColumn",
    "AudioExamples",
    "prepare_audio_column",
]

VERIFY_SAMPLE = 32  # files per split read through in pre-flight (a download that broke every file shows at once)


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


def _source(obj, base_dirs=()):
    """What soundfile opens for a file-backed clip (its path or a buffer of its bytes), or None for one in memory."""
    if isinstance(obj, dict):
        if obj.get("array") is not None:
            return None
        if obj.get("bytes"):
            return io.BytesIO(obj["bytes"])
        obj = obj.get("path")
    if isinstance(obj, bytes):
        return io.BytesIO(obj)
    if isinstance(obj, (str, Path)):
        p = Path(obj).expanduser()
        if not p.is_absolute() and not p.exists():
            p = next((Path(d) / p for d in base_dirs if (Path(d) / p).exists()), p)
        if not p.exists():
            raise FileNotFoundError(f"no such file {str(obj)!r}")
        return p
    return None


def read_audio(obj, default_rate: int | None, base_dirs=()) -> tuple[np.ndarray, int]:
    """(mono float32 samples, sampling rate) of a path, {bytes|path|array, sampling_rate} dict or an array."""
    src = _source(obj, base_dirs)
    if src is not None:
        return _sf_read(src)
    if isinstance(obj, dict):
        rate = obj.get("sampling_rate") or default_rate
        return _mono(np.asarray(obj["array"], dtype=np.float32)), _need_rate(rate)
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


def _soundfile():
    try:
        import soundfile as sf
    except ImportError:
        raise DataError(
            "reading audio files needs soundfile: `pip install soundfile` (or nb_finetune[audio])"
        ) from None
    return sf


def _sf_read(src) -> tuple[np.ndarray, int]:
    a, rate = _soundfile().read(src, dtype="float32", always_2d=True)
    if a.shape[0] == 0:
        raise ValueError("the file holds no samples")
    return _mono(a), int(rate)


def audio_header(src) -> tuple[int, int]:
    """(frames, sampling rate) from a file's header (soundfile.info): no sample is decoded."""
    info = _soundfile().info(src)
    if info.frames <= 0:
        raise ValueError("the file holds no samples")
    return int(info.frames), int(info.samplerate)


def resampled_length(frames: int, rate: int, target: int) -> int:
    """Samples a clip of `frames` at `rate` has at `target` Hz, as soxr makes them."""
    return frames if rate == target else int(frames * target / rate + 0.5)


def audio_values(ds, col: str) -> list:
    """Raw values of an audio column: undecoded {bytes, path} for an Audio feature, else as stored."""
    import datasets

    feat = ds.features[col]
    if isinstance(feat, datasets.Audio):
        return ds.cast_column(col, datasets.Audio(decode=False))[col]
    return ds[col]


class AudioColumn:
    """One split's clips at `rate` Hz, cropped to `limit` samples: in-memory ones converted in pre-flight, files
    decoded, resampled and cropped at each read (`decode(i)`). `rows`: each item's row in the split as pre-flight read
    it (what messages name); `role`: train or eval."""

    def __init__(self, items: list, rows: list[int], rate: int, limit: int | None, base_dirs=(), role: str = "train"):
        self.items = items
        self.rows = rows
        self.rate = rate
        self.limit = limit
        self.base_dirs = list(base_dirs)
        self.role = role

    def __len__(self) -> int:
        return len(self.items)

    def decode(self, i: int) -> np.ndarray:
        v = self.items[i]
        if isinstance(v, np.ndarray):
            return v
        x, rate = read_audio(v, None, self.base_dirs)
        x = resample(x, rate, self.rate)
        return x[: self.limit] if self.limit is not None else x

    def name(self, i: int) -> str:
        return short_name(self.items[i])


def prepare_audio_column(
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
    """(AudioColumn, kept row numbers, lengths at `target_rate` after cropping, {'resampled': n, 'cropped': n}).

    Files are not decoded: each must exist and its header read (frames and rate: what `max_duration` crops or drops
    by), and the first `VERIFY_SAMPLE` of the split are read through; in-memory clips are resampled and cropped now.
    Unreadable ones are tallied in `bad` (a DataError with `error`), clips dropped for their length in
    `bad.dropped`."""
    items, kept, lengths, counts, verified = [], [], [], {"resampled": 0, "cropped": 0}, 0
    limit = int(max_seconds * target_rate) if max_seconds else None
    for row, obj in enumerate(values):
        try:
            src = _source(obj, base_dirs)
            if src is None:
                x, rate = read_audio(obj, default_rate)
                item = resample(x, rate, target_rate)
                n = len(item)
            else:
                if verified < VERIFY_SAMPLE:  # read through: a download that broke every file shows at once
                    x, rate = _sf_read(src)
                    frames = len(x)
                else:
                    frames, rate = audio_header(src)
                verified += 1
                item, n = obj, resampled_length(frames, rate, target_rate)
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - soundfile raises LibsndfileError, RuntimeError, ...
            bad.add(role, row, short_name(obj), why_unreadable(e), error=error, key="on_bad_example")
            continue
        if rate != target_rate:
            counts["resampled"] += 1
        if limit is not None and n > limit:
            if long_audio == "drop":
                bad.dropped.append((role, row, f"longer than max_duration {max_seconds:g} s"))
                continue
            n = limit
            counts["cropped"] += 1
            if isinstance(item, np.ndarray):
                item = item[:limit]
        items.append(item)
        kept.append(row)
        lengths.append(n)
    return AudioColumn(items, kept, target_rate, limit, base_dirs, role), kept, lengths, counts


class AudioExamples(DecodedExamples, Examples):
    """Examples whose `input_values` (a clip at the extractor's rate) are decoded when read; see DecodedExamples."""

    kind = "audio"

    def __init__(self, column: AudioColumn, labels, lengths, *, error: bool = False):
        super().__init__({"input_values": column}, labels, lengths=np.asarray(lengths, dtype=np.int64))
        self._setup_decoding(column, error=error)

    def _item(self, i: int, x) -> dict:
        item = {"input_values": x, "idx": i}
        if self.labels is not None:
            item["labels"] = self.labels[i]
        return item
