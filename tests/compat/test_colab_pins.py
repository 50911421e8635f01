"""Installing nb_finetune[notebook] on Google Colab must not move any of Colab's preinstalled versions.

`.venv-colab` (`make venv-colab`) holds Colab's versions of our whole dependency closure (colab-pins.txt says
where they come from). The built wheel is dry-run installed into it as a Colab user would install it, and
pip's `--report` must install nothing but nb-finetune itself. The checker is unit-tested on crafted reports
and on a real dry-run that does move a pin.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[2]
PINS_FILE = Path(__file__).with_name("colab-pins.txt")
COLAB_PYTHON = ROOT / ".venv-colab" / "bin" / "python"
PROJECT = "nb-finetune"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path = PINS_FILE) -> tuple[dict[str, str], set[str]]:
    """({canonical name: version} of the `name==version` lines, names of the `# unpinned:` line)."""
    pins, unpinned = {}, set()
    for line in path.read_text().splitlines():
        if line.startswith("# unpinned:"):
            unpinned |= {canonical(n) for n in line.split(":", 1)[1].split()}
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"{path.name}: not an exact pin: {line!r}"
            pins[canonical(name)] = version.strip()
    return pins, unpinned


def _same_version(pinned: str, version: str) -> bool:
    # `==2.13.0` admits the local build 2.13.0+cpu, as pip does
    return SpecifierSet(f"=={pinned}").contains(version, prereleases=True)


def _requirers(report: dict, name: str) -> list[str]:
    """Who asks for `name` in the report: the user's request, or the requirement lines of other items."""
    env = report.get("environment", {})
    found = []
    for item in report["install"]:
        meta = item["metadata"]
        if canonical(meta["name"]) == name and item.get("requested"):
            found.append("requested directly")
        for line in meta.get("requires_dist") or []:
            req = Requirement(line)
            if canonical(req.name) != name:
                continue
            extras = item.get("requested_extras") or []
            if req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in [*extras, ""]):
                found.append(f"{meta['name']} {meta['version']} requires {line!r}")
    return found


def moved_pins(report: dict, pins: dict[str, str], unpinned: set[str] = frozenset()) -> list[str]:
    """One line per package the install would change or add, besides the project itself; empty when none."""
    problems = []
    for item in report["install"]:
        name, version = canonical(item["metadata"]["name"]), item["metadata"]["version"]
        if name == PROJECT or name in unpinned:
            continue
        why = "; ".join(_requirers(report, name)) or "no requirement found in the report"
        if name not in pins:
            problems.append(
                f"{item['metadata']['name']} {version} would be added: not in colab-pins.txt (a new dependency? "
                f"add Colab's version there) <- {why}"
            )
        elif not _same_version(pins[name], version):
            problems.append(f"{item['metadata']['name']} {pins[name]} -> {version} <- {why}")
    return problems


def _colab_python() -> Path:
    if not COLAB_PYTHON.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{COLAB_PYTHON} is missing: `make test` builds it with `make venv-colab`")
        pytest.skip(f"{COLAB_PYTHON} is missing: run `make venv-colab`")
    return COLAB_PYTHON


def _dry_run(python: Path, tmp_path: Path, *requirements: str) -> dict:
    out = tmp_path / "report.json"
    cmd = [str(python), "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(out), *requirements]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"pip could not resolve {requirements} in {python.parent.parent}:\n{p.stderr[-3000:]}"
    return json.loads(out.read_text())


def _built_wheel(tmp_path: Path) -> Path:
    """`make wheel`'s output when the Makefile has that target (it ships the lab extension), else a plain build."""
    if re.search(r"^wheel:", (ROOT / "Makefile").read_text(), re.M):
        subprocess.run(["make", "-s", "wheel"], cwd=ROOT, check=True, timeout=600)
        wheels = sorted((ROOT / "dist").glob("nb_finetune-*.whl"), key=lambda p: p.stat().st_mtime)
        assert wheels, "`make wheel` left no dist/nb_finetune-*.whl"
        return wheels[-1]
    out = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)],
        check=True,
        timeout=300,
    )
    (wheel,) = out.glob("nb_finetune-*.whl")
    return wheel


# ---------------------------------------------------------------- the real check
@pytest.mark.compat
def test_wheel_with_notebook_extra_moves_no_colab_pin(tmp_path):
    python = _colab_python()
    pins, unpinned = read_pins()
    wheel = _built_wheel(tmp_path)
    report = _dry_run(python, tmp_path, f"{wheel}[notebook]")
    problems = moved_pins(report, pins, unpinned)
    assert not problems, "installing the wheel on Colab would change its pins:\n" + "\n".join(problems)


@pytest.mark.compat
def test_colab_venv_holds_exactly_the_pins():
    """Every package in .venv-colab is pinned (so a new dependency cannot slip in unpinned) and at its pin."""
    python = _colab_python()
    pins, unpinned = read_pins()
    p = subprocess.run(
        [str(python), "-m", "pip", "list", "--format", "json"], capture_output=True, text=True, check=True
    )
    installed = {canonical(d["name"]): d["version"] for d in json.loads(p.stdout)}
    wrong = [
        f"{n} {v} (pinned {pins[n]})" for n, v in installed.items() if n in pins and not _same_version(pins[n], v)
    ]
    extra = sorted(set(installed) - set(pins) - unpinned - {PROJECT, "wheel"})
    missing = sorted(set(pins) - set(installed))
    assert not wrong, f".venv-colab has other versions than colab-pins.txt (rebuild: make venv-colab): {wrong}"
    assert not extra, f"in .venv-colab but not in colab-pins.txt, add Colab's versions: {extra}"
    assert not missing, f"pinned but not installed in .venv-colab: {missing}"


@pytest.mark.compat
def test_a_real_dry_run_that_moves_a_pin_is_caught(tmp_path):
    """The same pip + checker path flags ipywidgets 8 (what our `lab` extra would pull into Colab)."""
    pins, unpinned = read_pins()
    report = _dry_run(_colab_python(), tmp_path, "ipywidgets>=8")
    problems = moved_pins(report, pins, unpinned)
    assert any(p.startswith("ipywidgets 7.7.1 -> 8.") and "requested directly" in p for p in problems), problems
    assert any(p.startswith("widgetsnbextension 3.6.10 -> 4.") and "ipywidgets 8." in p for p in problems), problems


# ---------------------------------------------------------------- the checker on crafted reports
def _item(name, version, requires=(), requested=False, extras=None):
    item = {"metadata": {"name": name, "version": version, "requires_dist": list(requires)}, "requested": requested}
    if extras:
        item["requested_extras"] = extras
    return item


ENV = {"python_version": "3.11", "sys_platform": "linux", "os_name": "posix", "platform_system": "Linux"}
PINS = {"ipywidgets": "7.7.1", "torch": "2.13.0", "bokeh": "3.8.2", "widgetsnbextension": "3.6.10"}


def test_checker_accepts_the_project_alone():
    report = {"environment": ENV, "install": [_item("nb-finetune", "0.1.0", ["ipywidgets>=7.7"], True, ["notebook"])]}
    assert moved_pins(report, PINS) == []


def test_checker_names_a_moved_pin_and_the_requirement_that_moved_it():
    report = {
        "environment": ENV,
        "install": [
            _item(
                "nb_finetune",
                "0.1.0",
                ["torch>=2.1", "ipywidgets>=8.0; extra == 'notebook'", "bokeh>=3.1; extra == 'notebook'"],
                requested=True,
                extras=["notebook"],
            ),
            _item("ipywidgets", "8.1.5", ["widgetsnbextension~=4.0.12"]),
            _item("widgetsnbextension", "4.0.13"),
        ],
    }
    problems = moved_pins(report, PINS)
    assert problems == [
        "ipywidgets 7.7.1 -> 8.1.5 <- nb_finetune 0.1.0 requires \"ipywidgets>=8.0; extra == 'notebook'\"",
        "widgetsnbextension 3.6.10 -> 4.0.13 <- ipywidgets 8.1.5 requires 'widgetsnbextension~=4.0.12'",
    ]


def test_checker_ignores_requirements_of_extras_not_requested():
    report = {
        "environment": ENV,
        "install": [
            _item("nb-finetune", "0.1.0", ["bokeh>=3.9; extra == 'lab'"], requested=True, extras=["notebook"]),
            _item("bokeh", "3.9.0"),
        ],
    }
    (problem,) = moved_pins(report, PINS)
    assert problem == "bokeh 3.8.2 -> 3.9.0 <- no requirement found in the report"


def test_checker_flags_a_new_unpinned_dependency_and_allows_the_listed_ones():
    report = {
        "environment": ENV,
        "install": [
            _item("nb-finetune", "0.1.0", ["rich>=13", "jedi>=0.16"], requested=True),
            _item("rich", "14.0.0"),
            _item("jedi", "0.19.2"),
        ],
    }
    (problem,) = moved_pins(report, PINS, unpinned={"jedi"})
    assert problem.startswith("rich 14.0.0 would be added: not in colab-pins.txt")
    assert "nb-finetune 0.1.0 requires 'rich>=13'" in problem


def test_checker_treats_a_local_build_as_its_pin():
    report = {"environment": ENV, "install": [_item("torch", "2.13.0+cpu"), _item("torch", "2.13.1")]}
    assert moved_pins(report, PINS) == ["torch 2.13.0 -> 2.13.1 <- no requirement found in the report"]


def test_pins_file_is_exact_and_holds_the_colab_stack():
    pins, unpinned = read_pins()
    for name, version in {
        "ipykernel": "6.17.1",
        "ipython": "7.34.0",
        "ipywidgets": "7.7.1",
        "bokeh": "3.8.2",
        "torch": "2.13.0",
    }.items():
        assert pins[name] == version
    assert "jupyter-bokeh" not in pins
    assert {"setuptools", "jedi", "overrides"} == unpinned
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for req in project["dependencies"] + project["optional-dependencies"]["notebook"]:
        assert canonical(Requirement(req).name) in pins, f"dependency {req} has no Colab pin"
