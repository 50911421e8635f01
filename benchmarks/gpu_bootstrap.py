"""Bring the GPU benchmarks' packages to a CUDA machine that has torch and transformers and none of our other
dependencies, without a network: wheels downloaded here, into benchmarks/.wheels/, travel with the checkout.

    python -m benchmarks.gpu_bootstrap --prepare [--have pandas,pyarrow] [--python 3.12] [--max-mb 56]
        here, with a network: the wheels for that Python on x86-64 Linux, plus the text benchmark's tokenizer and
        sentences, at most --max-mb in all (the rest is listed as left out); --have: packages the GPU machine
        already has (most CUDA images carry pandas and pyarrow), so they take no room
    python -m benchmarks.gpu_bootstrap            there (or anywhere): the install plan, nothing installed
    python -m benchmarks.gpu_bootstrap --install  there: install what the plan says
    python -m benchmarks llm --gpu                there: installs what is missing, then runs the arms

Each package the arms need and this Python lacks (or has in a version out of range) is installed into
benchmarks/.work/python-<version>/site-packages/, never into the environment itself: from a carried wheel that fits this
Python and platform, else from the package index when it answers, else it is reported missing. Nothing of that
stops the run: an arm that needs a missing package is skipped or fails with its reason, and the others go on.
nb_finetune itself is not installed: the arms import it from this checkout (the benchmark puts it first on their
path), so what is measured is the code of this commit.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / "benchmarks" / ".wheels"
ASSETS = WHEELS / "assets"
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (28, 27, 26, 25, 24, 17, 12, 5)] + [
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
]


@dataclass(frozen=True)
class Req:
    name: str  # distribution name
    spec: str  # version range ("" = any)
    module: str  # what the arms import
    why: str


# What the arms import beyond torch and transformers (and what those two bring: numpy, packaging, huggingface_hub,
# tokenizers, ...), in the order the wheelhouse is filled: the packages every arm needs first, bitsandbytes (only the
# QLoRA arms use it, 43 MB) last.
REQS = (
    Req("pydantic", ">=2.5", "pydantic", "nb_finetune's config"),
    Req("pydantic-core", "", "pydantic_core", "pydantic"),
    Req("annotated-types", "", "annotated_types", "pydantic"),
    Req("typing-inspection", "", "typing_inspection", "pydantic"),
    Req("typing-extensions", "", "typing_extensions", "pydantic"),
    Req("pyyaml", ">=6.0", "yaml", "nb_finetune's config"),
    Req("safetensors", ">=0.4", "safetensors", "checkpoints"),
    Req("jupyter-core", ">=5.0", "jupyter_core", "nb_finetune's run index"),
    Req("platformdirs", ">=2.5", "platformdirs", "jupyter-core"),
    Req("traitlets", ">=5.3", "traitlets", "jupyter-core"),
    Req("psutil", "", "psutil", "accelerate, peft"),
    Req("accelerate", ">=0.34", "accelerate", "the loops"),
    Req("peft", ">=0.13", "peft", "LoRA"),
    Req("datasets", ">=2.19", "datasets", "nb_finetune's data, the Trainer arms"),
    Req("dill", "", "dill", "datasets"),
    Req("multiprocess", "", "multiprocess", "datasets"),
    Req("xxhash", "", "xxhash", "datasets"),
    Req("fsspec", "", "fsspec", "datasets"),
    Req("pandas", ">=1.5", "pandas", "nb_finetune's data, datasets"),
    Req("python-dateutil", ">=2.8.2", "dateutil", "pandas"),
    Req("six", ">=1.5", "six", "python-dateutil"),
    Req("pyarrow", "", "pyarrow", "datasets"),
    Req("bitsandbytes", "", "bitsandbytes", "the QLoRA arms"),
)


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def default_site() -> Path:
    """benchmarks/.work/python-X.Y/site-packages. The last part must be `site-packages`: `datasets` fingerprints
    every Dataset it builds by pickling it with dill, and dill pickles a module whose file lies outside the
    interpreter's prefixes and outside any `site-packages` folder by value (its whole namespace), not by name:
    pyarrow installed in a folder named otherwise made every Dataset fail with "PicklingError: Can't pickle
    <class 'MonthDayNano'>"."""
    v = f"{sys.version_info.major}.{sys.version_info.minor}"
    return ROOT / "benchmarks" / ".work" / f"python-{v}" / "site-packages"


def installed_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _satisfies(version: str | None, spec: str) -> bool:
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    if version is None:
        return False
    try:
        return Version(version) in SpecifierSet(spec, prereleases=True)
    except InvalidVersion:
        return not spec


@dataclass(frozen=True)
class Wheel:
    path: Path
    name: str  # normalised
    version: str
    tags: frozenset

    @classmethod
    def parse(cls, path: Path) -> Wheel | None:
        from packaging.utils import InvalidWheelFilename, parse_wheel_filename

        try:
            name, version, _, tags = parse_wheel_filename(path.name)
        except InvalidWheelFilename:
            return None
        return cls(path, norm(name), str(version), frozenset(str(t) for t in tags))

    def requires(self) -> list:
        """Its Requires-Dist lines that apply here without extras, as packaging Requirements."""
        from packaging.requirements import InvalidRequirement, Requirement

        with zipfile.ZipFile(self.path) as z:
            meta = next((n for n in z.namelist() if n.endswith(".dist-info/METADATA")), None)
            text = z.read(meta).decode("utf-8", "replace") if meta else ""
        out = []
        for line in text.splitlines():
            if not line.startswith("Requires-Dist:"):
                continue
            try:
                r = Requirement(line.split(":", 1)[1].strip())
            except InvalidRequirement:
                continue
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                out.append(r)
        return out


def here_tags() -> frozenset:
    from packaging.tags import sys_tags

    return frozenset(str(t) for t in sys_tags())


@dataclass
class Step:
    name: str
    action: str  # ok (installed, in range), wheel (a carried wheel), index (the package index), missing
    detail: str
    why: str
    wheel: Wheel | None = None
    spec: str = ""

    def line(self) -> str:
        return f"  {self.name:<18} {self.action:<8} {self.detail}  ({self.why})"


def plan(
    wheelhouse: Path = WHEELS,
    *,
    installed: Callable[[str], str | None] = installed_version,
    tags: frozenset | None = None,
    index: bool = False,
    reqs=REQS,
) -> tuple[list[Step], list[str]]:
    """What to do for each requirement, and notes (a carried wheel that needs something neither installed nor
    carried). `index`: whether the package index answers (then a requirement without a wheel goes there)."""
    tags = here_tags() if tags is None else tags
    wheels = [w for w in (Wheel.parse(p) for p in sorted(Path(wheelhouse).glob("*.whl"))) if w is not None]
    fitting = [w for w in wheels if w.tags & tags]

    def best(name: str, spec) -> Wheel | None:
        from packaging.version import Version

        ok = [w for w in fitting if w.name == name and _satisfies(w.version, str(spec))]
        return max(ok, key=lambda w: Version(w.version), default=None)

    steps: list[Step] = []
    for r in reqs:
        have = installed(r.name)
        if _satisfies(have, r.spec):
            steps.append(Step(r.name, "ok", f"{have} installed", r.why, spec=r.spec))
            continue
        w = best(norm(r.name), r.spec)
        why = r.why + (f"; {have} installed is out of range {r.spec}" if have else "")
        if w is not None:
            steps.append(Step(r.name, "wheel", w.path.name, why, w, r.spec))
            continue
        unfit = [x.path.name for x in wheels if x.name == norm(r.name) and not x.tags & tags]
        detail = f"no carried wheel{' fits this Python (' + ', '.join(unfit) + ')' if unfit else ''}"
        steps.append(Step(r.name, "index" if index else "missing", detail, why, spec=r.spec))

    notes: list[str] = []
    todo = [s for s in steps if s.wheel is not None]
    while todo:  # what the carried wheels need: installed in range, carried too, or a note
        s = todo.pop()
        for dep in s.wheel.requires():
            n, spec = norm(dep.name), str(dep.specifier)
            cur = next((x for x in steps if norm(x.name) == n), None)
            if cur is not None and cur.wheel is not None:
                if not _satisfies(cur.wheel.version, spec):
                    notes.append(f"{s.name} wants {dep}; the carried {cur.wheel.path.name} is out of that range")
                continue
            have = installed(dep.name)
            if _satisfies(have, spec):
                continue
            w = best(n, spec)
            if w is None:
                notes.append(f"{s.name} wants {dep}; {'found ' + have if have else 'not installed'}, and not carried")
                continue
            why = f"needed by {s.name}" + (f" ({dep}; {have} installed)" if have else "")
            if cur is None:
                cur = Step(dep.name, "wheel", w.path.name, why, w, spec)
                steps.append(cur)
            else:  # installed but out of the range this wheel needs: the carried one goes first on the path
                cur.action, cur.detail, cur.why, cur.wheel, cur.spec = "wheel", w.path.name, why, w, spec
            todo.append(cur)
    return steps, notes


def index_reachable(timeout: float = 3.0) -> bool:
    """Whether the package index (PIP_INDEX_URL's host, else PyPI) accepts a connection."""
    if os.environ.get("PIP_NO_INDEX", "").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple")).hostname or "pypi.org"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _pip(args: list[str], timeout: float = 600) -> tuple[bool, str]:
    try:
        proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
    return proc.returncode == 0, tail[0]


def extract_wheel(path: Path, site: Path) -> None:
    """Install a wheel by unpacking it (a wheel is a zip of its files in site-packages layout): for a Python
    without pip. Files under NAME.data/purelib and /platlib go to the top."""
    site.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path) as z:
        z.extractall(site)
    for data in site.glob("*.data"):
        for sub in ("purelib", "platlib"):
            for item in (data / sub).glob("*") if (data / sub).is_dir() else []:
                target = site / item.name
                if target.exists():
                    shutil.rmtree(target) if target.is_dir() else target.unlink()
                shutil.move(str(item), str(target))
        shutil.rmtree(data, ignore_errors=True)


def install(steps: list[Step], site: Path) -> list[str]:
    """Carry out a plan into `site`; one line per package, never an exception for one that fails."""
    lines = []
    for s in steps:
        if s.action == "wheel":
            ok, msg = _pip(["install", "--no-index", "--no-deps", "--no-compile", "--upgrade", "--target", str(site)]
                           + [str(s.wheel.path)])  # fmt: skip
            if not ok:
                try:
                    extract_wheel(s.wheel.path, site)
                    ok, msg = True, f"unpacked (pip: {msg or 'not available'})"
                except (OSError, zipfile.BadZipFile) as e:
                    msg = f"{msg}; unpacking failed too: {e}"
            lines.append(f"  {s.name}: {'installed ' + s.wheel.version if ok else 'NOT installed'} ({msg or 'pip'})")
        elif s.action == "index":
            ok, msg = _pip(["install", "--no-deps", "--target", str(site), "--timeout", "15", "--retries", "1",
                            f"{s.name}{s.spec}"])  # fmt: skip
            lines.append(f"  {s.name}: {'installed from the index' if ok else 'NOT installed: ' + msg}")
    return lines


def importable(modules: list[str], env: dict) -> dict[str, str | None]:
    """module -> None if it imports in a fresh process with `env`, else the error's last line. bitsandbytes (CUDA
    libraries) gets its own process, and a process that dies is retried one module at a time."""
    code = (
        "import importlib, json, sys\nout = {}\nfor m in sys.argv[1:]:\n    try:\n        importlib.import_module(m)\n"
        "        out[m] = None\n    except Exception as e:\n        out[m] = f'{type(e).__name__}: {e}'[:300]\n"
        "print(json.dumps(out))"
    )

    def run(mods: list[str]) -> dict | None:
        try:
            p = subprocess.run(
                [sys.executable, "-c", code, *mods], capture_output=True, text=True, env=env, timeout=300
            )
            return json.loads(p.stdout.strip().splitlines()[-1])
        except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
            return None

    out: dict[str, str | None] = {}
    for group in ([m for m in modules if m != "bitsandbytes"], [m for m in modules if m == "bitsandbytes"]):
        if not group:
            continue
        res = run(group)
        if res is None:
            res = {}
            for m in group:
                one = run([m])
                res[m] = one[m] if one else "the import crashed the interpreter"
        out.update(res)
    return out


@dataclass
class Report:
    site: Path
    steps: list[Step]
    notes: list[str]
    importable: set[str] = field(default_factory=set)  # distribution names whose module imports in a fresh process
    lines: list[str] = field(default_factory=list)


def ensure(wheelhouse: Path = WHEELS, site: Path | None = None, *, dry_run: bool = False, reqs=REQS) -> Report:
    """Plan, install into `site`, put `site` on this process's path and on PYTHONPATH (for the arms' processes),
    then check which modules import. Prints what it did; never raises for a package that cannot be had."""
    site = Path(site or default_site())
    if site.is_dir():  # what an earlier run installed counts as installed
        sys.path.insert(0, str(site))
        import importlib

        importlib.invalidate_caches()
    report = Report(site, [], [])
    try:
        steps, notes = plan(wheelhouse, index=False, reqs=reqs)
        if any(s.action == "missing" for s in steps) and index_reachable():
            steps, notes = plan(wheelhouse, index=True, reqs=reqs)
        report.steps, report.notes = steps, notes
        report.lines = [f"bootstrap: {sys.executable} (Python {sys.version.split()[0]}), wheels from {wheelhouse}"]
        report.lines += [s.line() for s in steps] + [f"  note: {n}" for n in notes]
        if not dry_run:
            report.lines += install(steps, site)
    except Exception as e:  # noqa: BLE001 - the bootstrap never ends the run: the arms report what is missing
        report.lines.append(f"bootstrap: the plan or the install failed ({type(e).__name__}: {e}); going on")
    if dry_run:
        print("\n".join(report.lines), file=sys.stderr)
        return report
    if site.is_dir() and str(site) not in sys.path:
        sys.path.insert(0, str(site))
    if site.is_dir():
        old = os.environ.get("PYTHONPATH", "")
        if str(site) not in old.split(os.pathsep):
            os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), old) if p)
    data = Path(wheelhouse) / "assets" / "data"
    home = Path.home() / ".cache" / "nb_finetune" / "data" / "movie_reviews.tsv"
    if "NB_FINETUNE_DATA_DIR" not in os.environ and not home.is_file() and (data / "movie_reviews.tsv").is_file():
        os.environ["NB_FINETUNE_DATA_DIR"] = str(data)  # the text benchmark's sentences, carried
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    errors = importable([r.module for r in reqs], env)
    report.importable = {r.name for r in reqs if r.module in errors and errors[r.module] is None}
    bad = [f"{r.name} ({errors[r.module]})" for r in reqs if errors.get(r.module)]
    report.lines.append("bootstrap: " + (f"cannot import {'; '.join(bad)}" if bad else "every package imports"))
    print("\n".join(report.lines), file=sys.stderr, flush=True)
    return report


# ----------------------------------------------------------------------------------------------- here: --prepare
def prepare_wheelhouse(
    dest: Path = WHEELS, have: tuple[str, ...] = (), pythons: tuple[str, ...] = ("3.12",), max_mb: float = 56.0
) -> list[str]:
    """Download the wheels (no dependencies: REQS is the closure) for those Python versions on x86-64 Linux, and
    the text benchmark's assets, into `dest`, filling at most `max_mb` in REQS order; returns what it did."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):
        old.unlink()
    lines = [_prepare_assets(dest / "assets")]

    def size() -> int:
        return sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())

    skip = {norm(h) for h in have}
    for r in REQS:
        if norm(r.name) in skip:
            lines.append(f"  {r.name}: left out (--have)")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            errs = []
            for py in pythons:
                plat = [a for p in PLATFORMS for a in ("--platform", p)]
                ok, msg = _pip(["download", "--no-deps", "--only-binary=:all:", "--python-version", py,
                                "--implementation", "cp", *plat, "-d", tmp, "-q", f"{r.name}{r.spec}"])  # fmt: skip
                if not ok:
                    errs.append(f"Python {py}: {msg}")
            files = [p for p in Path(tmp).glob("*.whl") if not (dest / p.name).exists()]
            new = sum(p.stat().st_size for p in files)
            if not files:
                lines.append(f"  {r.name}: NOT downloaded ({'; '.join(errs) or 'no wheel'})")
            elif size() + new > max_mb * 2**20:
                lines.append(f"  {r.name}: left out, {new / 2**20:.1f} MiB would pass --max-mb {max_mb:g}")
            else:
                for p in files:
                    shutil.move(str(p), dest / p.name)
                lines.append(f"  {r.name}: {', '.join(p.name for p in files)} ({new / 2**20:.1f} MiB)")
    lines.append(f"wheelhouse {dest}: {size() / 2**20:.1f} MiB in all")
    return lines


def _prepare_assets(assets: Path) -> str:
    """MiniLM's tokenizer files and the movie-review sentences (the text benchmark), when this machine has them."""
    sys.path.insert(0, str(ROOT))
    from nb_finetune import examples
    from nb_finetune.errors import FinetuneError

    done = []
    try:
        src = Path(examples.default_model_path())
        tok = assets / "minilm-tokenizer"
        tok.mkdir(parents=True, exist_ok=True)
        for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
            if (src / f).is_file():
                shutil.copy2(src / f, tok / f)
        done.append("MiniLM tokenizer")
    except FinetuneError as e:
        done.append(f"no MiniLM tokenizer ({e})")
    try:
        tsv = examples.fetch_movie_reviews(quiet=True)
        (assets / "data").mkdir(parents=True, exist_ok=True)
        shutil.copy2(tsv, assets / "data" / "movie_reviews.tsv")
        done.append("movie-review sentences")
    except FinetuneError as e:
        done.append(f"no movie-review sentences ({e})")
    return f"  assets ({assets}): {', '.join(done)}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_bootstrap",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--prepare", action="store_true", help="download the wheels and assets (needs a network)")
    p.add_argument("--install", action="store_true", help="install what the plan says (default: only show it)")
    p.add_argument("--have", default="", help="with --prepare: comma-separated packages the GPU machine has")
    p.add_argument(
        "--python", default="3.12", help="with --prepare: the GPU machine's Python version(s), e.g. 3.11,3.12"
    )
    p.add_argument("--max-mb", type=float, default=56.0, help="with --prepare: the wheelhouse's size cap in MiB")
    p.add_argument("--wheels", type=Path, default=WHEELS, help="the wheelhouse (default: benchmarks/.wheels)")
    args = p.parse_args(argv)
    if args.prepare:
        have = tuple(h.strip() for h in args.have.split(",") if h.strip())
        unknown = sorted({norm(h) for h in have} - {norm(r.name) for r in REQS})
        if unknown:
            p.error(f"--have: {', '.join(unknown)} not among {', '.join(r.name for r in REQS)}")
        pythons = tuple(v.strip() for v in args.python.split(",") if v.strip())
        print("\n".join(prepare_wheelhouse(args.wheels, have, pythons, args.max_mb)))
        return 0
    ensure(args.wheels, dry_run=not args.install)
    return 0


if __name__ == "__main__":
    sys.exit(main())
