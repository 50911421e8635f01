"""What the Colab stack (IPython 7.34, ipykernel 6.17.1, ipywidgets 7.7.1, bokeh 3.8.2) must do like the current
one: run the pinned versions, deliver widget comm messages, update a display handle from a thread, and show
user mistakes in `%finetune` lines as a UsageError without a traceback. Each test runs on both stacks."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.kernel

VERSIONS = """
import json, importlib.util, IPython, ipykernel, ipywidgets, bokeh
print(json.dumps({"ipython": IPython.__version__, "ipykernel": ipykernel.__version__,
    "ipywidgets": ipywidgets.__version__, "bokeh": bokeh.__version__,
    "jupyter_bokeh": importlib.util.find_spec("jupyter_bokeh") is not None}))
"""


def test_kernel_runs_its_stack(kernel):
    r = kernel.execute(VERSIONS)
    assert r.reply["status"] == "ok", r.text
    v = json.loads(r.text)
    if kernel.stack == "colab":
        assert v == {
            "ipython": "7.34.0",
            "ipykernel": "6.17.1",
            "ipywidgets": "7.7.1",
            "bokeh": "3.8.2",
            "jupyter_bokeh": False,
        }
    else:
        assert int(v["ipywidgets"].split(".")[0]) >= 8 and int(v["ipython"].split(".")[0]) >= 8, v


def test_widget_comm_helpers_reach_the_widgets(kernel):
    r = kernel.execute(
        "import ipywidgets as W\n"
        "n = W.IntSlider(value=1, max=10, description='blocks'); stop = W.Button(description='Stop')\n"
        "clicks = []\n"
        "stop.on_click(lambda b: clicks.append(b.description))\n"
        "display(W.VBox([n, stop]))\n"
    )
    assert r.reply["status"] == "ok", r.text
    assert any(m["msg_type"] == "comm_open" for m in r.comms)
    (slider,) = kernel.find_widgets("IntSliderModel", description="blocks")
    (button,) = kernel.find_widgets("ButtonModel", description="Stop")
    assert kernel.widgets[slider]["value"] == 1
    kernel.send_widget_update(slider, {"value": 7})
    kernel.click_button(button)
    r = kernel.execute("print(n.value, clicks)")
    assert r.text.strip() == "7 ['Stop']"
    r = kernel.execute("n.value = 4")  # a kernel-side change reaches the frontend as an update
    assert r.reply["status"] == "ok"
    assert kernel.widgets[slider]["value"] == 4


def test_display_handle_updated_from_a_thread_after_the_cell_returned(kernel):
    since = len(kernel.messages)  # a slow kernel can send all three ticks before the cell's reply
    r = kernel.execute(
        "import threading, time\n"
        "from IPython.display import display\n"
        "h = display({'text/plain': 'tick 0'}, raw=True, display_id=True)\n"
        "def pump():\n"
        "    for i in range(1, 4):\n"
        "        time.sleep(0.2)\n"
        "        h.update({'text/plain': f'tick {i}'}, raw=True)\n"
        "threading.Thread(target=pump, daemon=True).start()\n"
    )
    assert r.reply["status"] == "ok", r.text
    (display_id,) = r.display_ids
    assert display_id
    kernel.wait_for(
        lambda m: m["msg_type"] == "update_display_data" and m["content"]["data"]["text/plain"] == "tick 3",
        timeout=30,
        since=since,
    )
    assert [m["content"]["data"]["text/plain"] for m in kernel.updates(display_id)] == ["tick 1", "tick 2", "tick 3"]


LINE_MISTAKES = [
    ("%finetune frobnicate x", "frobnicate"),
    ("%finetune stop", "name the run"),
    ("%finetune stop nosuchrun", "nosuchrun"),
    ("%finetune set nosuchrun lr", "key=value"),
]


def test_line_mistakes_are_usage_errors_without_traceback(kernel):
    r = kernel.execute("%load_ext nb_finetune")
    assert r.reply["status"] == "ok", r.text
    for line, message in LINE_MISTAKES:
        r = kernel.execute(line)
        assert r.reply["status"] == "error", (line, r.text)
        assert r.reply["ename"] == "UsageError", (line, r.text)
        assert message in r.text, (line, r.text)
        assert "Traceback" not in r.text and "File " not in r.text, (line, r.text)


def test_tab_completion_in_a_finetune_cell(kernel):
    """The kernel answers complete_request with the schema's keys and values (a v1 matcher on IPython 7.34)."""
    r = kernel.execute("%load_ext nb_finetune")
    assert r.reply["status"] == "ok", r.text
    code = "%%finetune demo\nmodel: x\nmax_st"
    reply = kernel.complete(code)
    assert reply["status"] == "ok"
    assert "max_steps: " in reply["matches"], reply["matches"]
    assert code[reply["cursor_start"] : reply["cursor_end"]] == "max_st"
    reply = kernel.complete("%%finetune demo\nprecision: b")
    assert [m for m in reply["matches"] if m.strip() == "bf16"], reply["matches"]
    kernel.execute("import collections")  # Python completion still works (Colab's IPython has no jedi)
    reply = kernel.complete("collections.Ordered")
    assert "collections.OrderedDict" in reply["matches"] or "OrderedDict" in reply["matches"], reply["matches"]


def test_help_lists_the_commands(kernel):
    r = kernel.execute("%load_ext nb_finetune\n%finetune --help")
    assert r.reply["status"] == "ok", r.text
    assert "stop NAME" in r.text and "--wait" in r.text


def test_text_progress_line_is_updated_in_place_from_its_pump_thread(kernel, tmp_path, tiny_setup):
    """`renderer = "text"` (ui/progress.py): one display, re-rendered by a daemon thread after the cell returned."""
    extra = '%config FinetuneMagic.renderer = "text"\n%config FinetuneMagic.refresh_seconds = 0.1\n'
    r = kernel.execute(tiny_setup(n=96, seed=2, extra=extra))
    assert r.reply["status"] == "ok", r.text
    r = kernel.execute("%%finetune line\nmodel: {{model_dir}}\ndata: {{df}}\nmax_steps: 1000000\nlog_every: 2\n")
    assert r.reply["status"] == "ok", r.text
    assert not [m for m in r.comms if m["msg_type"] == "comm_open"], "the text renderer opens no widget"
    (display_id,) = r.display_ids
    assert display_id and r.displays[0]["content"]["data"]["text/plain"].startswith("line: ")
    kernel.wait_for(  # a render with a step count, sent by the pump thread while no cell runs
        lambda m: (
            m["msg_type"] == "update_display_data"
            and m["content"]["transient"]["display_id"] == display_id
            and "line: training | step " in m["content"]["data"]["text/plain"]
        ),
        timeout=60,
    )
    r = kernel.execute("%finetune stop line\nline.wait(timeout=60)\nprint(line.status, line.reason)")
    printed = "".join(m["content"]["text"] for m in r.outputs if m["msg_type"] == "stream")
    assert printed.strip() == "stopped user", r.text

    def final_render(m):
        return (
            m["msg_type"] == "update_display_data"
            and m["content"]["transient"]["display_id"] == display_id
            and m["content"]["data"]["text/plain"].startswith("line: stopped (user)")
        )

    # the pump's last render carries the parent of the cell that ran last: it may arrive inside the stop cell
    if not any(final_render(m) for m in r.outputs + r.others):
        kernel.wait_for(final_render, timeout=30)
