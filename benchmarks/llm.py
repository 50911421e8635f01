"""LLM benchmark: TRL's SFTTrainer (padded, packed), a plain PEFT + Accelerate loop and nb_finetune, LoRA on a CPU.

    python -m benchmarks llm            # SmolLM2-135M (real weights), 512 records, max_length 256, 2 repetitions
    python -m benchmarks llm --quick    # a tiny Llama from a config, 256 records, max_length 128, 1 thread, 2 repetitions
    python -m benchmarks llm --table benchmarks/results/llm-cpu-quick.json

Arms in fresh processes, interleaved (T0 T1 P N T0 ...), medians; raw results as JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from .__main__ import _machine
from .common import ROOT
from .llm_common import LLMSpec, prepare

ARMS = ("T0", "T1", "P", "N")
NAMES = {
    "T0": "TRL SFTTrainer + LoRA, padded",
    "T1": "TRL SFTTrainer + LoRA, packed (batch 1 + accumulation)",
    "P": "PEFT + Accelerate loop, packed",
    "N": "nb_finetune, packing: true",
}


def run_all(spec: LLMSpec, reps: int, out: Path) -> dict:
    prepare(spec)
    tmp = Path(tempfile.mkdtemp())
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "NB_FINETUNE_INDEX_DIR": str(tmp / "index"),
    }
    spec_file = tmp / "spec.json"
    spec_file.write_text(spec.to_json())
    runs, t0 = [], time.time()
    for rep in range(reps):
        for arm in ARMS:
            res_file = tmp / f"{arm}-{rep}.json"
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.llm_arms", arm, str(spec_file), str(res_file)],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"arm {arm} failed")
            res = json.loads(res_file.read_text())
            res["rep"] = rep
            runs.append(res)
            print(f"[{time.time() - t0:6.0f}s] rep {rep} {arm:<2} wall {res['wall_s']:6.1f}s", file=sys.stderr)
    doc = {"spec": asdict(spec), "reps": reps, "machine": _machine(), "runs": runs}
    doc["created"] = time.strftime("%Y-%m-%d %H:%M:%S")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    return doc


def summarize(doc: dict) -> tuple[str, str]:
    spec = doc["spec"]
    groups: dict[str, list[dict]] = {}
    for r in doc["runs"]:
        groups.setdefault(r["arm"], []).append(r)

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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks llm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="a tiny Llama built from a config; minutes on 2 cores")
    p.add_argument("--reps", type=int, help="repetitions (default: 2, quick: 2)")
    p.add_argument("--out", type=Path)
    p.add_argument("--table", type=Path, help="only print the table of an existing raw results file")
    p.add_argument("--work-dir", default=str(ROOT / "benchmarks" / ".work"))
    args = p.parse_args(argv)
    if args.table:
        doc = json.loads(args.table.read_text())
    else:
        if args.quick:
            spec = LLMSpec(work_dir=args.work_dir, threads=1)  # one thread: less noise on a shared machine
        else:
            spec = LLMSpec(work_dir=args.work_dir, model="smollm2", n_train=512, max_length=256)
        out = args.out or ROOT / "benchmarks" / "results" / f"llm-cpu{'-quick' if args.quick else ''}.json"
        doc = run_all(spec, args.reps or 2, out)
        print(f"raw results: {out}")
    table, line = summarize(doc)
    print(table)
    print()
    print(line)
    return 0
