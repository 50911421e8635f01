"""Side-by-side benchmark: HF Trainer (plain and tuned), a plain Accelerate loop, and nb_finetune.

    python -m benchmarks            # full: 1,024 examples x 3 epochs, k in {0, L/2, 2L/3}, 4 arms, 3 repetitions
    python -m benchmarks --quick    # reduced: 512 examples, k in {0, 2L/3}, 2 repetitions (under 10 min, 2 cores)
    python -m benchmarks --table benchmarks/results/cpu-quick.json   # print the table of saved raw results

Each arm runs in a fresh process; arms are interleaved (A B C D A B C D ...) and medians are reported. The raw
measurements go to a JSON file; the table and the summary line are computed from that file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import asdict
from pathlib import Path

from .common import ROOT, Spec, flop_bound, machine_info, prepare, require_cuda, run_interleaved, write_results

ARMS = ("B0", "B1", "B2", "N")
NAMES = {
    "B0": "HF Trainer, padded to max_length",
    "B1": "HF Trainer, tuned",
    "B2": "Accelerate loop",
    "N": "nb_finetune",
}


def _plan(spec: Spec, quick: bool, arms: tuple[str, ...] = ARMS, ks: tuple[int, ...] | None = None):
    """(k, arm) pairs in run order; `arms` / `ks` keep a subset (a focused A/B, e.g. `--arms B2,N --k 0`)."""
    L = spec.layers
    half, two_thirds = L // 2, (2 * L) // 3
    if quick:
        plan = [(0, a) for a in ARMS] + [(two_thirds, a) for a in ("B1", "N")]
    else:
        plan = [(k, a) for k in (0, half, two_thirds) for a in ARMS]
    return [(k, a) for k, a in plan if a in arms and (ks is None or k in ks)]


def run_all(
    spec: Spec, quick: bool, reps: int, out: Path, arms: tuple[str, ...] = ARMS, ks=None, keep_going: bool = False
) -> dict:
    prepare(spec)
    plan = _plan(spec, quick, arms, ks)
    if not plan:
        raise SystemExit("nothing to run: --arms / --k select no arm of this plan")
    specs = {k: Spec(**{**asdict(spec), "k": k}).to_json() for k, _ in plan}
    runs = run_interleaved(
        ["-m", "benchmarks.arms"], [(arm, specs[k], f"k={k}") for k, arm in plan], reps, keep_going=keep_going
    )
    doc = {"spec": asdict(spec), "quick": quick, "reps": reps, "machine": machine_info(), "runs": runs}
    write_results(out, doc)
    return doc


def summarize(doc: dict) -> tuple[str, str]:
    """The table and the one summary line, from the raw results alone."""
    spec = doc["spec"]
    L, E = spec["layers"], spec["epochs"]
    groups: dict[tuple[int, str], list[dict]] = {}
    failed = [r for r in doc["runs"] if r.get("failed")]
    for r in doc["runs"]:
        if not r.get("failed"):
            groups.setdefault((r["k"], r["arm"]), []).append(r)

    def med(k, arm, key):
        vals = [r[key] for r in groups.get((k, arm), []) if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    lines = [
        f"workload: BERT {L}x{spec['hidden']} (from a config) on {spec['n_train']:,} movie-review sentences x {E} "
        f"epochs, batch {spec['batch_size']}, max_length {spec['max_length']}, {spec.get('precision', 'fp32')}; "
        f"{doc['reps']} repetitions, medians; {doc['machine'].get('gpu') or str(doc['machine']['cpu_count']) + ' CPU cores'}",
        "",
        "| k | arm | wall s | CPU s | samples/s | real tokens/s | peak RSS MB | syncs/100 steps | train loss | accuracy | speed-up of N |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    ks = sorted({k for k, _ in groups})
    summary = {}
    for k in ks:
        n_wall = med(k, "N", "wall_s")
        for arm in ARMS:
            if (k, arm) not in groups:
                continue
            wall = med(k, arm, "wall_s")
            ratio = ""
            if arm == "N" and med(k, "N", "mfu") is not None:
                ratio = f"MFU {100 * med(k, 'N', 'mfu'):.0f}%"
            if arm != "N" and n_wall:
                ratio = f"N/{arm} {wall / n_wall:.2f}x"
                if arm == "B1" and k > 0:
                    ratio += f" (bound {flop_bound(L, k, E):.2f}x)"
                summary[(k, arm)] = wall / n_wall
            cache = groups[(k, arm)][0].get("cache")
            name = NAMES[arm] + (f" [cache {cache.split(' ')[0]}]" if cache and k > 0 else "")
            lines.append(
                f"| {k} | {arm} {name} | {wall:.1f} | {med(k, arm, 'cpu_s'):.1f} | {med(k, arm, 'samples_per_s'):.1f} | "
                f"{med(k, arm, 'tokens_per_s'):,.0f} | {med(k, arm, 'peak_rss_mb'):,.0f} | "
                f"{med(k, arm, 'syncs_per_100_steps'):.0f} | {med(k, arm, 'train_loss'):.4f} | "
                f"{med(k, arm, 'accuracy'):.3f} | {ratio} |"
            )
    lines += [f"{r['arm']} ({r['label']}) rep {r['rep']} failed: {r['failed']}" for r in failed]
    deep = max(ks) if ks else 0
    parts = []
    if (0, "B1") in summary:
        parts.append(f"N/B1 k=0: {summary[(0, 'B1')]:.2f}x")
    if (0, "B2") in summary:
        parts.append(f"N/B2 k=0: {summary[(0, 'B2')]:.2f}x")
    if deep > 0 and (deep, "B1") in summary:
        parts.append(f"k=2L/3 cached: {summary[(deep, 'B1')]:.2f}x (bound {flop_bound(L, deep, E):.2f}x)")
    return "\n".join(lines), " | ".join(parts)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["llm"]:  # the LLM arm set (benchmarks/llm.py)
        from .llm import main as llm_main

        return llm_main(argv[1:])
    if argv[:1] == ["vision"]:  # python -m benchmarks vision [--quick]: image classification (vision.py)
        from .vision import main as vision_main

        return vision_main(argv[1:])
    p = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="reduced run, under 10 minutes on a 2-core CPU")
    p.add_argument("--gpu", action="store_true", help="the GPU workload: BERT-base from its config, bf16, on CUDA")
    p.add_argument("--reps", type=int, help="repetitions (default: 3, quick: 2)")
    p.add_argument("--out", type=Path, help="raw results JSON (default: benchmarks/results/cpu[-quick].json)")
    p.add_argument("--table", type=Path, help="only print the table of an existing raw results file")
    p.add_argument("--work-dir", default=str(ROOT / "benchmarks" / ".work"))
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {', '.join(ARMS)}")
    p.add_argument("--k", help="comma-separated frozen-layer counts to keep (default: all of the plan's)")
    args = p.parse_args(argv)
    arms = tuple(a.strip() for a in args.arms.split(",") if a.strip())
    if set(arms) - set(ARMS):
        p.error(f"--arms: unknown arm(s) {sorted(set(arms) - set(ARMS))}; choose from {', '.join(ARMS)}")
    ks = tuple(int(x) for x in args.k.split(",")) if args.k else None
    if args.table:
        doc = json.loads(args.table.read_text())
    else:
        spec = Spec(work_dir=args.work_dir, n_train=512 if args.quick else 1024)
        if args.gpu:
            require_cuda()
            from .gpu_bootstrap import ensure

            ensure()
            spec = Spec(
                work_dir=args.work_dir,
                n_train=2048 if args.quick else 8192,
                max_length=128,
                layers=12,
                hidden=768,
                heads=12,
                intermediate=3072,
                device="cuda",
                precision="bf16",
            )
        reps = args.reps or (2 if args.quick else 3)
        kind = "gpu" if args.gpu else "cpu"
        out = args.out or ROOT / "benchmarks" / "results" / f"{kind}{'-quick' if args.quick else ''}.json"
        doc = run_all(spec, args.quick, reps, out, arms, ks, keep_going=args.gpu)
        print(f"raw results: {out}")
    table, line = summarize(doc)
    print(table)
    print()
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
