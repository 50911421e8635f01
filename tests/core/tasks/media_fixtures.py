"""Test helpers for the image and audio tasks: tiny vision models from configs, a small CNN, coloured-square image
folders (the class is the dominant colour: learnable in a few steps)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]

COLOURS = {"red": 0, "green": 1, "blue": 2}


def colour_images(n_per_class: int, seed: int = 0, size: int = 24, classes=COLOURS) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for name, ch in classes.items():
        for _ in range(n_per_class):
            a = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
            a[..., ch] += 140
            xs.append(a)
            ys.append(name)
    return np.stack(xs), ys


def image_folder(root: Path, n_per_class: int = 10, seed: int = 0, size: int = 24) -> Path:
    from PIL import Image

    xs, ys = colour_images(n_per_class, seed, size)
    for i, (a, y) in enumerate(zip(xs, ys)):
        (root / y).mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(root / y / f"{i:03d}.png")
    return root


def tiny_vit_dir(d: Path, image_size: int = 24) -> str:
    from transformers import ViTConfig, ViTForImageClassification

    if not (d / "config.json").exists():
        conf = ViTConfig(
            image_size=image_size,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=2,
        )
        ViTForImageClassification(conf).save_pretrained(d)
    return str(d)


def tiny_convnext_dir(d: Path) -> str:
    from transformers import ConvNextConfig, ConvNextForImageClassification

    if not (d / "config.json").exists():
        conf = ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 2], num_stages=2, image_size=32, num_labels=2)
        ConvNextForImageClassification(conf).save_pretrained(d)
    return str(d)


def small_cnn(num_classes: int = 1000, in_ch: int = 3):
    """A plain nn.Module shaped like EfficientNet-Lite (stem conv + BN, a ModuleList of blocks with BN, a head
    conv, `_fc`): what a user passes as {{net}}."""
    import torch
    import torch.nn as nn

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(c)

        def forward(self, x):
            return x + torch.relu(self.bn(self.conv(x)))

    class SmallNet(nn.Module):
        def __init__(self):
            super().__init__()
            self._conv_stem = nn.Conv2d(in_ch, 8, 3, stride=2, padding=1, bias=False)
            self._bn0 = nn.BatchNorm2d(8)
            self._blocks = nn.ModuleList([Block(8) for _ in range(3)])
            self._conv_head = nn.Conv2d(8, 16, 1)
            self._fc = nn.Linear(16, num_classes)

        def forward(self, x):
            x = torch.relu(self._bn0(self._conv_stem(x)))
            for b in self._blocks:
                x = b(x)
            x = torch.relu(self._conv_head(x)).mean((2, 3))
            return self._fc(x)

    torch.manual_seed(0)
    return SmallNet()


WORDS = ("yes", "no", "stop")
VOICES = ("en", "en-us", "en+f3", "en-gb-scotland")


def spoken_words(root: Path, words=WORDS, voices=VOICES, speeds=(130, 185)) -> Path:
    """Synthetic speech made here with espeak-ng: one sub-folder per word, one wav per voice and speed (22,050 Hz,
    espeak's own rate). Not a recording of people: fine for tests and demos."""

    for w in words:
        (root / w).mkdir(parents=True, exist_ok=True)
        for v in voices:
            for s in speeds:
                out = root / w / f"{v}-{s}.wav"
                if not out.exists():
                    subprocess.run(["espeak-ng", "-v", v, "-s", str(s), "-w", str(out), w], check=True)
    return root


def tiny_wav2vec2_dir(d: Path) -> str:
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification

    if not (d / "config.json").exists():
        conf = Wav2Vec2Config(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            conv_dim=(16, 16, 16),
            conv_kernel=(10, 4, 4),
            conv_stride=(5, 4, 4),
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=2,
            classifier_proj_size=16,
            num_labels=2,
        )
        Wav2Vec2ForSequenceClassification(conf).save_pretrained(d)
        Wav2Vec2FeatureExtractor(sampling_rate=16000).save_pretrained(d)
    return str(d)


def tiny_ast_dir(d: Path) -> str:
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    if not (d / "config.json").exists():
        conf = ASTConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            num_mel_bins=32,
            max_length=64,
            patch_size=16,
            frequency_stride=16,
            time_stride=16,
            num_labels=2,
        )
        ASTForAudioClassification(conf).save_pretrained(d)
        ASTFeatureExtractor(num_mel_bins=32, max_length=64).save_pretrained(d)
    return str(d)
