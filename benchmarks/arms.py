"""One arm of the benchmark in this (fresh) process; writes its measurements as JSON.

    python -m benchmarks.arms {B0,B1,B2,N} SPEC_JSON OUT_JSON

B0  HF Trainer as a notebook user writes it: the tokenizer pads every example to max_length.
B1  HF Trainer tuned: dynamic padding, length-grouped batches, NaN/Inf filter off, fused AdamW.
B2  a plain Accelerate loop with the same collator and batches as nb_finetune.
N   nb_finetune.finetune (length-grouped batches, no host syncs between log points, frozen-prefix cache).

Every arm sees the same examples in the same batches in the same order (the length-grouped plan of
nb_finetune.core.data.epoch_batches; for B0 the order does not change its cost), the same model, seed, schedule
length, effective batch, precision (fp32 on CPU) and frozen-block policy (frozen blocks in eval mode).
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

from .common import ROOT, Spec, SyncCounter, accuracy, freeze_in_eval_mode, load_split

sys.path.insert(0, str(ROOT))


def _median(values):
    import statistics

    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _labels(df) -> list[int]:
    return [1 if x == "positive" else 0 for x in df.label]


class _PlanSampler:
    """Yields nb_finetune's length-grouped order, a new epoch on every iteration."""

    def __init__(self, lengths, spec: Spec):
        self.lengths, self.spec, self.epoch = lengths, spec, 0

    def __iter__(self):
        from nb_finetune.core.data import epoch_batches

        plan = epoch_batches(self.lengths, self.spec.batch_size, self.spec.seed, self.epoch, True)
        self.epoch += 1
        for b in plan:
            yield from (int(i) for i in b)

    def __len__(self):
        return len(self.lengths)


def _lengths(tok, texts, spec):
    import numpy as np

    enc = tok(list(texts), truncation=True, max_length=spec.max_length)
    return np.array([len(x) for x in enc["input_ids"]])


def run_trainer(spec: Spec, tuned: bool, counter: SyncCounter) -> dict:
    import datasets
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    tok = AutoTokenizer.from_pretrained(spec.model_dir)
    df = load_split(spec.train_file)
    lengths = _lengths(tok, df.text, spec)
    ds = datasets.Dataset.from_dict({"text": list(df.text), "label": _labels(df)})
    pad = False if tuned else "max_length"
    ds = ds.map(
        lambda b: tok(b["text"], truncation=True, max_length=spec.max_length, padding=pad),
        batched=True,
        remove_columns=["text"],
    )
    torch.manual_seed(spec.seed)
    model = AutoModelForSequenceClassification.from_pretrained(spec.model_dir)
    freeze_in_eval_mode(model, spec.k)

    class SameOrderTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            return _PlanSampler(lengths, spec)

    steps = {"n": 0}

    class Count(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            counter.threads.add(threading.get_ident())

        def on_step_end(self, args, state, control, **kw):
            steps["n"] += 1
            steps["reads"] = counter.reads  # reads up to the last step: the loop's, not the wrap-up's

    out_dir = tempfile.mkdtemp()
    kwargs = dict(
        output_dir=out_dir,
        per_device_train_batch_size=spec.batch_size,
        num_train_epochs=spec.epochs,
        learning_rate=spec.lr,
        warmup_steps=spec.warmup_steps,
        weight_decay=spec.weight_decay,
        seed=spec.seed,
        data_seed=spec.seed,
        report_to=[],
        save_strategy="no",
        eval_strategy="no",
        disable_tqdm=True,
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        use_cpu=spec.device == "cpu",
        bf16=spec.precision == "bf16",
    )
    if tuned:
        kwargs.update(
            train_sampling_strategy="group_by_length",
            logging_nan_inf_filter=False,
            optim="adamw_torch_fused",
            logging_steps=10_000,
        )
    args = TrainingArguments(**kwargs)
    collator = DataCollatorWithPadding(tok) if tuned else None
    trainer = SameOrderTrainer(model=model, args=args, train_dataset=ds, data_collator=collator, callbacks=[Count()])
    counter.install()
    t0, c0 = time.perf_counter(), time.process_time()
    result = trainer.train()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    counter.remove()
    counter.reads = steps.get("reads", counter.reads)
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "steps": steps["n"],
        "train_loss": float(result.training_loss),
        "accuracy": accuracy(model, tok, spec),
        "real_tokens": int(lengths.sum()) * spec.epochs,
    }


def run_accelerate(spec: Spec, counter: SyncCounter) -> dict:
    import torch
    from accelerate import Accelerator
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    from nb_finetune.core.data import Collator, epoch_batches

    tok = AutoTokenizer.from_pretrained(spec.model_dir)
    df = load_split(spec.train_file)
    enc = tok(list(df.text), truncation=True, max_length=spec.max_length)
    labels = _labels(df)
    items = [
        {
            "input_ids": enc["input_ids"][i],
            "attention_mask": enc["attention_mask"][i],
            "token_type_ids": enc["token_type_ids"][i],
            "labels": labels[i],
        }
        for i in range(len(labels))
    ]
    lengths = _lengths(tok, df.text, spec)
    collate = Collator(tok.pad_token_id)
    torch.manual_seed(spec.seed)
    model = AutoModelForSequenceClassification.from_pretrained(spec.model_dir)
    freeze_in_eval_mode(model, spec.k)
    counter.threads.add(threading.get_ident())
    counter.install()
    t0, c0 = time.perf_counter(), time.process_time()
    accelerator = Accelerator(cpu=spec.device == "cpu", mixed_precision="bf16" if spec.precision == "bf16" else "no")
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=spec.lr,
        fused=True,
    )
    steps_per_epoch = len(lengths) // spec.batch_size
    sched = get_linear_schedule_with_warmup(opt, spec.warmup_steps, steps_per_epoch * spec.epochs)
    model, opt = accelerator.prepare(model, opt)
    model.train()
    losses, steps = [], 0
    for epoch in range(spec.epochs):
        for b in epoch_batches(lengths, spec.batch_size, spec.seed, epoch, True):
            batch = collate([items[int(i)] for i in b])
            for key in ("num_tokens", "lengths", "idx"):
                batch.pop(key, None)
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            out = model(**batch)
            accelerator.backward(out.loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(out.loss.detach())
            steps += 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    counter.remove()
    train_loss = float(torch.stack(losses).mean())
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "steps": steps,
        "train_loss": train_loss,
        "accuracy": accuracy(accelerator.unwrap_model(model), tok, spec),
        "real_tokens": int(lengths.sum()) * spec.epochs,
    }


def run_nb_finetune(spec: Spec, counter: SyncCounter) -> dict:
    from nb_finetune import finetune
    from nb_finetune.core.events import RunStarted, StepEnded

    seen = {"cache": None, "steps": 0}

    class Watch:
        def on_event(self, e):
            if isinstance(e, RunStarted):
                seen["cache"] = e.cache
            elif isinstance(e, StepEnded):
                seen["steps"] = e.step
                seen["reads"] = counter.reads  # up to the last step: not the final checkpoint's copies

    class Threads:
        def on_event(self, e):
            counter.threads.add(threading.get_ident())

    counter.install()
    run = finetune(
        {
            "model": str(spec.model_dir),
            "data": {"train": str(spec.train_file), "eval_split": 0, "text": "text", "label": "label"},
            "labels": ["negative", "positive"],
            "epochs": spec.epochs,
            "batch_size": spec.batch_size,
            "max_length": spec.max_length,
            "lr": spec.lr,
            "warmup": spec.warmup_steps,
            "weight_decay": spec.weight_decay,
            "seed": spec.seed,
            "freeze": spec.k or None,
            "precision": spec.precision,
            "eval_every": None,
            "save_every": None,
            "log_every": 50,
            "cache_frozen": "auto",
            "output_dir": tempfile.mkdtemp(),
            "name": "bench",
        },
        callbacks=[Threads(), Watch()],
        wait=True,
    )
    counter.remove()
    counter.reads = seen.get("reads", counter.reads)
    assert run.status == "finished", run.error
    t = run.timings
    losses = run.history["loss"].dropna()
    from nb_finetune.core import data as D

    lengths = D.tokenize(
        run.tokenizer, [str(x) for x in load_split(spec.train_file).text], None, spec.max_length
    ).lengths
    return {
        "wall_s": t["setup_s"] + t["loop_s"],
        "cpu_s": t["setup_cpu_s"] + t["loop_cpu_s"],
        "steps": seen["steps"],
        "train_loss": float(losses.mean()),
        "accuracy": accuracy(run.model, run.tokenizer, spec),
        "real_tokens": int(lengths.sum()) * spec.epochs,
        "cache": seen["cache"],
        "mfu": _median([r.get("mfu") for r in run._run_dir.read_metrics() if r.get("event") == "log"]),
        "tflops": _median([r.get("tflops") for r in run._run_dir.read_metrics() if r.get("event") == "log"]),
    }


def main(argv: list[str]) -> int:
    arm, spec_json, out = argv
    spec = Spec.from_json(Path(spec_json).read_text())
    import torch

    if spec.threads:
        torch.set_num_threads(spec.threads)
    counter = SyncCounter()
    if arm == "B0":
        res = run_trainer(spec, tuned=False, counter=counter)
    elif arm == "B1":
        res = run_trainer(spec, tuned=True, counter=counter)
    elif arm == "B2":
        res = run_accelerate(spec, counter)
    elif arm == "N":
        res = run_nb_finetune(spec, counter)
    else:
        raise SystemExit(f"unknown arm {arm}")
    res.update(
        arm=arm,
        k=spec.k,
        syncs=counter.reads,
        syncs_per_100_steps=100 * counter.reads / max(res["steps"], 1),
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        samples_per_s=spec.n_train * spec.epochs / res["wall_s"],
        tokens_per_s=res["real_tokens"] / res["wall_s"],
    )
    Path(out).write_text(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
