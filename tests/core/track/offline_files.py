"""Readers for the trackers' offline files: W&B's `run-*.wandb` (a record log of protobuf messages in 32 KiB
blocks), Comet's offline zip (`messages.json`, one JSON message a line) and TensorBoard event files."""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

_BLOCK, _HEADER = 32768, 7  # block size; per-chunk header: crc32 (4), length (2), type (1)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def wandb_records(path: Path) -> list:
    """Every `Record` protobuf in a `.wandb` file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    pos, out, parts = 7, [], b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        if kind == 0:
            pos += left
            continue
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == _FULL:
            out.append(chunk)
        elif kind == _FIRST:
            parts = chunk
        elif kind == _MIDDLE:
            parts += chunk
        elif kind == _LAST:
            out.append(parts + chunk)
    recs = []
    for raw in out:
        rec = pb.Record()
        rec.ParseFromString(raw)
        recs.append(rec)
    return recs


def wandb_history(run_dir: Path) -> tuple[dict[str, list[tuple[int, float]]], list]:
    """metric -> [(step, value)] from the offline run's history records, and the artifact records."""
    (path,) = Path(run_dir).glob("wandb/offline-run-*/run-*.wandb")
    hist: dict[str, list] = {}
    artifacts = []
    for rec in wandb_records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item}
            step = row.get("trainer/step")
            for k, v in row.items():
                if not k.startswith("_") and k != "trainer/step" and isinstance(v, (int, float)):
                    hist.setdefault(k, []).append((step, v))
        elif kind == "artifact":
            artifacts.append(rec.artifact)
    return hist, artifacts


def comet_messages(run_dir: Path) -> list[dict]:
    (zpath,) = Path(run_dir).glob("comet/*.zip")
    with zipfile.ZipFile(zpath) as z:
        return [json.loads(line) for line in z.read("messages.json").decode().splitlines() if line.strip()]


def comet_history(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    hist: dict[str, list] = {}
    for m in comet_messages(run_dir):
        if m["type"] == "metric_msg":
            metric = m["payload"]["metric"]
            hist.setdefault(metric["metricName"], []).append((metric["step"], float(metric["metricValue"])))
    return hist


def tensorboard_history(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(Path(run_dir) / "tensorboard"))
    acc.Reload()
    return {tag: [(ev.step, ev.value) for ev in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
