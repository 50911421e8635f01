"""What the panel costs: UI CPU time per second of training, and training speed with the panel vs headless.

    python -m benchmarks.ui_cost                 # 3 arms x 2 repetitions of 1,200 steps, about 20 min on 2 CPU cores
    python -m benchmarks.ui_cost --steps 60 --reps 1

A real JupyterLab serves a notebook that headless Chromium (Debian's, through Playwright from ui-tests/) opens
and runs cell by cell, so the frontend renders the panel, receives every streamed point and answers as a user's
browser does. In that kernel, arms alternate with the same seed and data:

    headless  `finetune(...)` from Python: no panel (the baseline)
    widget    `%%finetune` with the panel, plots through jupyter_bokeh (JupyterLab, Notebook 7)
    display   `%%finetune` with the panel, plots re-rendered through a display handle (Colab, VS Code)

A watcher thread in the kernel reads every thread's CPU time from /proc at the start and the end of each run's
training. UI CPU = the panel's writer thread + ipykernel's IOPub thread + the main thread (comm messages);
training CPU = the rest of the process. Needs: `make venv`, `make ui-deps` (node modules + Chromium).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import ROOT, Spec, prepare

DRIVER = ROOT / "benchmarks" / "ui_driver.js"
ARMS = ("headless", "widget", "display")

WATCHER = r"""
import json, os, threading, time
from pathlib import Path
import nb_finetune.api as _api
_OUT = Path({out!r}); _OUT.mkdir(parents=True, exist_ok=True)
_TICK = os.sysconf("SC_CLK_TCK")

def _thread_cpu():
    cpu = {{}}
    for t in threading.enumerate():
        try:
            with open(f"/proc/self/task/{{t.native_id}}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu[t.name] = (int(fields[11]) + int(fields[12])) / _TICK
        except (OSError, TypeError, ValueError, IndexError):
            pass
    return cpu

_KERNEL_UI = ("MainThread", "IOPub", "Shell channel")  # + ipykernel 7's subshell threads (comm messages)

def _procs_cpu():
    # CPU seconds of the browser's processes and of the Jupyter server, on this machine
    out = {{"browser": 0.0, "server": 0.0}}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{{d}}/stat") as f:
                head, rest = f.read().rsplit(")", 1)
            comm, fields = head.split("(", 1)[1].lower(), rest.split()
        except (OSError, ValueError, IndexError):
            continue
        key = "browser" if "chrom" in comm else "server" if "jupyter" in comm else None
        if key:
            out[key] += (int(fields[11]) + int(fields[12])) / _TICK
    return out

def _ui(cpu):
    return sum(v for k, v in cpu.items() if k in _KERNEL_UI or k.startswith("subshell"))

def _panel_stats(run):
    panel = getattr(run._callbacks[0], "target", None) if run._callbacks else None
    if panel is None or not hasattr(panel, "pump_cpu_s"):
        return 0.0, {{}}
    models = [m for m in (getattr(panel.transport, "model", None), getattr(panel, "layers_model", None)) if m]
    received = {{}}
    for m in models:
        for k, v in getattr(m, "received", {{}}).items():
            received[k] = received.get(k, 0) + v
    return panel.pump_cpu_s, {{"received": received, "sync_cpu_s": sum(getattr(m, "sync_cpu_s", 0.0) for m in models),
                              "plot_renders": panel.transport.renders, "text_renders": panel.renders}}

def _watch():
    seen = set()
    while True:
        for run in list(_api.all_runs()):
            if run.name in seen or run.status not in ("training",):
                continue
            seen.add(run.name)
            c0, p0, w0, s0, o0 = _thread_cpu(), time.process_time(), time.perf_counter(), run.step, _procs_cpu()
            run._done.wait()
            time.sleep(1.5)  # the writer's final render belongs to the run's cost
            c1, p1, w1, o1 = _thread_cpu(), time.process_time(), time.perf_counter(), _procs_cpu()
            pump_cpu, stats = _panel_stats(run)
            ui = _ui(c1) - _ui({{k: c0.get(k, 0.0) for k in c1}}) + pump_cpu
            steps = run.step - s0
            rec = {{"name": run.name, "wall_s": w1 - w0 - 1.5, "process_cpu_s": p1 - p0, "ui_cpu_s": ui,
                   "steps": steps, "samples_per_s": steps * {batch} / max(w1 - w0 - 1.5, 1e-9),
                   "threads": {{k: round(c1[k] - c0.get(k, 0.0), 3) for k in c1}}, "status": run.status,
                   "pump_cpu_s": pump_cpu, "browser_cpu_s": o1["browser"] - o0["browser"],
                   "server_cpu_s": o1["server"] - o0["server"], **stats}}
            (_OUT / f"{{run.name}}.json").write_text(json.dumps(rec))
        time.sleep(0.05)

threading.Thread(target=_watch, name="bench-watcher", daemon=True).start()
(_OUT / "ready").write_text("1")
"""


def _notebook(
    spec: Spec, steps: int, reps: int, out: Path, runs_dir: Path
) -> tuple[dict, list[str], list[str | None]]:
    body = (
        f"model: {spec.model_dir}\n"
        f"data:\n  train: {spec.train_file}\n  eval: {spec.eval_file}\n"
        f"max_steps: {steps}\nbatch_size: {spec.batch_size}\nmax_length: {spec.max_length}\n"
        f"lr: {spec.lr}\nlog_every: 5\neval_every: {max(steps // 3, 1)}\nsave_every: null\nseed: {spec.seed}\n"
        f"output_dir: {runs_dir}\n"
    )
    cells = [
        "%load_ext nb_finetune\nfrom nb_finetune import finetune\n"
        + WATCHER.format(out=str(out), batch=spec.batch_size)
    ]
    waits: list[str | None] = ["ready"]  # per cell: the result file the driver waits for before the next cell
    names = []
    for r in range(reps):
        for arm in ARMS:
            name = f"{arm}_{r}"
            names.append(name)
            if arm == "headless":
                cells.append(f"_r = finetune({body!r}, name={name!r}, namespace={{}})")
            else:
                cells.append(f"%config FinetuneMagic.renderer = {arm!r}")
                waits.append(None)
                cells.append(f"%%finetune {name}\n{body}")
            waits.append(name)
    nb = {
        "cells": [
            {"cell_type": "code", "metadata": {}, "source": c, "outputs": [], "execution_count": None} for c in cells
        ],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    return nb, names, waits


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(port: int, token: str, proc, timeout: float = 120.0) -> None:
    import urllib.request

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"jupyter lab exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
            return
        except OSError:
            time.sleep(0.3)
    raise SystemExit("jupyter lab did not start in time")


def run(steps: int, reps: int, keep: Path | None) -> dict:
    spec = Spec(
        work_dir=str(ROOT / "benchmarks" / ".work"),
        n_train=512,
        n_eval=64,
        layers=4,
        hidden=128,
        heads=4,
        intermediate=512,
        batch_size=16,
    )
    prepare(spec)
    tmp = Path(tempfile.mkdtemp(prefix="nbft-ui-"))
    out, runs_dir = tmp / "results", tmp / "runs"
    nb, names, waits = _notebook(spec, steps, reps, out, runs_dir)
    (tmp / "bench.ipynb").write_text(json.dumps(nb))
    port, token = _free_port(), "nbft-bench"
    env = dict(os.environ, NB_FINETUNE_INDEX_DIR=str(tmp / "index"), JUPYTER_PLATFORM_DIRS="1")
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "jupyter"),
            "lab",
            "--no-browser",
            "--allow-root",
            f"--port={port}",
            f"--ServerApp.token={token}",
            f"--ServerApp.root_dir={tmp}",
            "--LabApp.news_url=",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ],
        env=env,
        stdout=open(tmp / "server.log", "w"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for_server(port, token, server)
        shot = (keep or tmp) / "ui-cost-panel.png"
        url = f"http://127.0.0.1:{port}/lab/tree/bench.ipynb?token={token}"
        cmd = ["node", str(DRIVER), url, str(out), json.dumps(waits), str(shot)]
        res = subprocess.run(
            cmd,
            env=dict(os.environ, NODE_PATH=str(ROOT / "ui-tests" / "node_modules")),
            capture_output=True,
            text=True,
            timeout=60 * 30,
        )
        if res.returncode != 0:
            raise SystemExit(f"the browser driver failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
        recs = {n: json.loads((out / f"{n}.json").read_text()) for n in names}
    finally:
        server.terminate()
        server.wait(30)
        if keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    return {"spec": {"steps": steps, "reps": reps, "layers": spec.layers, "hidden": spec.hidden}, "runs": recs}


def table(doc: dict) -> str:
    by_arm: dict[str, list[dict]] = {a: [] for a in ARMS}
    for name, rec in doc["runs"].items():
        by_arm[name.rsplit("_", 1)[0]].append(rec)

    def med(arm, key):
        return statistics.median(r[key] for r in by_arm[arm])

    base_sps = med("headless", "samples_per_s")
    base_ui = med("headless", "ui_cpu_s")
    rows = [
        "| arm | samples/s | vs headless | training CPU s | kernel UI CPU s (above headless) | per s of training "
        "| kernel UI / training CPU | browser + server CPU s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arm in ARMS:
        sps = med(arm, "samples_per_s")
        ui = max(0.0, med(arm, "ui_cpu_s") - base_ui)
        train_cpu = med(arm, "process_cpu_s") - med(arm, "ui_cpu_s")
        wall = med(arm, "wall_s")
        rows.append(
            f"| {arm} | {sps:.1f} | {sps / base_sps:.3f}x | {train_cpu:.1f} | {ui:.2f} | {ui / wall * 1000:.0f} ms "
            f"| {100 * ui / max(train_cpu, 1e-9):.2f}% | {med(arm, 'browser_cpu_s') + med(arm, 'server_cpu_s'):.1f} |"
        )
    s = doc["spec"]
    head = (
        f"UI cost: BERT {s['layers']}x{s['hidden']} from a config, {s['steps']} steps per run, {s['reps']} "
        "repetitions (medians), JupyterLab in headless Chromium attached; goal: UI CPU <= 2% of training CPU"
    )
    return head + "\n\n" + "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ui_cost", description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ui-cost.json")
    ap.add_argument("--keep", type=Path, help="keep the notebook, logs and a screenshot in this directory")
    ap.add_argument("--table", type=Path, help="print the table of saved results and exit")
    a = ap.parse_args(argv)
    if a.table:
        print(table(json.loads(a.table.read_text())))
        return 0
    if not Path("/usr/bin/chromium").exists() or not (ROOT / "ui-tests" / "node_modules").is_dir():
        print("needs Chromium and ui-tests/node_modules: run `make ui-deps` first", file=sys.stderr)
        return 2
    t0 = time.time()
    doc = run(a.steps, a.reps, a.keep)
    doc["seconds"] = round(time.time() - t0)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=1))
    print(table(doc))
    print(f"\nraw results: {a.out}  ({doc['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
