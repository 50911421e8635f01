"""The workload every arm trains on, and the measurements every arm takes the same way."""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Spec:
    """One benchmark setting. Every arm receives the same spec (as JSON) in a fresh process."""

    work_dir: str
    n_train: int = 1024  # a multiple of batch_size: every batch is full, so all arms see the same batches
    n_eval: int = 500
    epochs: int = 3
    batch_size: int = 32
    max_length: int = 64
    layers: int = 6
    hidden: int = 256
    heads: int = 4
    intermediate: int = 1024
    lr: float = 1e-4
    warmup_steps: int = 10
    weight_decay: float = 0.01
    seed: int = 0
    k: int = 0  # frozen blocks (with the embeddings)
    threads: int = 0  # torch threads; 0 = torch's default
    device: str = "cpu"  # "cpu" or "cuda"
    precision: str = "fp32"  # "fp32" or "bf16" (the GPU workload)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Spec:
        return cls(**json.loads(text))

    @property
    def model_dir(self) -> Path:
        return Path(self.work_dir) / f"bert-{self.layers}x{self.hidden}"

    @property
    def train_file(self) -> Path:
        return Path(self.work_dir) / f"train-{self.n_train}-{self.seed}.jsonl"

    @property
    def eval_file(self) -> Path:
        return Path(self.work_dir) / f"eval-{self.n_eval}.jsonl"


def prepare(spec: Spec) -> None:
    """Build the model (random init from a config, MiniLM's real tokenizer) and the data files, once."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    sys.path.insert(0, str(ROOT))
    from nb_finetune import examples

    Path(spec.work_dir).mkdir(parents=True, exist_ok=True)
    if not (spec.model_dir / "config.json").is_file():
        tok = AutoTokenizer.from_pretrained(examples.default_model_path())
        cfg = BertConfig(
            vocab_size=tok.vocab_size,
            hidden_size=spec.hidden,
            num_hidden_layers=spec.layers,
            num_attention_heads=spec.heads,
            intermediate_size=spec.intermediate,
            max_position_embeddings=512,
            num_labels=2,
            id2label={0: "negative", 1: "positive"},
            label2id={"negative": 0, "positive": 1},
        )
        torch.manual_seed(spec.seed)
        BertForSequenceClassification(cfg).save_pretrained(spec.model_dir)
        tok.save_pretrained(spec.model_dir)
    if not spec.train_file.is_file() or not spec.eval_file.is_file():
        df = examples.movie_reviews()
        train, test = examples.train_test_split(df, test_size=spec.n_eval, seed=0)
        train = train.sample(n=spec.n_train, random_state=spec.seed).reset_index(drop=True)
        train[["text", "label"]].to_json(spec.train_file, orient="records", lines=True)
        test[["text", "label"]].to_json(spec.eval_file, orient="records", lines=True)


def load_split(path: Path):
    import pandas as pd

    return pd.read_json(path, lines=True)


@dataclass
class SyncCounter:
    """Counts Python-level reads of tensor values (`item`, `__bool__`, `tolist`, `cpu`, `__float__`, `__int__`)
    on the calling thread(s) while installed: on a GPU each one is a host-device sync. torch's host-side Adam step
    counter (read by design without a sync) is not counted."""

    reads: int = 0
    threads: set = field(default_factory=set)
    _saved: list = field(default_factory=list)

    def install(self) -> None:
        import torch

        for name in ("item", "__bool__", "tolist", "cpu", "__float__", "__int__"):
            orig = getattr(torch.Tensor, name)

            def patched(t, *a, _orig=orig, **k):
                if not self.threads or threading.get_ident() in self.threads:
                    caller = sys._getframe(1).f_code
                    if not (caller.co_name == "_get_value" and "optim" in caller.co_filename):
                        self.reads += 1
                return _orig(t, *a, **k)

            self._saved.append((name, orig))
            setattr(torch.Tensor, name, patched)

    def remove(self) -> None:
        import torch

        for name, orig in self._saved:
            setattr(torch.Tensor, name, orig)
        self._saved.clear()


def frozen_modules(model, k: int) -> list:
    """The embeddings and the first k blocks of a BERT classifier (what every arm freezes)."""
    if k <= 0:
        return []
    return [model.bert.embeddings, *list(model.bert.encoder.layer[:k])]


def freeze_in_eval_mode(model, k: int) -> None:
    """Freeze the bottom k blocks and keep them in eval mode whenever the model is put in train mode (the
    policy nb_finetune uses by default; applied to every arm so they do the same computation)."""
    mods = frozen_modules(model, k)
    for m in mods:
        for p in m.parameters():
            p.requires_grad_(False)
    if not mods:
        return
    orig_train = model.train

    def train(mode: bool = True):
        orig_train(mode)
        if mode:
            for m in mods:
                m.eval()
        return model

    model.train = train
    model.train()


def accuracy(model, tokenizer, spec: Spec) -> float:
    """Held-out accuracy, computed the same way for every arm (not timed)."""
    import torch

    df = load_split(spec.eval_file)
    device = next(model.parameters()).device
    labels = torch.tensor([1 if x == "positive" else 0 for x in df.label], device=device)
    model.eval()
    preds = []
    with torch.inference_mode():
        for i in range(0, len(df), 64):
            enc = tokenizer(
                list(df.text[i : i + 64]),
                truncation=True,
                max_length=spec.max_length,
                padding=True,
                return_tensors="pt",
            ).to(device)
            preds.append(model(**enc).logits.argmax(-1))
    return float((torch.cat(preds) == labels).float().mean())


def flop_bound(layers: int, k: int, epochs: int) -> float:
    """Best possible speed-up of a frozen-prefix cache over a tuned loop with the same freezing (see issue 5)."""
    no_cache = 3 * layers - 2 * k
    return epochs * no_cache / (no_cache + (epochs - 1) * 3 * (layers - k))
