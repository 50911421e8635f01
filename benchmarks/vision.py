"""Vision benchmark: EfficientNet-Lite0 (ImageNet weights) on scikit-learn's digits at 128 px, three arms.

    python -m benchmarks vision            # 512 images x 3 epochs, k in {0, last stage}, 3 repetitions
    python -m benchmarks vision --quick    # 128 images x 2 epochs, 2 repetitions
    python -m benchmarks vision --table benchmarks/results/vision-quick.json

Arms, each in a fresh process, interleaved (T P N T P N ...), the same pixels (decoded and resized once, saved
under the work directory) and the same hyperparameters:
  T  the Hugging Face `Trainer` with an image collator as its image-classification guide writes it
     (per-example normalisation in the dataset, `torch.stack` in the collator);
  P  a plain PyTorch loop (DataLoader over the tensors, AdamW, a linear schedule), the data order of nb_finetune;
  M  the same plain loop with freed CPU memory kept in the process, as nb_finetune does on a CPU run
     (`keep_cpu_memory`, core/train/cpu_memory.py): N / M is nb_finetune's own overhead over the bare loop;
  N  nb_finetune: `finetune()` with the network as `{{net}}`.
k = 0 trains everything; k = "last stage" freezes the stem and blocks 0-14 (of 16) in every arm (frozen BatchNorm
in eval mode in P and N). The bound for k > 0 is what skipping the frozen prefix after the first epoch would give,
from FLOPs measured per group with torch's FlopCounterMode (EfficientNet's stages are not alike).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .common import ROOT, run_interleaved, write_results

ARMS = ("T", "P", "M", "N")
NAMES = {
    "T": "HF Trainer + image collator",
    "P": "plain PyTorch loop",
    "M": "plain loop + kept CPU memory",
    "N": "nb_finetune",
}
BLOCKS = 16
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class VSpec:
    work_dir: str
    n_train: int = 512
    epochs: int = 3
    batch_size: int = 32
    image_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    k: int = 0  # frozen blocks (with the stem); BLOCKS - 1 = everything but the last stage
    threads: int = 1  # torch threads in every arm (a shared CPU: OpenMP spinning on busy cores distorts 2+ threads)

    @property
    def data_file(self) -> Path:
        return Path(self.work_dir) / f"digits-{self.n_train}-{self.image_size}.npz"


def prepare(spec: VSpec) -> None:
    import numpy as np

    from nb_finetune import examples
    from nb_finetune.core.tasks.vision_data import decode_image

    if spec.data_file.exists():
        return
    x, y = examples.digits()
    order = np.random.default_rng(spec.seed).permutation(len(x))[: spec.n_train]
    pix = np.stack([decode_image(x[i], spec.image_size, 3).numpy() for i in order])
    spec.data_file.parent.mkdir(parents=True, exist_ok=True)
    np.savez(spec.data_file, pixels=pix, labels=np.array([int(y[i]) for i in order]))


def _load(spec: VSpec):
    import numpy as np
    import torch

    d = np.load(spec.data_file)
    return torch.from_numpy(d["pixels"]), torch.from_numpy(d["labels"]).long()


def _net(num_labels: int = 10):
    import torch

    from nb_finetune import examples

    torch.manual_seed(0)
    net = examples.efficientnet_lite0()
    net._fc = torch.nn.Linear(net._fc.in_features, num_labels)
    return net


def _frozen_modules(net, k: int):
    if k <= 0:
        return []
    return [net._conv_stem, net._bn0, *list(net._blocks)[:k]]


def _normalise(x):
    import torch

    mean = torch.tensor(MEAN).view(1, -1, 1, 1)
    std = torch.tensor(STD).view(1, -1, 1, 1)
    return (x.float() / 255.0 - mean) / std


def arm_plain(spec: VSpec) -> dict:
    import torch
    import torch.nn.functional as F

    from nb_finetune.core.data import epoch_batches

    pixels, labels = _load(spec)
    net = _net()
    frozen = _frozen_modules(net, spec.k)
    for m in frozen:
        m.requires_grad_(False)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=0.01)
    steps = spec.epochs * -(-spec.n_train // spec.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / steps))
    import numpy as np

    lengths = np.ones(spec.n_train, dtype=np.int64)
    t0, loss = time.perf_counter(), None
    net.train()
    for m in frozen:
        m.eval()
    for epoch in range(spec.epochs):
        for idx in epoch_batches(lengths, spec.batch_size, spec.seed, epoch, False):
            idx = torch.from_numpy(idx)
            out = net(_normalise(pixels[idx]))
            loss = F.cross_entropy(out, labels[idx])
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
    wall = time.perf_counter() - t0
    return {"loop_s": wall, "train_loss": float(loss)}


def arm_trainer(spec: VSpec) -> dict:
    import torch
    import torch.nn.functional as F
    from transformers import Trainer, TrainingArguments

    pixels, labels = _load(spec)

    class Digits(torch.utils.data.Dataset):  # the guide's per-example transform: normalise on access
        def __len__(self):
            return len(labels)

        def __getitem__(self, i):
            return {"pixel_values": _normalise(pixels[i][None])[0], "labels": int(labels[i])}

    def collate_fn(examples):
        return {
            "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
            "labels": torch.tensor([e["labels"] for e in examples]),
        }

    class Wrapped(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, pixel_values, labels=None):
            logits = self.net(pixel_values)
            return {"loss": F.cross_entropy(logits, labels), "logits": logits}

    net = _net()
    for m in _frozen_modules(net, spec.k):
        m.requires_grad_(False)
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=spec.batch_size,
        num_train_epochs=spec.epochs,
        learning_rate=spec.lr,
        weight_decay=0.01,
        lr_scheduler_type="linear",
        save_strategy="no",
        logging_steps=10**6,
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        seed=spec.seed,
        disable_tqdm=True,
        use_cpu=True,
    )
    trainer = Trainer(model=Wrapped(net), args=args, train_dataset=Digits(), data_collator=collate_fn)
    out = trainer.train()
    return {"loop_s": float(out.metrics["train_runtime"]), "train_loss": float(out.training_loss)}


def arm_nb(spec: VSpec) -> dict:
    import numpy as np

    from nb_finetune import finetune

    pixels, labels = _load(spec)
    x = np.ascontiguousarray(pixels.permute(0, 2, 3, 1).numpy())  # (N, H, W, 3) at image_size: no resizing
    net = _net(1000)  # nb_finetune replaces the head itself
    cfg = {
        "model": net,
        "data": {"train": (x, labels.numpy()), "eval_split": 0},
        "image_size": spec.image_size,
        "epochs": spec.epochs,
        "batch_size": spec.batch_size,
        "lr": spec.lr,
        "warmup": 0,
        "weight_decay": 0.01,
        "max_grad_norm": None,
        "precision": "fp32",
        "seed": spec.seed,
        "log_every": 10**6,
        "save_every": None,
        "eval_every": None,
        "freeze": f"bottom {spec.k}" if spec.k else None,
        "output_dir": tempfile.mkdtemp(),
    }
    run = finetune(cfg, name="bench", wait=True)
    assert run.status == "finished", run.error
    res = run._result
    loss = run.history["loss"].dropna()
    return {"loop_s": res.timings["loop_s"], "train_loss": float(loss.iloc[-1]) if len(loss) else None}


def group_flops(spec: VSpec) -> dict:
    """Forward FLOPs per image of the frozen prefix (stem + blocks 0..k-1) and of the rest, measured."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    net = _net().eval()
    x = torch.zeros(1, 3, spec.image_size, spec.image_size)
    cut = {}

    def grab(mod, args, out):
        cut["x"] = out

    h = net._blocks[spec.k - 1].register_forward_hook(grab) if spec.k else None
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        net(x)
    total = fc.get_total_flops()
    if h is None:
        return {"total": total, "tail": total}
    h.remove()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        y = cut["x"]
        for b in list(net._blocks)[spec.k :]:
            y = b(y)
        y = net._bn1(net._conv_head(y)).mean((2, 3))
        net._fc(y)
    return {"total": total, "tail": fc.get_total_flops()}


def cache_bound(fl: dict, epochs: int) -> float:
    """Speed-up over running the frozen prefix every epoch when epochs 2.. skip it (backward ~ 2x forward)."""
    prefix, tail = fl["total"] - fl["tail"], fl["tail"]
    every = prefix + 3 * tail
    return epochs * every / (every + (epochs - 1) * 3 * tail)


def _child(arm: str, spec_file: str, out_file: str) -> None:
    spec = VSpec(**json.loads(Path(spec_file).read_text()))
    import torch

    if spec.threads:
        torch.set_num_threads(spec.threads)  # nb_finetune's worker thread re-applies a count set by the user
    torch.manual_seed(spec.seed)
    if arm == "M":
        from nb_finetune.core.train.cpu_memory import keep_cpu_memory

        with keep_cpu_memory() as kept:
            res = arm_plain(spec)
        res["kept_cpu_memory"] = kept
    else:
        res = {"T": arm_trainer, "P": arm_plain, "N": arm_nb}[arm](spec)
    res.update(arm=arm, k=spec.k, images_per_s=spec.n_train * spec.epochs / res["loop_s"])
    Path(out_file).write_text(json.dumps(res))


def run_all(spec: VSpec, reps: int, out: Path, arms=ARMS, ks=(0, BLOCKS - 1)) -> dict:
    prepare(spec)
    bounds = {}
    for k in ks:
        bounds[k] = cache_bound(group_flops(VSpec(**{**asdict(spec), "k": k})), spec.epochs) if k else 1.0
    plan = [(arm, json.dumps(asdict(VSpec(**{**asdict(spec), "k": k}))), f"k={k}") for k in ks for arm in arms]
    runs = run_interleaved(
        ["-m", "benchmarks.vision", "--child"], plan, reps, show=lambda r: f"{r['images_per_s']:7.1f} images/s"
    )
    import torch

    doc = {
        "spec": asdict(spec),
        "reps": reps,
        "bounds": {str(k): v for k, v in bounds.items()},
        "machine": {"cpu_count": os.cpu_count(), "torch": torch.__version__},
        "runs": runs,
    }
    write_results(out, doc)
    return doc


def summarize(doc: dict) -> tuple[str, str]:
    """The table and the summary line, from the raw results alone."""
    spec = doc["spec"]
    groups: dict[tuple[int, str], list[float]] = {}
    for r in doc["runs"]:
        groups.setdefault((r["k"], r["arm"]), []).append(r["images_per_s"])
    lines = [
        f"workload: EfficientNet-Lite0 (ImageNet) on {spec['n_train']} digits at {spec['image_size']} px x "
        f"{spec['epochs']} epochs, batch {spec['batch_size']}, fp32; {doc['reps']} repetitions, medians (spread "
        f"min-max); {doc['machine']['cpu_count']} CPU cores, {spec.get('threads', 0) or 'default'} torch thread(s)",
        "",
        "| k | arm | images/s | spread | N / arm |",
        "|---|---|---:|---:|---:|",
    ]
    parts = []
    for k in sorted({k for k, _ in groups}):
        n = statistics.median(groups[(k, "N")])
        for arm in ARMS:
            vals = groups.get((k, arm))
            if not vals:
                continue
            med = statistics.median(vals)
            ratio = f"{n / med:.2f}x" if arm != "N" else ""
            if arm == "N" and k:
                ratio = f"bound {doc['bounds'][str(k)]:.2f}x over P"
            label = "0" if k == 0 else f"{k} (last stage trains)"
            lines.append(f"| {label} | {arm} {NAMES[arm]} | {med:.1f} | {min(vals):.1f}-{max(vals):.1f} | {ratio} |")
        if not all((k, a) in groups for a in ("P", "T")):
            continue
        p, t = statistics.median(groups[(k, "P")]), statistics.median(groups[(k, "T")])
        own = f", N/M {n / statistics.median(groups[(k, 'M')]):.2f}x" if (k, "M") in groups else ""
        if k == 0:
            parts.append(f"k=0: N/P {n / p:.2f}x (target >= 0.97), N/T {n / t:.2f}x (target >= 1.2){own}")
        else:
            bound = doc["bounds"][str(k)]
            parts.append(
                f"k={k}: N/P {n / p:.2f}x = {n / p / bound:.2f} of the bound {bound:.2f}x (target >= 0.9){own}"
            )
    return "\n".join(lines), " | ".join(parts)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--child":
        _child(*argv[1:4])
        return 0
    p = argparse.ArgumentParser(prog="python -m benchmarks vision", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--quick", action="store_true", help="128 images x 2 epochs, 2 repetitions")
    p.add_argument("--reps", type=int)
    p.add_argument("--arms", default=",".join(ARMS), help="a subset, e.g. P,M,N (default: all)")
    p.add_argument("--k", type=int, action="append", help=f"only this k (0 or {BLOCKS - 1}); repeatable")
    p.add_argument("--out", type=Path)
    p.add_argument("--table", type=Path, help="only print the table of an existing raw results file")
    p.add_argument("--work-dir", default=str(ROOT / "benchmarks" / ".work"))
    args = p.parse_args(argv)
    if args.table:
        doc = json.loads(args.table.read_text())
    else:
        spec = VSpec(work_dir=args.work_dir, n_train=128 if args.quick else 512, epochs=2 if args.quick else 3)
        reps = args.reps or (2 if args.quick else 3)
        out = args.out or ROOT / "benchmarks" / "results" / f"vision{'-quick' if args.quick else ''}.json"
        arms = tuple(a for a in args.arms.split(",") if a)
        if unknown := [a for a in arms if a not in ARMS]:
            p.error(f"unknown arm(s) {unknown}: choose from {', '.join(ARMS)}")
        doc = run_all(spec, reps, out, arms, tuple(args.k or (0, BLOCKS - 1)))
        print(f"raw results: {out}")
    table, line = summarize(doc)
    print(table)
    print()
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
