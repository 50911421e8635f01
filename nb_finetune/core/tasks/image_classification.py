"""Image classification: one label per image, any `AutoModelForImageClassification` (new head sized to the labels)
or any `torch.nn.Module` (its classifier replaced); accuracy, top-5 accuracy, macro-F1 and the confusion matrix.

Data: a folder with one sub-folder per class, a CSV / DataFrame with an image-path column, a `datasets.Dataset` with
an `Image` feature, a list of PIL images, or `(X, y)` arrays (N, H, W[, C]). Pre-flight checks image files without
decoding them; each is decoded when its example is read, in the DataLoader workers (vision_data.py), and `augment:`
applies to training images there.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError, DataError, ModelError
from . import common as C
from .augment import parse_augment
from .base import Capabilities, Examples, Task, register
from .media import ActivationEstimate, BadFiles, find_media_column, media_kind, media_preflight, split_labels
from .text_classification import ClassificationMetric
from .vision_data import (
    ImageColumn,
    ImageExamples,
    PixelCollator,
    column_values,
    decode_image,
    parse_normalize,
    prepare_column,
)
from .vision_models import (
    ModuleClassifier,
    adapt_channels,
    find_head,
    first_conv,
    image_layer_map,
    load_named_model,
    replace_head,
)

__all__ = ["ImageClassification", "ImageClassificationMetric", "topk_accuracy"]

log = logging.getLogger("nb_finetune.tasks")


@register
class ImageClassification(Task):
    name = "image-classification"
    aliases = ("image", "vision", "image-classifier")
    title = "image classification"
    capabilities = Capabilities(prefix_cache=False, length_grouping=False, throughput_unit="images", mask_4d=False)
    default_metric = "eval_accuracy"
    metric_keys = ("accuracy", "f1")

    def __init__(self, cfg, **kw):
        super().__init__(cfg, **kw)
        self.kind = "hf"  # hf | module
        self.model_obj = None
        self.processor = None
        self.image_col = ""
        self.label_col: str | None = None
        self.label_map: dict[Any, int] = {}
        self.image_size = 224
        self.channels = 3
        self.model_channels = 3
        self.mean: tuple[float, ...] = ()
        self.std: tuple[float, ...] = ()
        self.norm_text = ""
        self.augment = parse_augment(None)
        self.bad = BadFiles()
        self.head_note = ""
        self.channel_note: str | None = None
        self._columns: dict[str, tuple[ImageColumn, list[int] | None]] = {}
        self._examples: list[ImageExamples] = []  # built for the run: their unreadable-file tallies
        self._base_dirs: list[Path] = []
        self._activations = ActivationEstimate()

    @classmethod
    def detect(cls, ds, cfg) -> str | None:
        found = media_kind(ds, cfg)
        if found and found[0] == "image":
            return f"images in '{found[1]}'"
        return None

    # ------------------------------------------------------------ calling thread
    def preflight(self) -> None:
        cfg = self.cfg
        C.require_model_and_data(cfg)
        self.augment = parse_augment(cfg.augment)
        # the frozen-prefix cache is exact only when every pass feeds the same pixels
        self.capabilities = Capabilities(
            prefix_cache=not self.augment, length_grouping=False, throughput_unit="images", mask_4d=False
        )
        self._resolve_model()
        self.image_col = media_preflight(self, "image")
        self._resolve_pixels()
        self._columns = {}
        self.train, self._columns["train"] = self._prepare(self.train, "train", self.bad)
        if self.eval is not None:
            self.eval, self._columns["eval"] = self._prepare(self.eval, "eval", self.bad)
        if self.num_train == 0:
            raise DataError("data.train: no readable image is left (every file was skipped)")

    def _resolve_model(self) -> None:
        import torch

        cfg, m = self.cfg, self.cfg.model
        if isinstance(m, str) and m.split(":", 1)[0] in ("timm", "torchvision") and ":" in m:
            self.kind, self.model_id = "named", m
            return
        if isinstance(m, torch.nn.Module):
            self.model_obj = m
            self.model_id = getattr(m, "name_or_path", "") or type(m).__name__
            is_hf = hasattr(m, "config") and "ForImageClassification" in type(m).__name__
            self.kind = "hf" if is_hf else "module"
            self.hf_config = m.config if is_hf else None
            if self.kind == "module":
                find_head(m, cfg.head)  # a wrong `head:` is an error in the cell
            return
        if cfg.head is not None:
            raise ConfigError(
                "Invalid finetune config: `head` names the classifier of a plain nn.Module given as {{net}}; "
                "a transformers model gets its new head by itself"
            )
        self.model_obj, self.hf_config, self.model_id = C.resolve_model(
            cfg, head_suffix="ForImageClassification", task_title=self.title
        )
        from transformers import AutoModelForImageClassification

        mapping = getattr(AutoModelForImageClassification, "_model_mapping", None)
        if mapping is not None:
            try:
                mapping[type(self.hf_config)]
            except KeyError:
                raise ModelError(
                    f"model: {self.model_id!r} ({getattr(self.hf_config, 'model_type', '?')}) has no image "
                    "classification head in transformers; pick a vision model (ViT, ConvNeXt, ResNet, "
                    "EfficientNet, Swin, ...) or pass any nn.Module as {{net}}"
                ) from None
        self.processor = _load_processor(self.model_id)

    def _resolve_pixels(self) -> None:
        cfg = self.cfg
        hc, proc = self.hf_config, self.processor
        if self.kind == "module" or self.kind == "named":
            conv = first_conv(self.model_obj) if self.model_obj is not None else None
            self.model_channels = conv[1].in_channels if conv else 3
            size = cfg.image_size or 224
            default_norm = "imagenet"
        else:
            self.model_channels = int(getattr(hc, "num_channels", 3) or 3)
            size = cfg.image_size or _processor_size(proc) or getattr(hc, "image_size", None) or 224
            if isinstance(size, (list, tuple)):
                size = size[0]
            native = getattr(hc, "image_size", None)
            if cfg.image_size and getattr(hc, "patch_size", None) and native and cfg.image_size != native:
                raise ConfigError(
                    f"Invalid finetune config: image_size {cfg.image_size}: this model's position embeddings are "
                    f"for {native} px images; use image_size: {native}"
                )
            default_norm = [list(proc.image_mean), list(proc.image_std)] if getattr(proc, "image_mean", None) else None
        self.image_size = int(size)
        self.channels = int(cfg.channels or self.model_channels)
        self.mean, self.std, self.norm_text = parse_normalize(cfg.normalize, self.channels, default_norm)

    def _prepare(self, ds, role: str, bad: BadFiles, col: str | None = None):
        """(ds without its unreadable rows, (ImageColumn, label ids)): files checked, not decoded."""
        col = col or self.image_col
        err = self.cfg.on_bad_example.value == "error"
        items, kept = prepare_column(
            column_values(ds, col), self.image_size, self.channels, role=role, bad=bad, error=err,
            base_dirs=self._base_dirs,
        )  # fmt: skip
        if len(kept) != len(ds):
            ds = ds.select(kept)
        column = ImageColumn(items, kept, self.image_size, self.channels, self._base_dirs, role)
        return ds, (column, split_labels(self, ds, role))

    def describe(self) -> list[str]:
        lines = super().describe()
        s = self.image_size
        lines.append(
            f"input: image column '{self.image_col}', label column '{self.label_col}', {s}x{s} px, "
            f"{self.channels} channel(s), normalize {self.norm_text}"
        )
        lines.append(f"head: {self.head_note or self._head_text()}")
        if self.channel_note or self.channels != self.model_channels:
            lines.append(
                self.channel_note
                or f"first convolution adapted {self.model_channels} -> {self.channels} input channels"
            )
        if self.augment:
            lines.append(f"augment (training only): {self.augment.describe()}")
        lines += self.bad.lines("image")
        late = sum(ex.num_unreadable for ex in self._examples)
        if late:
            lines.append(f"skipped {late} more unreadable image file(s) while reading (run.log names them)")
        return lines

    def _head_text(self) -> str:
        k = len(self.label_names)
        if self.kind == "module":
            return f"classifier of the {type(self.model_obj).__name__} replaced by a {k}-way linear layer"
        return f"new {k}-way classifier (cross-entropy)"

    # ------------------------------------------------------------ worker
    def build_model(self, *, meta: bool = False):
        import torch
        from transformers import AutoModelForImageClassification

        k = len(self.label_names)
        names = self.label_names
        if self.kind == "module" or self.kind == "named":
            if self.kind == "named":
                net, _ = load_named_model(self.model_id, k, meta=meta)
                self.model_obj = net if not meta else self.model_obj
            else:
                net = copy.deepcopy(self.model_obj) if meta else self.model_obj
            path, old = find_head(net, self.cfg.head)
            device = torch.device("meta") if meta else None
            old, new = replace_head(net, path, k, device=device)
            self.head_note = (
                f"'{path}' Linear({old.in_features} -> {old.out_features}) replaced by "
                f"Linear({new.in_features} -> {k})"
            )
            model = ModuleClassifier(net, names, path)
        elif self.model_obj is not None:
            model = copy.deepcopy(self.model_obj) if meta else self.model_obj
            if model.config.num_labels != k:
                path, _ = find_head(model, "classifier" if hasattr(model, "classifier") else None)
                replace_head(model, path, k, device=torch.device("meta") if meta else None)
            model.config.num_labels = k
            model.config.id2label = dict(enumerate(names))
            model.config.label2id = {n: i for i, n in enumerate(names)}
        else:
            model = C.from_pretrained(
                AutoModelForImageClassification,
                self.cfg,
                self.model_id,
                self.hf_config,
                meta=meta,
                num_labels=k,
                id2label=dict(enumerate(names)),
                label2id={n: i for i, n in enumerate(names)},
            )
        if self.channels != self.model_channels:
            self.channel_note = adapt_channels(model, self.channels)
        if self.cfg.dropout is not None and hasattr(model, "config"):
            C.set_dropout(model, self.cfg.dropout)
        return model

    def layer_map(self, model):
        return image_layer_map(model)

    def activation_bytes(self, model, layer_map, frozen: set[str], batch: int, precision: str) -> int:
        """What autograd keeps per image at `image_size` x `channels` (traced on the meta device), times the batch."""
        import torch

        s, c = self.image_size, self.channels

        def inputs():
            return {"pixel_values": torch.zeros(2, c, s, s), "labels": torch.zeros(2, dtype=torch.long)}

        patch = getattr(self.hf_config, "patch_size", None)
        tokens = (s // patch) ** 2 + 1 if isinstance(patch, int) and patch else 0
        return self._activations(model, layer_map, frozen, batch, precision, inputs, tokens, self.hf_config)

    def build_data(self) -> tuple[Examples, Examples | None]:
        self.bad.log("image")
        err = self.cfg.on_bad_example.value == "error"
        train = ImageExamples(*self._columns["train"], self.augment, error=err)
        ev = self._columns.get("eval")
        evald = ImageExamples(*ev, error=err) if ev is not None else None
        self._examples = [train, *([evald] if evald is not None else [])]
        return train, evald

    def encode(self, ds, *, role: str = "eval") -> Examples:
        col = find_media_column(ds, self.image_col if self.image_col in ds.column_names else None, "image", role)
        _, (column, labels) = self._prepare(ds, role, BadFiles(), col)
        return ImageExamples(column, labels, error=self.cfg.on_bad_example.value == "error")

    def load_eval(self, src):
        ds = super().load_eval(src)
        find_media_column(ds, self.image_col if self.image_col in ds.column_names else None, "image", "eval")
        return ds

    def collator(self):
        return PixelCollator(self.mean, self.std)

    def metric_names(self) -> list[str]:
        """Accuracy and F1, plus top-5 accuracy when there are more than five labels."""
        top5 = ["eval_top5_accuracy"] if len(self.label_names) > 5 else []
        return [*super().metric_names(), *top5]

    def metric(self, data: Examples):
        return ImageClassificationMetric(self.label_names)

    def predict(self, model, images, top_k: int = 5, batch_size: int = 32):
        """The top-k `{"label", "score"}` of each image (a path, a PIL image or an (H, W[, C]) array; or a list).

        One image gives one list of k dicts, best first; a list of images gives one such list per image."""
        if isinstance(images, np.ndarray):
            single = images.ndim in (2, 3)
        else:
            single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        k = max(1, min(int(top_k), len(self.label_names)))
        collate = self.collator()
        rows = []
        for i, obj in enumerate(items):
            try:
                rows.append(decode_image(obj, self.image_size, self.channels, self._base_dirs))
            except Exception as e:  # noqa: BLE001
                raise DataError(
                    f"predict: image {i} cannot be read: {(str(e).splitlines() or [''])[0][:200]}"
                ) from None
        device = C.model_device(model)

        def batches():
            for s in range(0, len(rows), batch_size):
                yield collate.pixels(rows[s : s + batch_size]).to(device)

        def top(m, x):
            probs = m(pixel_values=x).logits.float().softmax(-1).cpu()
            vals, idx = probs.topk(k, dim=-1)
            return [
                [{"label": self.label_names[j], "score": float(v)} for v, j in zip(vr.tolist(), ir.tolist())]
                for vr, ir in zip(vals, idx)
            ]

        out = C.batched_inference(model, batches(), top)
        return out[0] if single else out

    def save(self, model, path: Path) -> None:
        model.save_pretrained(path, safe_serialization=True)
        if self.processor is not None and self.channels == self.model_channels:
            self.processor.save_pretrained(path)


# --------------------------------------------------------------------------------------------- helpers
def _load_processor(model_id: str):
    try:
        from transformers import AutoImageProcessor

        return AutoImageProcessor.from_pretrained(model_id)
    except Exception:  # noqa: BLE001 - a checkpoint without a processor: the config's size, ImageNet statistics
        return None


def _processor_size(proc):
    size = getattr(proc, "size", None)
    if isinstance(size, dict):
        return size.get("height") or size.get("shortest_edge")
    return size if isinstance(size, int) else None


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the k highest logits (ties broken by index, as torch.topk)."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    if not len(labels):
        return 0.0
    top = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
    return float((top == labels[:, None]).any(-1).mean())


class ImageClassificationMetric(ClassificationMetric):
    """Accuracy, macro-F1, the confusion matrix and (more than 5 classes) top-5 accuracy: one transfer per batch."""

    def __init__(self, label_names: list[str]):
        super().__init__(label_names)
        self.top5_hits = 0
        self.seen = 0

    def update(self, outputs, batch, host) -> None:
        import torch

        logits, labels = outputs.logits, batch["labels"]
        k = min(5, logits.shape[-1])
        hit = (logits.topk(k, dim=-1).indices == labels[:, None]).any(-1).long()
        both = torch.stack([logits.argmax(-1), labels, hit]).cpu().numpy()
        np.add.at(self.confusion, (both[1], both[0]), 1)
        self.top5_hits += int(both[2].sum())
        self.seen += both.shape[1]

    def compute(self) -> dict[str, float]:
        out = super().compute()
        if len(self.names) > 5:
            out["top5_accuracy"] = self.top5_hits / self.seen if self.seen else 0.0
        return out
