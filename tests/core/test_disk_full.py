"""A really full disk: the run's output_dir on a tiny tmpfs, sized so the first checkpoint fits and the second does
not. The kernel's ENOSPC (no patched writer) must leave the previous checkpoint whole and loadable, remove the
partial directory and tell the user in one line what happened and what to do.

Mounting needs CAP_SYS_ADMIN: as root the test mounts directly; otherwise it reruns itself in a private user and
mount namespace (`unshare -rm`); where neither is permitted it is skipped, saying why. Not marked slow: it runs in
`make test-fast` and in CI (a few seconds)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nb_finetune import finetune
from nb_finetune.core.runs import read_json
from nb_finetune.core.train.checkpoints import verify_checkpoint

INNER = "NB_FT_TMPFS_INNER"  # set in the rerun inside the namespaces: mount there or fail, never recurse


def _mount(path: Path, size_kib: int) -> str | None:
    """Mount a tmpfs of `size_kib` KiB at `path`; None, or why it could not be."""
    if shutil.which("mount") is None:
        return "no mount command"
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0755", "nbft-full", str(path)],
        capture_output=True,
        text=True,
    )
    return None if r.returncode == 0 else (r.stderr.strip() or f"mount exited with {r.returncode}")


def _rerun_in_namespaces(request, why: str) -> None:
    """This very test again, as root of a fresh user + mount namespace, where it may mount; skip where that is
    refused too."""
    if shutil.which("unshare") is None:
        pytest.skip(f"cannot mount a tmpfs ({why}) and there is no unshare")
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({why}), nor make a user namespace ({probe.stderr.strip()})")
    env = {
        **os.environ,
        INNER: "1",
        "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")]),
    }
    r = subprocess.run(
        ["unshare", "-rm", sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", request.node.nodeid],
        cwd=request.config.rootpath,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "1 passed" in r.stdout, r.stdout[-2000:]


def _checkpoint_bytes(model_dir: str) -> int:
    """About what one checkpoint takes: the weights, AdamW's two moments of each, the manifest and RNG state."""
    return 3 * (Path(model_dir) / "model.safetensors").stat().st_size + 64 * 1024


def test_a_real_full_disk_during_a_checkpoint(request, tiny_config, tiny_model_dir, tmp_path):
    """Control cases: step-2's checkpoint was written on the same small file system (it fits once), and the write
    that fails is the next checkpoint's, with the kernel's own ENOSPC."""
    mnt = tmp_path / "small"
    ck = _checkpoint_bytes(tiny_model_dir)
    size_kib = (ck + ck // 2) // 1024  # one checkpoint and the run's small files fit; a second checkpoint does not
    why = _mount(mnt, size_kib)
    if why is not None:
        if os.environ.get(INNER):
            pytest.fail(f"mount inside the namespaces failed: {why}")
        _rerun_in_namespaces(request, why)
        return
    try:
        cfg = {**tiny_config, "name": "full", "max_steps": 6, "save_every": 2, "save_total_limit": None}
        cfg["output_dir"] = str(mnt / "runs")
        run = finetune(cfg, wait=True)
        ckdir = run.dir / "checkpoints"
        kept = sorted(p.name for p in ckdir.iterdir())
        assert run.status == "failed", (run.status, kept)
        msg = run.error
        assert len(msg.splitlines()) == 1 and "Traceback" not in msg and len(msg) < 400, msg
        assert "step-000004 could not be written" in msg and "No space left on device (ENOSPC)" in msg, msg
        assert "step-000002 is intact" in msg and "resume_from: last" in msg, msg
        assert kept == ["step-000002"], f"a partial directory is left: {kept}"
        assert verify_checkpoint(ckdir / "step-000002") is None
        st = read_json(run.dir / "status.json")
        assert (st["state"], st["error"]) == ("failed", msg), st
        assert not [p.name for p in run.dir.iterdir() if p.name.endswith(".tmp")], "a half-written status file"

        # loadable: the run copied off the full disk resumes from step-2 and trains to the end
        shutil.copytree(run.dir, tmp_path / "runs" / "full")
        resumed = finetune({**cfg, "output_dir": str(tmp_path / "runs"), "resume_from": "last"}, wait=True)
        assert (resumed.status, resumed._started.start_step, resumed.step) == ("finished", 2, 6), resumed.error
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
