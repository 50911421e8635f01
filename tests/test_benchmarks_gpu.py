"""The GPU benchmarks' CPU-testable parts: options, the no-CUDA exit, the bootstrap's plan and install, MFU arithmetic,
the GPU table, and the shared interleaved arm runner. Nothing here needs a GPU or a network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from dataclasses import asdict
from pathlib import Path

import pytest

from benchmarks import gpu_bootstrap as B
from benchmarks.common import ROOT, run_interleaved
from benchmarks.llm import GPU_ARMS, QLORA_SKIPPED, gpu_arms, parse, summarize
from benchmarks.llm_common import SMOLLM2_135M, LLMSpec, llama_counts, mfu, model_flops


# ------------------------------------------------------------------------------------------------ options, no CUDA
def test_parse_selects_the_gpu_workload(tmp_path):
    """Control: without --gpu the same options select the CPU workload and its results file."""
    args, spec, reps, out = parse(["--gpu", "--quick"])
    assert (spec.device, spec.precision, spec.model, spec.max_length) == ("cuda", "bf16", "smollm2-shape", 1024)
    assert reps == 1 and out.name == "llm-gpu-quick.json"
    args, spec, reps, out = parse(["--gpu", "--reps", "3", "--out", str(tmp_path / "r.json")])
    assert spec.n_train > parse(["--gpu", "--quick"])[1].n_train and reps == 3 and out == tmp_path / "r.json"
    args, spec, reps, out = parse(["--quick"])
    assert (spec.device, spec.model, reps, out.name) == ("cpu", "tiny", 2, "llm-cpu-quick.json")


@pytest.mark.parametrize("argv", [["llm", "--gpu", "--quick"], ["--gpu", "--quick"]])
def test_gpu_without_cuda_exits_with_one_line(argv, tmp_path):
    """Both GPU workloads refuse a machine without CUDA in one line, before installing or building anything.
    Control: the exit status is 1 and stdout is empty (no table was printed from a run that did not happen)."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    site = B.default_site()
    existed = site.exists()
    p = subprocess.run(
        [sys.executable, "-m", "benchmarks", *argv, "--work-dir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 1 and p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("--gpu: no CUDA device here"), p.stderr
    assert site.exists() == existed and not any(tmp_path.iterdir())


def test_qlora_arms_are_skipped_without_bitsandbytes():
    """Control: with bitsandbytes importable every GPU arm runs."""
    assert gpu_arms({"peft", "bitsandbytes"}) == (GPU_ARMS, {})
    arms, skipped = gpu_arms({"peft"})
    assert arms == ("P", "N") and skipped == {"PQ": QLORA_SKIPPED, "NQ": QLORA_SKIPPED}
    assert QLORA_SKIPPED == "bitsandbytes not installed: QLoRA arm skipped"


# ----------------------------------------------------------------------------------------------------- MFU
def test_llama_counts_match_the_models_built_from_the_config():
    """The matmul weights counted from a config equal the Linear weights of the model transformers builds (the tied
    head counted once), and the LoRA count equals PEFT's trainable parameters. Control: SmolLM2's shape, with
    grouped-query attention (3 of 9 heads for k and v), where counting k and v as d x d would be off."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    def linear_weights(m):
        return sum(x.weight.numel() for x in m.modules() if isinstance(x, torch.nn.Linear))

    with torch.device("meta"):
        big = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M))
    assert llama_counts(SMOLLM2_135M, 16)["matmul"] == linear_weights(big) == 134_479_872
    tiny = dict(SMOLLM2_135M, vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2)
    tiny.update(num_attention_heads=4, num_key_value_heads=2)
    model = get_peft_model(
        LlamaForCausalLM(LlamaConfig(**tiny)), LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert llama_counts(tiny, 4)["lora"] == trainable


def test_model_flops_and_mfu_by_hand():
    """One block of width 2, two examples of 2 and 3 tokens: matmul weights 7 x 4 + head 3 x 2 = 34, adapters
    (r 1) 7 x 4 = 28; 5 x (4 x 34 + 6 x 28) + 12 x 1 x 2 x (4 + 9) = 1,832. Control: the same 5 tokens as one
    example cost more (attention is confined to each example)."""
    cfg = dict(hidden_size=2, intermediate_size=2, num_hidden_layers=1, num_attention_heads=1, vocab_size=3)
    assert model_flops(cfg, 1, [2, 3]) == 1832
    assert model_flops(cfg, 1, [5]) == 5 * 304 + 12 * 2 * 25
    assert mfu(1832.0, 2.0, 1000.0) == pytest.approx(0.916)
    assert mfu(1832.0, 2.0, None) is None


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA L4", 121e12),
        ("Tesla T4", 65e12),
        ("NVIDIA L40S", 362e12),  # control: not L4's figure
        ("NVIDIA GeForce GTX 1080", None),
    ],
)
def test_peak_bf16_by_device_name(name, peak):
    from nb_finetune.core.flops import peak_flops

    assert peak_flops(name, "bf16") == peak


def _gpu_doc(peak):
    spec = LLMSpec(work_dir="/tmp/x", model="smollm2-shape", device="cuda", precision="bf16")
    runs = [
        {"arm": "P", "rep": 0, "wall_s": 10.0, "tokens_per_s": 1000.0, "steps": 8, "syncs_per_100_steps": 0.0,
         "train_loss": 3.0, "peak_cuda_mb": 2048.0},
        {"arm": "N", "rep": 0, "wall_s": 8.0, "tokens_per_s": 1250.0, "steps": 8, "syncs_per_100_steps": 12.5,
         "train_loss": 3.0, "peak_cuda_mb": 2100.0},
        {"arm": "N", "rep": 1, "label": "", "failed": "RuntimeError: CUDA error: out of memory"},
    ]  # fmt: skip
    return {
        "spec": asdict(spec),
        "reps": 2,
        "machine": {"gpu": "NVIDIA H200"},
        "skipped": {"PQ": QLORA_SKIPPED, "NQ": QLORA_SKIPPED},
        "flops": {"model_flops": 1e15, "peak_flops": peak, "formula": "F"},
        "runs": runs,
    }


def test_gpu_summary_reports_mfu_memory_and_what_did_not_run():
    """MFU = 1e15 FLOPs / 8 s / 1e15 FLOP/s = 12.5% for N (10.0% for P); the failed repetition is listed and left
    out of the medians. Control: an unknown device prints n/a instead of a number."""
    table, line = summarize(json.loads(json.dumps(_gpu_doc(1e15))))
    assert "| N nb_finetune, packing: true | 8.0 | 1,250 | 12.5% | 2,100 | 8 | 12 | 3.000 | N/P 1.25x |" in table
    assert "| P PEFT + Accelerate loop, packed | 10.0 | 1,000 | 10.0% | 2,048 |" in table
    assert f"PQ PEFT + Accelerate loop, QLoRA 4-bit, packed: {QLORA_SKIPPED}" in table
    assert "N rep 1 failed: RuntimeError: CUDA error: out of memory" in table
    assert line == "N/P: 1.25x | MFU P 10.0% | MFU N 12.5%"
    table, line = summarize(_gpu_doc(None))
    assert "n/a (device not in the table)" in table and "| 8.0 | 1,250 | n/a |" in table and "MFU N n/a" in line


# ------------------------------------------------------------------------------------------------- bootstrap
def make_wheel(where: Path, name: str, version: str, tag: str = "py3-none-any", requires=(), module=None) -> Path:
    """A minimal wheel: one module printing nothing, and its dist-info (METADATA with Requires-Dist, WHEEL)."""
    module = module or name.replace("-", "_")
    dist = f"{name.replace('-', '_')}-{version}"
    path = where / f"{dist}-{tag}.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires
    )
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{module}/__init__.py", f"VERSION = {version!r}\n")
        z.writestr(f"{dist}.dist-info/METADATA", meta)
        z.writestr(f"{dist}.dist-info/WHEEL", f"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: {tag}\n")
        z.writestr(f"{dist}.dist-info/RECORD", "")
    return path


REQS = (
    B.Req("alpha", ">=2", "alpha", "an arm"),
    B.Req("beta", "", "beta", "an arm"),
    B.Req("gamma", "", "gamma", "an arm"),
)


def test_install_plan_picks_fitting_wheels_and_their_needs(tmp_path):
    """alpha 1.0 is installed but out of range: its carried 2.0 goes in, with delta (which it needs and nobody has);
    beta's only wheel is for another Python (missing, named); gamma is installed; epsilon is a note. Control: with
    the index reachable, beta goes to the index instead of missing."""
    make_wheel(tmp_path, "alpha", "2.0", requires=["delta>=1", "epsilon", "gamma>=1", "zeta; extra == 'docs'"])
    make_wheel(tmp_path, "alpha", "1.5")
    make_wheel(tmp_path, "beta", "1.0", tag="cp99-cp99-manylinux_2_17_x86_64")
    make_wheel(tmp_path, "delta", "1.1")
    installed = {"alpha": "1.0", "gamma": "3.0"}.get
    steps, notes = B.plan(tmp_path, installed=installed, tags=B.here_tags(), reqs=REQS)
    got = {s.name: (s.action, s.detail) for s in steps}
    assert got["alpha"] == ("wheel", "alpha-2.0-py3-none-any.whl")
    assert got["beta"][0] == "missing" and "beta-1.0-cp99-cp99-manylinux_2_17_x86_64.whl" in got["beta"][1]
    assert got["gamma"] == ("ok", "3.0 installed")
    assert got["delta"] == ("wheel", "delta-1.1-py3-none-any.whl")
    assert [s.why for s in steps if s.name == "delta"] == ["needed by alpha"]
    assert notes == ["alpha wants epsilon; not installed, and not carried"]
    steps, _ = B.plan(tmp_path, installed=installed, tags=B.here_tags(), index=True, reqs=REQS)
    assert {s.name: s.action for s in steps}["beta"] == "index"


@pytest.mark.parametrize("how", ["pip", "unpacked"])
def test_install_makes_the_module_importable_in_a_fresh_process(tmp_path, monkeypatch, how):
    """With pip, or by unpacking the wheel where pip fails. Control: before the install the import fails."""
    wh, site = tmp_path / "wh", tmp_path / "site"
    wh.mkdir()
    make_wheel(wh, "nbft-probe-pkg", "0.3", module="nbft_probe_pkg")
    reqs = (B.Req("nbft-probe-pkg", "", "nbft_probe_pkg", "a test"),)
    env = {**os.environ, "PYTHONPATH": str(site)}
    assert B.importable(["nbft_probe_pkg"], env)["nbft_probe_pkg"].startswith("ModuleNotFoundError")
    if how == "unpacked":
        monkeypatch.setattr(B, "_pip", lambda args, timeout=600: (False, "No module named pip"))
    steps, _ = B.plan(wh, reqs=reqs)
    lines = B.install(steps, site)
    assert len(lines) == 1 and lines[0].startswith("  nbft-probe-pkg: installed 0.3 (")
    assert ("unpacked (pip: No module named pip)" in lines[0]) == (how == "unpacked")
    assert B.importable(["nbft_probe_pkg"], env) == {"nbft_probe_pkg": None}


def test_ensure_dry_run_installs_nothing_and_a_broken_wheel_does_not_stop_it(tmp_path, capsys, monkeypatch):
    """The dry run prints the plan and creates no site directory; a corrupt wheel (the newest alpha) makes the plan
    fail, which ensure reports and survives. Control: what imports is still checked and reported afterwards."""
    import re

    monkeypatch.setenv("PIP_NO_INDEX", "1")  # no network in tests: the index counts as unreachable
    wh, site = tmp_path / "wh", tmp_path / "site"
    wh.mkdir()
    make_wheel(wh, "alpha", "2.0")
    B.ensure(wh, site, dry_run=True, reqs=REQS)
    err = capsys.readouterr().err
    assert re.search(r"alpha\s+wheel\s+alpha-2\.0-py3-none-any\.whl", err) and not site.exists()
    assert re.search(r"beta\s+missing\s+no carried wheel", err)
    (wh / "alpha-3.0-py3-none-any.whl").write_bytes(b"not a zip")
    report = B.ensure(wh, site, reqs=(B.Req("alpha", "", "packaging", "a test"),))
    assert any("the plan or the install failed (BadZipFile" in x for x in report.lines)
    assert report.importable == {"alpha"} and report.lines[-1] == "bootstrap: every package imports"


def test_prepare_fills_the_wheelhouse_in_order_within_the_cap(tmp_path, monkeypatch):
    """Wheels are taken in REQS order while they fit: with a 5 MiB cap the 1/8 MiB wheels go in and bitsandbytes
    (4.5 MiB here) is left out, named; --have packages take no room. Control: a 20 MiB cap takes bitsandbytes too."""

    def fake_pip(args, timeout=600):
        name = args[-1].split(">")[0].split("=")[0]
        d = Path(args[args.index("-d") + 1])
        size = int(4.5 * 2**20) if name == "bitsandbytes" else 2**20 // 8
        (d / f"{name.replace('-', '_')}-1.0-py3-none-any.whl").write_bytes(b"x" * size)
        return True, ""

    monkeypatch.setattr(B, "_pip", fake_pip)
    monkeypatch.setattr(B, "_prepare_assets", lambda assets: "  assets: none")
    lines = B.prepare_wheelhouse(tmp_path, have=("pandas", "pyarrow"), max_mb=5)
    assert "  pandas: left out (--have)" in lines and "  pyarrow: left out (--have)" in lines
    assert any(x.startswith("  bitsandbytes: left out, 4.5 MiB would pass --max-mb 5") for x in lines)
    assert not list(tmp_path.glob("bitsandbytes*")) and len(list(tmp_path.glob("*.whl"))) == len(B.REQS) - 3
    B.prepare_wheelhouse(tmp_path, have=("pandas", "pyarrow"), max_mb=20)
    assert list(tmp_path.glob("bitsandbytes*"))


# ------------------------------------------------------------------------------------------ the shared runner
CHILD = """
import json, sys
arm, spec, out = sys.argv[1:4]
if arm == "bad":
    sys.exit("boom: this arm cannot run")
json.dump({"arm": arm, "spec": json.load(open(spec)), "wall_s": 1.0}, open(out, "w"))
"""


def test_runner_interleaves_arms_and_records_repetitions(tmp_path):
    """A B A B, each with its own spec; a failing arm ends the benchmark unless keep_going, which records it and
    goes on. Control: without keep_going the same plan raises SystemExit naming the arm and its label."""
    plan = [("a", json.dumps({"k": 0}), ""), ("b", json.dumps({"k": 3}), "k=3")]
    runs = run_interleaved(["-c", CHILD], plan, 2, tmp=tmp_path)
    assert [(r["arm"], r["rep"], r["spec"]["k"]) for r in runs] == [("a", 0, 0), ("b", 0, 3), ("a", 1, 0), ("b", 1, 3)]
    plan.insert(1, ("bad", "{}", "k=0"))
    runs = run_interleaved(["-c", CHILD], plan, 1, keep_going=True, tmp=tmp_path)
    assert [r["arm"] for r in runs] == ["a", "bad", "b"]
    assert runs[1]["failed"] == "boom: this arm cannot run"
    with pytest.raises(SystemExit, match=r"arm bad \(k=0\) failed"):
        run_interleaved(["-c", CHILD], plan, 1, tmp=tmp_path)


def _probe_module(folder: Path, name: str):
    """A module in `folder` that, like pyarrow (its MonthDayNano type), holds something dill cannot pickle."""
    import importlib.util

    folder.mkdir(parents=True)
    (folder / f"{name}.py").write_text("pending = (i for i in range(3))\n")
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_datasets_fingerprints_code_that_uses_a_package_from_the_bootstrap_site(tmp_path):
    """datasets hashes every Dataset it builds with dill, through a local function that uses pyarrow: a module
    from the bootstrap's folder must be pickled by name. Control: the same module in the folder the bootstrap used
    before (benchmarks/.work/site-X.Y) is pickled by value and fails, as pyarrow did (MonthDayNano)."""
    pytest.importorskip("datasets")
    from datasets.fingerprint import Hasher

    def uses(mod):
        def build():  # a local function (dill cannot import it by name), as datasets' own
            return mod.pending

        return build

    site = B.default_site()
    assert site.name == "site-packages"
    here = _probe_module(tmp_path / site.relative_to(ROOT), "nbf_probe_new_site")
    old = _probe_module(tmp_path / "benchmarks" / ".work" / "site-3.x", "nbf_probe_old_site")
    try:
        assert len(Hasher.hash(uses(here))) == 16
        with pytest.raises(TypeError, match="generator"):
            Hasher.hash(uses(old))
    finally:
        sys.modules.pop("nbf_probe_new_site"), sys.modules.pop("nbf_probe_old_site")
