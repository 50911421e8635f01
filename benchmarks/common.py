"""The workload every arm trains on, and the measurements every arm takes the same way."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bench_env(tmp: Path) -> dict:
    """The environment of every arm's process: this checkout first on the path (then whatever the caller's
    PYTHONPATH holds, e.g. the GPU bootstrap's packages), the hub offline, a private run index."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {
        **os.environ,
        "PYTHONPATH": path,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "NB_FINETUNE_INDEX_DIR": str(tmp / "index"),
    }


def run_interleaved(
    child: list[str],
    plan: list[tuple[str, str, str]],
    reps: int,
    *,
    show: Callable[[dict], str] = lambda res: f"wall {res['wall_s']:6.1f}s",
    keep_going: bool = False,
    tmp: Path | None = None,
) -> list[dict]:
    """Run each (arm, spec JSON, label) of `plan` once per repetition, in plan order (A B C A B C ...), each in a
    fresh process `python <child...> ARM SPEC_FILE OUT_FILE`; returns the arms' JSON results with `rep` added.

    A failed arm ends the benchmark, unless `keep_going`: then it is recorded as {arm, rep, label, failed: last line
    of its error} and the other arms go on (the GPU runs: one arm's missing library must not cost the others)."""
    tmp = Path(tmp or tempfile.mkdtemp())
    env = bench_env(tmp)
    spec_files: dict[str, Path] = {}
    runs, t0 = [], time.time()
    for rep in range(reps):
        for arm, spec_json, label in plan:
            if spec_json not in spec_files:
                spec_files[spec_json] = tmp / f"spec-{len(spec_files)}.json"
                spec_files[spec_json].write_text(spec_json)
            res_file = tmp / f"{arm}-{spec_files[spec_json].stem}-{rep}.json"
            res_file.unlink(missing_ok=True)
            started = time.time()
            proc = subprocess.run(
                [sys.executable, *child, arm, str(spec_files[spec_json]), str(res_file)],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
            )
            where = f"{arm} ({label})" if label else arm
            if proc.returncode != 0 or not res_file.is_file():
                print(proc.stderr[-3000:], file=sys.stderr)
                if not keep_going:
                    raise SystemExit(f"arm {where} failed")
                last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
                runs.append({"arm": arm, "rep": rep, "label": label, "failed": last[0][:300]})
                print(f"[{time.time() - t0:6.0f}s] rep {rep} {where} FAILED: {last[0][:200]}", file=sys.stderr)
                continue
            res = json.loads(res_file.read_text())
            res["rep"] = rep
            runs.append(res)
            print(
                f"[{time.time() - t0:6.0f}s] rep {rep} {where:<8} {show(res)} ({time.time() - started:.0f}s with "
                "start-up)",
                file=sys.stderr,
                flush=True,
            )
    return runs


def write_results(out: Path, doc: dict) -> None:
    doc["created"] = time.strftime("%Y-%m-%d %H:%M:%S")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))


def machine_info() -> dict:
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def require_cuda() -> None:
    """`--gpu` on a machine without CUDA: one line, exit status 1, before anything is installed or built."""
    try:
        import torch
    except ImportError:
        raise SystemExit("--gpu: torch is not installed here; install a CUDA build of torch first") from None
    if not torch.cuda.is_available():
        raise SystemExit(
            f"--gpu: no CUDA device here (torch {torch.__version__} sees none); run it on a machine with an NVIDIA "
            "GPU, or leave out --gpu for the CPU benchmark"
        )


def tokenizer_dir() -> str:
    """MiniLM's tokenizer: from the installed default-model package, else from the GPU bootstrap's assets."""
    sys.path.insert(0, str(ROOT))
    from nb_finetune import examples
    from nb_finetune.errors import FinetuneError

    try:
        return examples.default_model_path()
    except FinetuneError:
        from .gpu_bootstrap import ASSETS

        carried = ASSETS / "minilm-tokenizer"
        if (carried / "tokenizer_config.json").is_file():
            return str(carried)
        raise


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
        tok = AutoTokenizer.from_pretrained(tokenizer_dir())
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
