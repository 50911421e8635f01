"""LLM benchmark: TRL's SFTTrainer (padded, packed), a plain PEFT + Accelerate loop and nb_finetune, LoRA on a CPU;
on a GPU, LoRA and QLoRA, nb_finetune against the plain loop.

    python -m benchmarks llm            # SmolLM2-135M (real weights), 512 records, max_length 256, 2 repetitions
    python -m benchmarks llm --quick    # a tiny Llama from a config, 256 records, max_length 128, 1 thread, 2 repetitions
    python -m benchmarks llm --gpu [--quick]   # CUDA: SmolLM2-135M's shape from a config, bf16, LoRA + QLoRA arms
    python -m benchmarks llm --table benchmarks/results/llm-cpu-quick.json

Arms in fresh processes, interleaved (T0 T1 P N T0 ...), medians; raw results as JSON under benchmarks/results/.
--gpu first installs what the arms need and the machine lacks (benchmarks/gpu_bootstrap.py: from the wheels carried
in benchmarks/.wheels/, else the package index when it is reachable); a QLoRA arm without bitsandbytes is skipped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import asdict
from pathlib import Path

from .common import ROOT, machine_info, require_cuda, run_interleaved, write_results
from .llm_common import FLOPS_FORMULA, LLMSpec, example_lengths, mfu, model_flops, prepare

ARMS = ("T0", "T1", "P", "N")
GPU_ARMS = ("P", "N", "PQ", "NQ")
NAMES = {
    "T0": "TRL SFTTrainer + LoRA, padded",
    "T1": "TRL SFTTrainer + LoRA, packed (batch 1 + accumulation)",
    "P": "PEFT + Accelerate loop, packed",
    "N": "nb_finetune, packing: true",
    "PQ": "PEFT + Accelerate loop, QLoRA 4-bit, packed",
    "NQ": "nb_finetune, quantization: 4bit, packing: true",
}
QLORA_SKIPPED = "bitsandbytes not installed: QLoRA arm skipped"


def gpu_spec(work_dir: str, quick: bool) -> LLMSpec:
    """The --gpu workload: SmolLM2-135M's shape, bf16, packed rows of 1,024 tokens, 8 per optimizer step."""
    return LLMSpec(
        work_dir=work_dir,
        model="smollm2-shape",
        n_train=4096 if quick else 16384,
        max_length=1024,
        rows_per_step=8,
        prompt_words=(4, 100),
        completion_words=(4, 200),
        device="cuda",
        precision="bf16",
    )


def gpu_arms(importable: set[str]) -> tuple[tuple[str, ...], dict[str, str]]:
    """The --gpu arms this machine can run, and why the others are left out."""
    if "bitsandbytes" in importable:
        return GPU_ARMS, {}
    return tuple(a for a in GPU_ARMS if not a.endswith("Q")), {a: QLORA_SKIPPED for a in GPU_ARMS if a.endswith("Q")}


def run_all(spec: LLMSpec, reps: int, out: Path, arms=ARMS, skipped=None) -> dict:
    prepare(spec)
    doc = {"spec": asdict(spec), "reps": reps, "machine": machine_info(), "skipped": dict(skipped or {})}
    if spec.device == "cuda":  # what MFU is measured against: the same model FLOPs for every arm
        from nb_finetune.core.flops import peak_flops

        cfg = json.loads((Path(spec.model_dir) / "config.json").read_text())
        doc["flops"] = {
            "model_flops": model_flops(cfg, spec.r, example_lengths(spec)),
            "peak_flops": peak_flops(doc["machine"].get("gpu", ""), spec.precision),
            "formula": FLOPS_FORMULA,
        }
    doc["runs"] = run_interleaved(
        ["-m", "benchmarks.llm_arms"], [(a, spec.to_json(), "") for a in arms], reps, keep_going=spec.device == "cuda"
    )
    write_results(out, doc)
    return doc


def _groups(doc: dict) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in doc["runs"]:
        if not r.get("failed"):
            groups.setdefault(r["arm"], []).append(r)
    return groups


def _median(groups, arm, key):
    vals = [r[key] for r in groups.get(arm, []) if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def summarize_gpu(doc: dict) -> tuple[str, str]:
    """The --gpu table: tokens/s, MFU, peak CUDA memory; N against P for LoRA and for QLoRA."""
    spec, groups = doc["spec"], _groups(doc)
    fl = doc.get("flops") or {}
    peak = fl.get("peak_flops")
    gpu = doc["machine"].get("gpu", "GPU")
    lines = [
        f"workload: SmolLM2-135M's shape (30 x 576, from a config, random weights), LoRA r {spec['r']} all-linear, "
        f"{spec['n_train']} prompt / completion records (prompt {spec['prompt_words'][0]}-{spec['prompt_words'][1]} "
        f"words, completion {spec['completion_words'][0]}-{spec['completion_words'][1]}, log-uniform), "
        f"completion-only loss, packed rows of {spec['max_length']} tokens, {spec['rows_per_step']} per step, "
        "bf16 (LoRA: fp32 master weights under autocast; QLoRA: NF4 base, bf16 compute), no gradient checkpointing, "
        f"1 epoch; {doc['reps']} repetition(s), medians; {gpu}, peak "
        + (f"{peak / 1e12:.0f} TFLOP/s bf16 dense" if peak else "n/a (device not in the table)"),
        "",
        "| arm | wall s | real tokens/s | MFU | peak CUDA MB | steps | syncs/100 steps | train loss (last 20%) | N vs P |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    ratios, mfus = {}, {}
    for arm in GPU_ARMS:
        if arm not in groups:
            continue
        med = lambda key, arm=arm: _median(groups, arm, key)  # noqa: E731
        u = mfu(fl.get("model_flops", 0.0), med("wall_s"), peak)
        mfus[arm] = u
        ratio = ""
        base = {"N": "P", "NQ": "PQ"}.get(arm)
        if base in groups:
            ratios[f"{arm}/{base}"] = med("tokens_per_s") / _median(groups, base, "tokens_per_s")
            ratio = f"{arm}/{base} {ratios[f'{arm}/{base}']:.2f}x"
        loss = med("train_loss")
        cuda_mb = med("peak_cuda_mb")
        lines.append(
            f"| {arm} {NAMES[arm]} | {med('wall_s'):.1f} | {med('tokens_per_s'):,.0f} | "
            f"{'n/a' if u is None else f'{100 * u:.1f}%'} | {'' if cuda_mb is None else f'{cuda_mb:,.0f}'} | "
            f"{med('steps'):.0f} | {med('syncs_per_100_steps'):.0f} | {'' if loss is None else f'{loss:.3f}'} | "
            f"{ratio} |"
        )
    lines += [f"{arm} {NAMES.get(arm, '')}: {why}" for arm, why in doc.get("skipped", {}).items()]
    lines += [f"{r['arm']} rep {r['rep']} failed: {r['failed']}" for r in doc["runs"] if r.get("failed")]
    if fl.get("formula"):
        lines += ["", f"MFU = model FLOPs / wall s / peak FLOP/s; {fl['formula']}"]
    parts = [f"{k}: {v:.2f}x" for k, v in ratios.items()]
    parts += [f"MFU {a} {'n/a' if u is None else f'{100 * u:.1f}%'}" for a, u in mfus.items()]
    return "\n".join(lines), " | ".join(parts)


def summarize(doc: dict) -> tuple[str, str]:
    spec = doc["spec"]
    if spec.get("device") == "cuda":
        return summarize_gpu(doc)
    groups = _groups(doc)

    def med(arm, key):
        vals = [r[key] for r in groups.get(arm, []) if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    model = "SmolLM2-135M" if spec["model"] == "smollm2" else "tiny Llama (4x128, from a config)"
    lines = [
        f"workload: {model}, LoRA r {spec['r']} all-linear, {spec['n_train']} prompt/completion records (prompt "
        f"{spec['prompt_words'][0]}-{spec['prompt_words'][1]} words, completion {spec['completion_words'][0]}-"
        f"{spec['completion_words'][1]}, log-uniform), completion-only loss, max_length {spec['max_length']}, fp32, "
        f"no gradient checkpointing, 1 epoch; padded batch {spec['batch_size']}, packed {spec['rows_per_step']} rows "
        f"per step; {doc['reps']} repetition(s), medians; {doc['machine'].get('cpu_count')} CPU cores",
        "",
        "| arm | wall s | CPU s | real tokens/s | padding share | steps | peak RSS MB | syncs/100 steps | train loss (last 20%) |"
        " N vs arm |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    n_tps = med("N", "tokens_per_s")
    ratios = {}
    for arm in ARMS:
        if arm not in groups:
            continue
        tps = med(arm, "tokens_per_s")
        ratio = ""
        if arm != "N" and n_tps and tps:
            ratios[arm] = n_tps / tps
            ratio = f"N/{arm} {ratios[arm]:.2f}x"
        loss = med(arm, "train_loss")
        cpu = "" if med(arm, "cpu_s") is None else f"{med(arm, 'cpu_s'):.1f}"
        lines.append(
            f"| {arm} {NAMES[arm]} | {med(arm, 'wall_s'):.1f} | {cpu} | {tps:,.0f} | {100 * med(arm, 'padding_share'):.0f}% | "
            f"{med(arm, 'steps'):.0f} | {med(arm, 'peak_rss_mb'):,.0f} | {med(arm, 'syncs_per_100_steps'):.0f} | "
            f"{'' if loss is None else f'{loss:.3f}'} | {ratio} |"
        )
    line = " | ".join(f"N/{a}: {v:.2f}x" for a, v in ratios.items())
    return "\n".join(lines), line


def parse(argv=None) -> tuple[argparse.Namespace, LLMSpec, int, Path]:
    """The options, and the spec, repetitions and results file they select."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks llm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="a tiny Llama built from a config; minutes on 2 cores")
    p.add_argument("--gpu", action="store_true", help="CUDA: SmolLM2-135M's shape, bf16, LoRA and QLoRA arms")
    p.add_argument("--reps", type=int, help="repetitions (default: 2; --gpu --quick: 1)")
    p.add_argument(
        "--out", type=Path, help="raw results JSON (default: benchmarks/results/llm-{cpu,gpu}[-quick].json)"
    )
    p.add_argument("--table", type=Path, help="only print the table of an existing raw results file")
    p.add_argument("--work-dir", default=str(ROOT / "benchmarks" / ".work"))
    args = p.parse_args(argv)
    if args.gpu:
        spec = gpu_spec(args.work_dir, args.quick)
    elif args.quick:
        spec = LLMSpec(work_dir=args.work_dir, threads=1)  # one thread: less noise on a shared machine
    else:
        spec = LLMSpec(work_dir=args.work_dir, model="smollm2", n_train=512, max_length=256)
    reps = args.reps or (1 if args.gpu and args.quick else 2)
    name = f"llm-{'gpu' if args.gpu else 'cpu'}{'-quick' if args.quick else ''}.json"
    return args, spec, reps, args.out or ROOT / "benchmarks" / "results" / name


def main(argv=None) -> int:
    args, spec, reps, out = parse(argv)
    if args.table:
        doc = json.loads(args.table.read_text())
    elif args.gpu:
        require_cuda()
        from .gpu_bootstrap import ensure

        arms, skipped = gpu_arms(ensure().importable)
        for why in sorted(set(skipped.values())):
            print(why, file=sys.stderr)
        doc = run_all(spec, reps, out, arms, skipped)
        print(f"raw results: {out}")
    else:
        doc = run_all(spec, reps, out)
        print(f"raw results: {out}")
    table, line = summarize(doc)
    print(table)
    print()
    print(line)
    return 0
