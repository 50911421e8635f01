"""A real IPython kernel driven through jupyter_client, as a notebook frontend drives it."""

from __future__ import annotations

import os
import queue
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def kernel(tmp_path):
    from jupyter_client.manager import KernelManager

    env = {**os.environ, "PYTHONPATH": str(ROOT), "NB_FINETUNE_INDEX_DIR": str(tmp_path / "index")}
    km = KernelManager(kernel_cmd=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"])
    km.start_kernel(env=env, cwd=str(tmp_path))
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=120)
    kc.km = km
    yield kc
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def execute(kc, code: str, timeout: float = 180) -> dict:
    """Run a cell; collect the iopub messages whose parent is this request, and every other output seen."""
    msg_id = kc.execute(code)
    outputs, others = [], []
    reply = kc.get_shell_msg(timeout=timeout)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kc.get_shell_msg(timeout=timeout)
    deadline = time.monotonic() + timeout
    while True:
        try:
            msg = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError("no idle status from the kernel") from None
        mine = msg["parent_header"].get("msg_id") == msg_id
        if mine and msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
        if msg["msg_type"] in ("stream", "display_data", "execute_result", "error", "update_display_data"):
            (outputs if mine else others).append(msg)
    return {"reply": reply["content"], "outputs": outputs, "others": others}


def text_of(msgs) -> str:
    parts = []
    for m in msgs:
        c = m["content"]
        parts.append(c.get("text") or c.get("data", {}).get("text/plain", "") or "\n".join(c.get("traceback", [])))
    return "\n".join(parts)


SETUP = """
import sys; sys.path.insert(0, {tests!r})
from conftest import build_tiny_model, make_texts
import pandas as pd, tempfile
model_dir = build_tiny_model(tempfile.mkdtemp())
texts, labels = make_texts(192, seed=1)
df = pd.DataFrame({{"text": texts, "label": labels}})
%load_ext nb_finetune
%config FinetuneMagic.output_dir = {out!r}
"""


def test_background_run_stopped_from_another_cell(kernel, tmp_path):
    r = execute(kernel, SETUP.format(tests=str(ROOT / "tests"), out=str(tmp_path / "runs")))
    assert r["reply"]["status"] == "ok", text_of(r["outputs"])
    t0 = time.monotonic()
    r = execute(kernel, "%%finetune bg\nmodel: {{model_dir}}\ndata: {{df}}\nmax_steps: 1000000\nlog_every: 2\n")
    assert r["reply"]["status"] == "ok", text_of(r["outputs"])
    assert time.monotonic() - t0 < 60, "the cell returns while training goes on"
    shown = [m for m in r["outputs"] if m["msg_type"] == "display_data"]
    assert shown, "a progress display is shown"
    display_id = shown[0]["content"]["transient"]["display_id"]
    seen = []
    seen += r["others"]
    r = execute(kernel, "import time\nwhile bg.step < 3: time.sleep(0.05)\nprint(bg.status)")
    assert "training" in text_of(r["outputs"])
    seen += r["outputs"] + r["others"]
    r = execute(kernel, "%finetune stop bg")
    assert r["reply"]["status"] == "ok", text_of(r["outputs"])
    seen += r["outputs"] + r["others"]
    r = execute(
        kernel,
        "bg.wait(timeout=60)\nimport time; time.sleep(1.0)\n"
        "print(bg.status, bg.reason, len(bg.checkpoints), bg.step < 1000000)",
    )
    assert "stopped user 1 True" in text_of(r["outputs"])
    seen += r["outputs"] + r["others"]
    updates = [
        m
        for m in seen
        if m["msg_type"] == "update_display_data" and m["content"]["transient"]["display_id"] == display_id
    ]
    assert updates, "the progress display is updated in place"
    assert "bg: stopped (user)" in updates[-1]["content"]["data"]["text/plain"]
    assert not [m for m in seen if m["msg_type"] == "stream" and "bg:" in m["content"]["text"]], (
        "the worker never prints"
    )
    assert any((tmp_path / "runs" / "bg" / "checkpoints").glob("step-*/model.safetensors"))


def test_bad_label_column_is_a_usage_error_in_that_cell_only(kernel, tmp_path):
    r = execute(kernel, SETUP.format(tests=str(ROOT / "tests"), out=str(tmp_path / "runs")))
    assert r["reply"]["status"] == "ok"
    r = execute(kernel, "%%finetune badcol\nmodel: {{model_dir}}\ndata:\n  train: {{df}}\n  label: stars\n")
    assert r["reply"]["status"] == "error"
    assert r["reply"]["ename"] == "UsageError"
    shown = text_of(r["outputs"])
    assert "column 'stars' is not in data.train" in shown
    assert "Traceback" not in shown and "File " not in shown, "a user mistake shows no traceback"
    r2 = execute(kernel, "print('next cell')")
    assert text_of(r2["outputs"]).strip() == "next cell"
    assert not r["others"] and not r2["others"], "nothing is printed into other cells"


def test_interrupt_during_wait_stops_gracefully_with_checkpoint(kernel, tmp_path):
    import json
    import threading

    r = execute(kernel, SETUP.format(tests=str(ROOT / "tests"), out=str(tmp_path / "runs")))
    assert r["reply"]["status"] == "ok"
    status = tmp_path / "runs" / "w" / "status.json"

    def interrupt_when_training():
        end = time.monotonic() + 120
        while time.monotonic() < end:
            if status.exists():
                try:
                    if json.loads(status.read_text()).get("state") == "training":
                        break
                except ValueError:
                    pass
            time.sleep(0.05)
        time.sleep(1.0)
        kernel.km.interrupt_kernel()

    t = threading.Thread(target=interrupt_when_training)
    t.start()
    r = execute(kernel, "%%finetune w --wait\nmodel: {{model_dir}}\ndata: {{df}}\nmax_steps: 1000000\n")
    t.join()
    assert r["reply"]["status"] == "ok", text_of(r["outputs"])  # the first interrupt is a graceful stop
    r = execute(kernel, "print(w.status, w.reason, len(w.checkpoints) > 0, 0 < w.step < 1000000)")
    assert text_of(r["outputs"]).strip() == "stopped user True True"
