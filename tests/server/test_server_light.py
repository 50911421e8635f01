"""The server extension is light (no torch, transformers or IPython on import) and is enabled on install."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ["torch", "transformers", "IPython", "accelerate", "datasets"]

_PROBE = """
import importlib, json, sys
for name in sys.argv[2:]:
    importlib.import_module(name)
print(json.dumps(sorted(m for m in json.loads(sys.argv[1]) if m in sys.modules)))
"""


def loaded_after_import(*modules: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONSTARTUP", "PYTHONPATH")}
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(HEAVY), *modules],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_importing_the_server_extension_loads_no_heavy_package():
    assert (
        loaded_after_import("nb_finetune.server", "nb_finetune.server.handlers", "nb_finetune.server.runs_view") == []
    )


def test_the_package_root_and_the_core_it_needs_are_light():
    assert loaded_after_import("nb_finetune", "nb_finetune.core.runs", "nb_finetune.core.events") == []
    assert loaded_after_import("nb_finetune.core.config") == []


def test_probe_sees_a_heavy_import():
    # the probe can fail: importing torch (as training does) shows up
    assert loaded_after_import("nb_finetune", "torch") == ["torch"]


def test_public_names_still_import_from_the_package_root():
    import nb_finetune
    from nb_finetune import FinetuneConfig, FinetuneError, finetune  # noqa: F401

    assert callable(finetune) and issubclass(FinetuneError, Exception)
    assert set(nb_finetune.__all__) <= set(dir(nb_finetune))


def test_extension_points_and_the_shipped_config_agree():
    import nb_finetune
    import nb_finetune.server as server

    points = nb_finetune._jupyter_server_extension_points()
    assert points == [{"module": "nb_finetune.server"}] == server._jupyter_server_extension_points()
    assert callable(server._load_jupyter_server_extension)
    cfg = json.loads((ROOT / "jupyter-config" / "jupyter_server_config.d" / "nb_finetune.json").read_text())
    assert cfg == {"ServerApp": {"jpserver_extensions": {"nb_finetune": True}}}
    tomllib = pytest.importorskip("tomllib")
    shared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"][
        "shared-data"
    ]
    assert shared["jupyter-config/jupyter_server_config.d"] == "etc/jupyter/jupyter_server_config.d"
