"""Runs the Galata / Playwright browser suite (ui-tests/) on Debian's Chromium against a real `jupyter lab`.

Needs `make labext browser-deps ui-deps` first. Outside CI a missing Chromium or ui-tests/node_modules skips with
the reason; in CI (`CI` set) it fails. Screenshots land in ui-tests/test-results/.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UI = ROOT / "ui-tests"
CHROMIUM = Path(os.environ.get("NBF_CHROMIUM", "/usr/bin/chromium"))
BUILT = ROOT / "nb_finetune" / "labextension" / "static" / "style.js"

pytestmark = pytest.mark.browser


def _missing() -> list[str]:
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (make browser-deps)")
    if not (UI / "node_modules" / "@jupyterlab" / "galata").is_dir():
        missing.append("ui-tests/node_modules (make ui-deps)")
    if not BUILT.exists():
        missing.append("the built lab extension nb_finetune/labextension (make labext)")
    if shutil.which("npx") is None:
        missing.append("node / npx")
    if not (Path(sys.prefix) / "bin" / "jupyter").exists():
        missing.append(f"{Path(sys.prefix) / 'bin' / 'jupyter'}")
    return missing


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_playwright_suite(tmp_path):
    missing = _missing()
    if missing:
        message = "browser tests need: " + ", ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    env = dict(os.environ)
    env.update(
        PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD="1",
        CI=env.get("CI") or "1",  # a fresh server of our own, never one left running
        NB_FINETUNE_INDEX_DIR=str(tmp_path / "index"),
        JUPYTERLAB_GALATA_ROOT_DIR=str(tmp_path / "root"),
        NBF_UI_PORT=str(_free_port()),  # parallel runs (another checkout, a developer's server) don't collide
    )
    (tmp_path / "root").mkdir()
    proc = subprocess.run(
        ["npx", "playwright", "test", "--reporter=list"],
        cwd=UI,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = proc.stdout + proc.stderr
    lines = [ln for ln in out.splitlines() if "[WebServer]" not in ln and "nodedir" not in ln]
    print("\n".join(lines[-60:]))
    assert proc.returncode == 0, "Playwright suite failed (screenshots in ui-tests/test-results/):\n" + "\n".join(
        lines[-200:]
    )
    assert " passed" in out, "Playwright ran no test:\n" + "\n".join(lines[-60:])
