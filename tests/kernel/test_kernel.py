"""A real IPython kernel driven through jupyter_client, as a notebook frontend drives it, on the current stack
and on the Colab-pinned one (the `kernel` fixture in conftest.py runs each test on both)."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.kernel


def test_background_run_stopped_from_another_cell(kernel, tmp_path, tiny_setup):
    r = kernel.execute(tiny_setup())
    assert r["reply"]["status"] == "ok", kernel.text_of(r["outputs"])
    t0 = time.monotonic()
    r = kernel.execute("%%finetune bg\nmodel: {{model_dir}}\ndata: {{df}}\nmax_steps: 1000000\nlog_every: 2\n")
    assert r["reply"]["status"] == "ok", kernel.text_of(r["outputs"])
    assert time.monotonic() - t0 < 60, "the cell returns while training goes on"
    handles = [m for m in r.displays if m["content"].get("transient", {}).get("display_id")]
    assert handles, "a display that is updated in place is shown"
    display_id = handles[-1]["content"]["transient"]["display_id"]
    r = kernel.execute("import time\nwhile bg.step < 3: time.sleep(0.05)\nprint(bg.status)")
    assert "training" in r.text
    r = kernel.execute("%finetune stop bg")
    assert r["reply"]["status"] == "ok", r.text
    since = len(kernel.messages)  # the final render can come before the next cell's reply, or after it
    r = kernel.execute("bg.wait(timeout=60)\nprint(bg.status, bg.reason, len(bg.checkpoints), bg.step < 1000000)")
    assert "stopped user 1 True" in r.text
    kernel.wait_for(  # the final render after the run ended goes into the same display, in place
        lambda m: (
            m["msg_type"] == "update_display_data"
            and m["content"]["transient"]["display_id"] == display_id
            and "bg: stopped (user)" in m["content"]["data"]["text/plain"]
        ),
        timeout=30,
        since=since,
    )
    assert not [m for m in kernel.messages if m["msg_type"] == "stream" and "bg:" in m["content"]["text"]], (
        "the worker never prints"
    )
    assert any((tmp_path / "runs" / "bg" / "checkpoints").glob("step-*/model.safetensors"))


def test_bad_label_column_is_a_usage_error_in_that_cell_only(kernel, tmp_path, tiny_setup):
    r = kernel.execute(tiny_setup())
    assert r["reply"]["status"] == "ok"
    r = kernel.execute("%%finetune badcol\nmodel: {{model_dir}}\ndata:\n  train: {{df}}\n  label: stars\n")
    assert r["reply"]["status"] == "error"
    assert r["reply"]["ename"] == "UsageError"
    shown = kernel.text_of(r["outputs"])
    assert "column 'stars' is not in data.train" in shown
    assert "Traceback" not in shown and "File " not in shown, "a user mistake shows no traceback"
    r2 = kernel.execute("print('next cell')")
    assert kernel.text_of(r2["outputs"]).strip() == "next cell"
    assert not r["others"] and not r2["others"], "nothing is printed into other cells"


def test_interrupt_during_wait_stops_gracefully_with_checkpoint(kernel, tmp_path, tiny_setup):
    import json
    import threading

    r = kernel.execute(tiny_setup())
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
    r = kernel.execute("%%finetune w --wait\nmodel: {{model_dir}}\ndata: {{df}}\nmax_steps: 1000000\n")
    t.join()
    assert r["reply"]["status"] == "ok", kernel.text_of(r["outputs"])  # the first interrupt is a graceful stop
    r = kernel.execute("print(w.status, w.reason, len(w.checkpoints) > 0, 0 < w.step < 1000000)")
    assert kernel.text_of(r["outputs"]).strip() == "stopped user True True"
