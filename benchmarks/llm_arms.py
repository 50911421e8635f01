"""One arm of the LLM benchmark in this (fresh) process; writes its measurements as JSON.

    python -m benchmarks.llm_arms {T0,T1,P,N,PQ,NQ} SPEC_JSON OUT_JSON

T0  TRL SFTTrainer with LoRA, padded batches (no packing).
T1  TRL SFTTrainer with LoRA and packing (best-fit decreasing, padding-free): one packed row per micro-batch,
    gradient accumulation over `rows_per_step` rows (TRL's padding-free mode flattens a batch into one B*L row whose
    attention is quadratic on a CPU, so batch 1 is its fair setting).
P   a plain PEFT + Accelerate loop over the same packed rows as N (block-diagonal mask, restarting positions).
N   nb_finetune.finetune with `packing: true` and the same LoRA settings.
PQ, NQ  P and N with QLoRA (the --gpu workload): the base in 4-bit NF4 through bitsandbytes (double quantisation,
    bf16 compute), as nb_finetune's `quantization: 4bit` loads it, and PEFT's prepare_model_for_kbit_training.

Every arm: the same prompt / completion records, completion-only loss, gradient checkpointing off, the same LoRA
config, seed, lr and one epoch over the same examples (the same real tokens trained); fp32 on the CPU, and on a GPU
(--gpu) bf16 autocast over fp32 master weights for LoRA (what nb_finetune does with `precision: bf16`).
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

from .common import ROOT, SyncCounter
from .llm_common import LLMSpec, load_records, lora_config

sys.path.insert(0, str(ROOT))


def _tail_mean(losses: list[float]) -> float | None:
    losses = [x for x in losses if x is not None]
    if not losses:
        return None
    k = max(1, len(losses) // 5)
    return sum(losses[-k:]) / k


def _trl(spec: LLMSpec, packed: bool, counter: SyncCounter) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(spec.seed)
    tok = AutoTokenizer.from_pretrained(spec.model_dir, **spec.gguf_kw())
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(spec.model_dir, dtype=torch.float32, **spec.gguf_kw())
    recs = load_records(spec)
    ds = datasets.Dataset.from_list(recs)
    args = SFTConfig(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=1 if packed else spec.batch_size,
        gradient_accumulation_steps=spec.rows_per_step if packed else 1,
        num_train_epochs=1,
        learning_rate=spec.lr,
        lr_scheduler_type="linear",
        warmup_steps=spec.warmup_steps,
        weight_decay=0.01,
        max_grad_norm=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        seed=spec.seed,
        max_length=spec.max_length,
        packing=packed,
        packing_strategy="bfd",
        completion_only_loss=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=lora_config(spec))
    widths, reals = [], []

    class Meter(TrainerCallback):
        def on_train_begin(self, *a, **k):
            counter.threads.add(threading.get_ident())
            counter.install()

    trainer.add_callback(Meter())
    orig = trainer.compute_loss

    def compute_loss(model, inputs, *a, **k):  # measure widths and real tokens of what the model is given
        ids = inputs["input_ids"]
        widths.append(ids.numel())
        if "attention_mask" in inputs and not packed:
            reals.append(int(inputs["attention_mask"].sum()))
        else:
            reals.append(ids.numel())
        return orig(model, inputs, *a, **k)

    trainer.compute_loss = compute_loss
    t0 = time.perf_counter()
    c0 = time.process_time()
    trainer.train()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    counter.remove()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    steps = trainer.state.global_step
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "steps": steps,
        "model_tokens": sum(widths),
        "real_tokens": sum(reals),
        "train_loss": _tail_mean(losses),
        "syncs_per_100_steps": 100 * counter.reads / max(1, steps),
    }


def _packed_rows(spec: LLMSpec, tok):
    from nb_finetune.core.tasks import lm_data as L

    recs = load_records(spec)
    enc = L.encode_prompt_completion(
        tok, [r["prompt"] for r in recs], [r["completion"] for r in recs], spec.max_length, False
    )
    return L.pack(enc.input_ids, enc.labels, spec.max_length, spec.seed)


def _plain(spec: LLMSpec, counter: SyncCounter, quantized: bool = False) -> dict:
    import torch
    from accelerate import Accelerator
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_linear_schedule_with_warmup

    from nb_finetune.core.tasks import lm_data as L

    torch.manual_seed(spec.seed)
    tok = AutoTokenizer.from_pretrained(spec.model_dir, **spec.gguf_kw())
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if quantized:
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        q = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        model = AutoModelForCausalLM.from_pretrained(
            spec.model_dir, quantization_config=q, device_map={"": 0}, dtype=torch.bfloat16, **spec.gguf_kw()
        )
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model = AutoModelForCausalLM.from_pretrained(spec.model_dir, dtype=torch.float32, **spec.gguf_kw())
    model = get_peft_model(model, lora_config(spec))
    ids, labels, pos, segs, _ = _packed_rows(spec, tok)
    items = [
        {"input_ids": ids[i], "labels": labels[i], "position_ids": pos[i], "segments": segs[i], "idx": i}
        for i in range(len(ids))
    ]
    collate = L.PackedCollator(tok.pad_token_id)
    acc = Accelerator(cpu=spec.device == "cpu", mixed_precision="bf16" if spec.precision == "bf16" else "no")
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=spec.lr, weight_decay=0.01, fused=True
    )
    n_steps = -(-len(items) // spec.rows_per_step)
    sched = get_linear_schedule_with_warmup(opt, spec.warmup_steps, n_steps)
    model, opt = acc.prepare(model, opt)
    model.train()
    counter.threads.add(threading.get_ident())
    counter.install()
    losses, real, width_sum = [], 0, 0
    t0, c0 = time.perf_counter(), time.process_time()
    for s in range(n_steps):
        batch = collate(items[s * spec.rows_per_step : (s + 1) * spec.rows_per_step])
        real += batch.pop("num_tokens")
        batch.pop("lengths"), batch.pop("idx")
        batch["attention_mask"] = batch.pop("packed_mask")
        batch = {k: v.to(acc.device, non_blocking=True) for k, v in batch.items()}
        width_sum += batch["input_ids"].numel()
        loss = model(**batch).loss
        acc.backward(loss)
        acc.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    loss_values = torch.stack(losses).tolist()  # one read at the end
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    counter.remove()
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "steps": n_steps,
        "model_tokens": width_sum,
        "real_tokens": real,
        "train_loss": _tail_mean(loss_values),
        "syncs_per_100_steps": 100 * max(0, counter.reads - 1) / max(1, n_steps),
    }


def _ours(spec: LLMSpec, counter: SyncCounter, quantized: bool = False) -> dict:
    import torch

    from nb_finetune import finetune
    from nb_finetune.core.events import RunStarted, StepEnded

    seen = {"reads": 0}
    cuda = spec.device == "cuda"

    class Meter:
        def on_event(self, e):
            if isinstance(e, RunStarted):
                counter.threads.add(threading.get_ident())
                counter.install()
            elif isinstance(e, StepEnded):  # reads up to the last step: the final checkpoint's copies are not steps
                seen["reads"] = counter.reads
                if cuda and e.step >= e.total_steps:
                    # the loop times its last step when it is queued; the plain loop's clock stops after its last
                    # read of the device, so wait here for the GPU to finish that step too
                    t = time.perf_counter()
                    torch.cuda.synchronize()
                    seen["wall"] = e.elapsed + time.perf_counter() - t

    cfg = {
        "model": str(spec.model_dir),
        "gguf_file": spec.gguf_file,
        "task": "causal-lm",
        "data": {"train": load_records(spec, frame=True), "eval_split": 0},
        "lora": {"r": spec.r, "alpha": spec.alpha, "dropout": 0.0, "target_modules": "all-linear"},
        "packing": True,
        "max_length": spec.max_length,
        "batch_size": spec.rows_per_step,
        "epochs": 1,
        "lr": spec.lr,
        "warmup": spec.warmup_steps,
        "precision": spec.precision,
        "device": spec.device,
        "quantization": "4bit" if quantized else "none",
        "gradient_checkpointing": False,
        "seed": spec.seed,
        "log_every": 10,
        "eval_every": None,
        "save_every": None,
        "output_dir": tempfile.mkdtemp(),
        "cache_frozen": "off",
    }
    run = finetune(cfg, name="n", wait=True, callbacks=[Meter()])
    counter.remove()
    if run.status != "finished":
        raise SystemExit(f"nb_finetune run {run.status}: {run.error}")
    t = run.timings
    hist = run.history
    task = run.task
    import numpy as np

    from nb_finetune.core.data import epoch_batches

    lens = np.array([len(r) for r in task.packed["input_ids"]])
    batches = epoch_batches(lens, spec.rows_per_step, spec.seed, 0, True)  # the loop's batches: rows padded to
    padded = sum(len(b) * int(lens[list(b)].max()) for b in batches)  # the widest row of their batch
    return {
        "wall_s": seen.get("wall", t["loop_s"]),
        "cpu_s": t["loop_cpu_s"],
        "steps": run.step,
        "model_tokens": padded,
        "real_tokens": int(lens.sum()),
        "train_loss": _tail_mean(hist["loss"].dropna().tolist()),
        "syncs_per_100_steps": 100 * seen["reads"] / max(1, run.step),
    }


def main(argv=None) -> int:
    argv = argv or sys.argv[1:]
    arm, spec_file, out_file = argv
    spec = LLMSpec.from_json(Path(spec_file).read_text())
    import torch

    if spec.threads:
        torch.set_num_threads(spec.threads)
    counter = SyncCounter()
    if arm == "T0":
        res = _trl(spec, False, counter)
    elif arm == "T1":
        res = _trl(spec, True, counter)
    elif arm in ("P", "PQ"):
        res = _plain(spec, counter, quantized=arm == "PQ")
    elif arm in ("N", "NQ"):
        res = _ours(spec, counter, quantized=arm == "NQ")
    else:
        raise SystemExit(f"unknown arm {arm}")
    res.update(
        arm=arm,
        tokens_per_s=res["real_tokens"] / res["wall_s"],
        padding_share=1 - res["real_tokens"] / max(1, res["model_tokens"]),
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    if spec.device == "cuda":
        res["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    Path(out_file).write_text(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
