"""Audio classification: one label per clip, any `AutoModelForAudioClassification` (wav2vec2, HuBERT, AST, the
Whisper encoder) with a new head; accuracy, macro-F1 and the confusion matrix; throughput in seconds of audio per
second.

Data: a column of audio files (wav / flac / ogg through soundfile), arrays with `data.sampling_rate`, a
`datasets.Dataset` with an `Audio` feature, or a folder with one sub-folder per class. Pre-flight reads each file's
header (rate and length: `max_duration` crops or drops by it) and the first files of a split through; each clip is
decoded when its example is read (in the DataLoader workers when there are some), mixed to mono, resampled (soxr) to
the feature extractor's rate and cropped (audio_data.py); the feature extractor runs per batch in the collator
(padding to the longest clip of the batch; batches grouped by length).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DataError, ModelError
from . import common as C
from .audio_data import AudioColumn, AudioExamples, audio_values, prepare_audio_column, read_audio, resample
from .base import Capabilities, Examples, Task, register
from .media import ActivationEstimate, BadFiles, find_media_column, media_kind, media_preflight, split_labels
from .text_classification import ClassificationMetric
from .vision_models import image_layer_map

__all__ = ["AudioClassification", "AudioCollator"]


@register
class AudioClassification(Task):
    name = "audio-classification"
    aliases = ("audio", "sound-classification", "speech-classification", "keyword-spotting")
    title = "audio classification"
    capabilities = Capabilities(
        prefix_cache=False, length_grouping=True, throughput_unit="seconds of audio", mask_4d=False
    )
    default_metric = "eval_accuracy"
    metric_keys = ("accuracy", "f1")

    def __init__(self, cfg, **kw):
        super().__init__(cfg, **kw)
        self.model_obj = None
        self.extractor = None
        self.rate = 16000
        self.audio_col = ""
        self.label_col: str | None = None
        self.label_map: dict[Any, int] = {}
        self.bad = BadFiles()
        self.counts: dict[str, int] = {"resampled": 0, "cropped": 0}
        self._columns: dict[str, tuple[AudioColumn, list | None, list[int]]] = {}
        self._examples: list[AudioExamples] = []  # built for the run: their unreadable-file tallies
        self._base_dirs: list[Path] = []
        self._activations = ActivationEstimate()

    @classmethod
    def detect(cls, ds, cfg) -> str | None:
        found = media_kind(ds, cfg)
        if found and found[0] == "audio":
            return f"audio in '{found[1]}'"
        return None

    # ------------------------------------------------------------ calling thread
    def preflight(self) -> None:
        import torch
        from transformers import AutoModelForAudioClassification

        cfg = self.cfg
        C.require_model_and_data(cfg)
        mapping = AutoModelForAudioClassification._model_mapping
        if isinstance(cfg.model, torch.nn.Module):
            heads = {getattr(v, "__name__", "") for v in mapping.values() if not isinstance(v, tuple)}
            if type(cfg.model).__name__ not in heads or not hasattr(cfg.model, "config"):
                raise ModelError(
                    f"model: {{{{...}}}} is a {type(cfg.model).__name__}; audio classification needs an audio "
                    "classification model object (Wav2Vec2ForSequenceClassification, ASTForAudioClassification, "
                    "...), or a hub id / directory (the head is then added for you)"
                )
            self.model_obj, self.hf_config = cfg.model, cfg.model.config
            self.model_id = getattr(cfg.model, "name_or_path", "") or type(cfg.model).__name__
        else:
            _, self.hf_config, self.model_id = C.resolve_model(
                cfg, head_suffix="ForAudioClassification", task_title=self.title
            )
            try:
                mapping[type(self.hf_config)]
            except KeyError:
                raise ModelError(
                    f"model: {self.model_id!r} ({getattr(self.hf_config, 'model_type', '?')}) has no audio "
                    "classification head in transformers; pick wav2vec2, HuBERT, AST, Whisper, ..."
                ) from None
        self.extractor = _feature_extractor(cfg.tokenizer or self.model_id, self.hf_config, cfg.trust_remote_code)
        self.rate = int(getattr(self.extractor, "sampling_rate", 16000) or 16000)
        self.audio_col = media_preflight(self, "audio")
        self._columns = {}
        self.train, self._columns["train"] = self._prepare(self.train, "train", self.bad)
        if self.eval is not None:
            self.eval, self._columns["eval"] = self._prepare(self.eval, "eval", self.bad)
        if self.num_train == 0:
            raise DataError("data.train: no readable audio clip is left (every file was skipped or dropped)")

    def _prepare(self, ds, role: str, bad: BadFiles, col: str | None = None):
        """(ds without its unreadable or dropped rows, (AudioColumn, label ids, lengths)): headers read, files not
        decoded."""
        column, kept, lengths, counts = prepare_audio_column(
            audio_values(ds, col or self.audio_col),
            self.rate,
            role=role,
            bad=bad,
            error=self.cfg.on_bad_example.value == "error",
            default_rate=self.cfg.data.sampling_rate,
            max_seconds=self.cfg.max_duration,
            long_audio=self.cfg.long_audio.value,
            base_dirs=self._base_dirs,
        )
        if bad is self.bad:
            for k, v in counts.items():
                self.counts[k] += v
        if len(kept) != len(ds):
            ds = ds.select(kept)
        return ds, (column, split_labels(self, ds, role), lengths)

    def describe(self) -> list[str]:
        lines = super().describe()
        lines.append(
            f"input: audio column '{self.audio_col}', label column '{self.label_col}', mono at {self.rate} Hz "
            f"({type(self.extractor).__name__})"
        )
        lines.append(f"head: new {len(self.label_names)}-way classifier (cross-entropy)")
        if self.counts["resampled"]:
            lines.append(f"resampled {self.counts['resampled']} clip(s) to {self.rate} Hz (soxr)")
        if self.counts["cropped"]:
            lines.append(f"cropped {self.counts['cropped']} clip(s) to max_duration {self.cfg.max_duration:g} s")
        lines += self.bad.lines("audio")
        late = sum(ex.num_unreadable for ex in self._examples)
        if late:
            lines.append(f"skipped {late} more unreadable audio file(s) while reading (run.log names them)")
        return lines

    # ------------------------------------------------------------ worker
    def build_model(self, *, meta: bool = False):
        import copy

        from transformers import AutoModelForAudioClassification

        names = self.label_names
        head = dict(
            num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)}
        )
        if self.model_obj is not None:
            model = copy.deepcopy(self.model_obj) if meta else self.model_obj
            if model.config.num_labels != len(names):
                raise DataError(
                    f"model: the model object has {model.config.num_labels} labels but the data has {len(names)} "
                    f"({names[:10]}); build it with num_labels={len(names)}"
                )
            return model
        model = C.from_pretrained(
            AutoModelForAudioClassification, self.cfg, self.model_id, self.hf_config, meta=meta, **head
        )
        if self.cfg.dropout is not None and not meta:
            C.set_dropout(model, self.cfg.dropout)
        return model

    def layer_map(self, model):
        return image_layer_map(model)

    def activation_bytes(self, model, layer_map, frozen: set[str], batch: int, precision: str) -> int:
        """What autograd keeps per clip as long as the longest training clip (at most `max_duration`) at the
        extractor's rate, its features as the collator makes them (traced on the meta device), times the batch."""
        import torch

        samples = self.longest_samples()

        def inputs():
            feats = self.collator().features([np.zeros(samples, dtype=np.float32)] * 2)
            return {**feats, "labels": torch.zeros(2, dtype=torch.long)}

        stride = int(np.prod(getattr(self.hf_config, "conv_stride", None) or [320]))
        return self._activations(model, layer_map, frozen, batch, precision, inputs, samples // stride, self.hf_config)

    def longest_samples(self) -> int:
        """Samples of the longest clip a training batch can hold (clips are cropped or dropped at `max_duration`)."""
        lengths = self._columns["train"][2] if "train" in self._columns else []
        if lengths:
            return max(lengths)
        return int((self.cfg.max_duration or 1.0) * self.rate)

    def build_data(self) -> tuple[Examples, Examples | None]:
        self.bad.log("audio")
        err = self.cfg.on_bad_example.value == "error"
        train = AudioExamples(*self._columns["train"], error=err)
        ev = self._columns.get("eval")
        evald = AudioExamples(*ev, error=err) if ev is not None else None
        self._examples = [train, *([evald] if evald is not None else [])]
        return train, evald

    def encode(self, ds, *, role: str = "eval") -> Examples:
        col = find_media_column(ds, self.audio_col if self.audio_col in ds.column_names else None, "audio", role)
        _, (column, labels, lengths) = self._prepare(ds, role, BadFiles(), col)
        return AudioExamples(column, labels, lengths, error=self.cfg.on_bad_example.value == "error")

    def load_eval(self, src):
        ds = super().load_eval(src)
        find_media_column(ds, self.audio_col if self.audio_col in ds.column_names else None, "audio", "eval")
        return ds

    def forward(self, model, batch: dict[str, Any]):
        """The model's loss. wav2vec2 and HuBERT draw their SpecAugment masks from numpy's global RNG, which no
        seed of the run's and no checkpoint holds: it is seeded from the run's torch stream (which both hold) before
        each training forward, so the same seed draws the same masks, and a resumed run those it would have drawn."""
        if model.training:
            import torch

            np.random.seed(int(torch.randint(0, 2**31 - 1, (), dtype=torch.int64)))
        out = model(**batch)
        return out.loss, out

    def collator(self):
        return AudioCollator(self.extractor, self.rate)

    def metric(self, data: Examples):
        return ClassificationMetric(self.label_names)

    def predict(self, model, audio, sampling_rate: int | None = None, top_k: int = 5, batch_size: int = 16):
        """The top-k `{"label", "score"}` of each clip (a file path, an array with `sampling_rate`, or a list).

        One clip gives one list of k dicts, best first; a list of clips gives one such list per clip."""
        single = isinstance(audio, (str, Path, dict)) or (isinstance(audio, np.ndarray) and audio.ndim == 1)
        items = [audio] if single else list(audio)
        clips = []
        for i, obj in enumerate(items):
            try:
                x, rate = read_audio(obj, sampling_rate or self.cfg.data.sampling_rate, self._base_dirs)
            except DataError:
                raise
            except Exception as e:  # noqa: BLE001
                raise DataError(
                    f"predict: clip {i} cannot be read: {(str(e).splitlines() or [''])[0][:200]}"
                ) from None
            clips.append(resample(x, rate, self.rate))
        k = max(1, min(int(top_k), len(self.label_names)))
        collate, device = self.collator(), C.model_device(model)

        def batches():
            for s in range(0, len(clips), batch_size):
                b = collate.features(clips[s : s + batch_size])
                yield {key: v.to(device) for key, v in b.items()}

        def top(m, b):
            vals, idx = m(**b).logits.float().softmax(-1).cpu().topk(k, dim=-1)
            return [
                [{"label": self.label_names[j], "score": float(v)} for v, j in zip(vr.tolist(), ir.tolist())]
                for vr, ir in zip(vals, idx)
            ]

        out = C.batched_inference(model, batches(), top)
        return out[0] if single else out

    def save(self, model, path: Path) -> None:
        model.save_pretrained(path, safe_serialization=True)
        self.extractor.save_pretrained(path)


def _feature_extractor(ref, hf_config, trust_remote_code: bool):
    """The checkpoint's feature extractor; without one, the default extractor of its architecture."""
    import transformers

    try:
        return transformers.AutoFeatureExtractor.from_pretrained(str(ref), trust_remote_code=trust_remote_code)
    except Exception:  # noqa: BLE001 - checkpoints built from a config carry none: the architecture's default
        kind = getattr(hf_config, "model_type", "")
        if kind == "audio-spectrogram-transformer":
            return transformers.ASTFeatureExtractor(
                num_mel_bins=getattr(hf_config, "num_mel_bins", 128), max_length=getattr(hf_config, "max_length", 1024)
            )
        if kind == "whisper":
            return transformers.WhisperFeatureExtractor(feature_size=getattr(hf_config, "num_mel_bins", 80))
        return transformers.Wav2Vec2FeatureExtractor(return_attention_mask=kind not in ("wav2vec2",))


class AudioCollator:
    """Runs the feature extractor on the batch's clips (padding to the longest); host lengths in seconds of audio,
    so the throughput reads as seconds of audio per second. Unreadable items are left out (a batch of only those takes
    the next readable clip)."""

    def __init__(self, extractor, rate: int):
        self.extractor = extractor
        self.rate = rate

    def features(self, clips) -> dict:
        kw = {"padding": True} if "Wav2Vec2" in type(self.extractor).__name__ else {}
        enc = self.extractor(list(clips), sampling_rate=self.rate, return_tensors="pt", **kw)
        return {k: v for k, v in enc.items() if k in ("input_values", "input_features", "attention_mask")}

    def __call__(self, items):
        import torch

        items = [it for it in items if not it.get("unreadable")] or [items[0]["fallback"]]
        out = self.features([it["input_values"] for it in items])
        if "labels" in items[0]:
            out["labels"] = torch.tensor([it["labels"] for it in items], dtype=torch.long)
        seconds = [len(it["input_values"]) / self.rate for it in items]
        out["lengths"] = seconds
        out["num_tokens"] = sum(seconds)
        out["idx"] = [it["idx"] for it in items]
        return out
