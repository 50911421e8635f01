"""A real IPython kernel driven through jupyter_client, as a notebook frontend drives it, on two stacks.

Fixture `kernel`, parametrized with ids `current` (this venv: ipykernel 7, IPython 9, ipywidgets 8) and
`colab` (`.venv-colab`, built by `make venv-colab` from tests/compat/colab-pins.txt: ipykernel 6.17.1,
IPython 7.34, ipywidgets 7.7.1, bokeh 3.8.2, no jupyter_bokeh). Every test that takes `kernel` runs on both.
The kernel is launched from a kernel spec written into a temp dir (nothing is registered globally), with
cwd = the test's tmp_path, PYTHONPATH = the repository root and NB_FINETUNE_INDEX_DIR under tmp_path.
It yields a `Kernel`:

    k.stack                      "current" or "colab";  k.python: the kernel's interpreter
    k.km, k.kc                   the jupyter_client KernelManager and BlockingKernelClient
    k.interrupt()                what the notebook's stop button does (SIGINT to the kernel)
    k.complete(code, cursor_pos=None)  a complete_request (TAB) -> the complete_reply content

    r = k.execute(code, timeout=180)
        Runs one cell and reads iopub until that request's `idle`. Returns a Cell:
        r.reply      the execute_reply content ({"status": "ok" | "error", "ename", ...})
        r.outputs    output messages (stream, display_data, update_display_data, execute_result,
                     error, clear_output) whose parent is this request
        r.others     output messages of other parents seen meanwhile (e.g. a background thread's
                     display updates, which carry the parent of whichever cell ran last)
        r.comms      comm_open / comm_msg / comm_close messages seen meanwhile (any parent)
        r.messages   every iopub message seen meanwhile, in order
        r.text       the text of r.outputs (stream text, text/plain, tracebacks), joined
        r.displays   the display_data messages of r.outputs; r.display_ids: their transient display_ids
        (r["reply"], r["outputs"], ... work too)
    k.messages                   every iopub message seen since the kernel started, in order
    k.updates(display_id)        every update_display_data for that display_id seen so far, in order
    k.drain(seconds)             read iopub for that long without running anything (returns the messages)
    k.wait_for(pred, timeout)    read iopub until pred(msg) is true; returns that msg (AssertionError on timeout)
    k.text_of(msgs)              the text of any list of messages (a staticmethod of Kernel)

  Widgets (ipywidgets' comm protocol 2.x, the same in ipywidgets 7.7 and 8; target "jupyter.widget"):
    k.widgets                    {comm_id: state}: every widget model the kernel opened, its state kept
                                 up to date from later `update` / `echo_update` comm messages
    k.find_widgets(model_name=None, **state)  comm_ids whose state matches, in creation order, e.g.
                                 k.find_widgets("ButtonModel", description="Stop")
    k.send_widget_update(comm_id, {"value": 3})   what a frontend sends when the user moves a slider:
                                 comm_msg {"method": "update", "state": {...}, "buffer_paths": []}
    k.click_button(comm_id)      a Button click: comm_msg {"method": "custom", "content": {"event": "click"}}
    k.comm_send(comm_id, data)   any other comm_msg (returns the shell msg_id)
  Comm messages go on the shell channel: a kernel handles them only between cells (DESIGN.md, "Execution
  modes"), so send them while a background run trains and no cell is executing, then `drain` / `wait_for`
  / `execute` to see the effects. They produce no execute_reply.

Example:
    def test_stop_button(kernel):
        r = kernel.execute("%load_ext nb_finetune")
        assert r.reply["status"] == "ok", r.text
        ...
        (stop,) = kernel.find_widgets("ButtonModel", description="Stop")
        kernel.click_button(stop)
        kernel.wait_for(lambda m: "stopped" in kernel.text_of([m]), timeout=60)

Fixture `kernel_python` alone gives (stack id, interpreter path) for tests that run something else on both
stacks. A missing .venv-colab skips the `colab` cases locally and fails them under CI=true.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COLAB_PYTHON = ROOT / ".venv-colab" / "bin" / "python"
STACKS = {"current": Path(sys.executable), "colab": COLAB_PYTHON}
OUTPUT_TYPES = ("stream", "display_data", "update_display_data", "execute_result", "error", "clear_output")
COMM_TYPES = ("comm_open", "comm_msg", "comm_close")


def _text(msg: dict) -> str:
    c = msg["content"]
    if msg["msg_type"] == "stream":
        return c.get("text", "")
    if msg["msg_type"] == "error":
        return "\n".join(c.get("traceback", [])) or f"{c.get('ename')}: {c.get('evalue')}"
    return c.get("data", {}).get("text/plain", "")


@dataclass
class Cell:
    reply: dict
    outputs: list = field(default_factory=list)
    others: list = field(default_factory=list)
    comms: list = field(default_factory=list)
    messages: list = field(default_factory=list)

    @property
    def text(self) -> str:
        return Kernel.text_of(self.outputs)

    @property
    def displays(self) -> list:
        return [m for m in self.outputs if m["msg_type"] == "display_data"]

    @property
    def display_ids(self) -> list:
        return [m["content"].get("transient", {}).get("display_id") for m in self.displays]

    def __getitem__(self, key):  # r["reply"], r["outputs"], ... as in the first kernel tests
        return getattr(self, key)


class Kernel:
    def __init__(self, stack: str, python: Path, km, kc):
        self.stack, self.python, self.km, self.kc = stack, str(python), km, kc
        self.messages: list[dict] = []
        self.widgets: dict[str, dict] = {}

    # ---------------------------------------------------------------- iopub
    @staticmethod
    def text_of(msgs) -> str:
        return "\n".join(_text(m) for m in msgs)

    def _next(self, timeout: float) -> dict | None:
        try:
            msg = self.kc.get_iopub_msg(timeout=max(0.01, timeout))
        except queue.Empty:
            return None
        self.messages.append(msg)
        self._track_widget(msg)
        return msg

    def _track_widget(self, msg: dict) -> None:
        c = msg["content"]
        if msg["msg_type"] == "comm_open" and c.get("target_name") == "jupyter.widget":
            self.widgets[c["comm_id"]] = dict(c.get("data", {}).get("state", {}))
        elif msg["msg_type"] == "comm_msg" and c.get("comm_id") in self.widgets:
            data = c.get("data", {})
            if data.get("method") in ("update", "echo_update"):
                self.widgets[c["comm_id"]].update(data.get("state", {}))

    def drain(self, seconds: float) -> list[dict]:
        end, got = time.monotonic() + seconds, []
        while (left := end - time.monotonic()) > 0:
            msg = self._next(left)
            if msg is not None:
                got.append(msg)
        return got

    def wait_for(self, pred, timeout: float = 60, since: int | None = None) -> dict:
        """The next iopub message `pred` accepts; with `since` (an index into `messages`), the ones already received
        from there count too (an output that can come before or after the reply of the cell that caused it)."""
        if since is not None:
            for msg in self.messages[since:]:
                if pred(msg):
                    return msg
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            msg = self._next(min(left, 0.5))
            if msg is not None and pred(msg):
                return msg
        raise AssertionError(f"no matching iopub message within {timeout} s ({self.stack} kernel)")

    def updates(self, display_id: str) -> list[dict]:
        return [
            m
            for m in self.messages
            if m["msg_type"] == "update_display_data"
            and m["content"].get("transient", {}).get("display_id") == display_id
        ]

    # ---------------------------------------------------------------- shell
    def execute(self, code: str, timeout: float = 180) -> Cell:
        # one cell at a time, as a user runs them: ipykernel 6.17 would otherwise abort a request that arrives
        # right after an error reply (its stop_on_error window), which no person typing ever hits
        msg_id = self.kc.execute(code, stop_on_error=False)
        reply = self.kc.get_shell_msg(timeout=timeout)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.kc.get_shell_msg(timeout=timeout)
        cell = Cell(reply=reply["content"])
        deadline = time.monotonic() + timeout
        while True:
            msg = self._next(deadline - time.monotonic())
            if msg is None:
                raise AssertionError(f"no idle status from the {self.stack} kernel within {timeout} s")
            cell.messages.append(msg)
            mine = msg["parent_header"].get("msg_id") == msg_id
            kind = msg["msg_type"]
            if mine and kind == "status" and msg["content"]["execution_state"] == "idle":
                return cell
            if kind in OUTPUT_TYPES:
                (cell.outputs if mine else cell.others).append(msg)
            elif kind in COMM_TYPES:
                cell.comms.append(msg)

    def interrupt(self) -> None:
        self.km.interrupt_kernel()

    def complete(self, code: str, cursor_pos: int | None = None, timeout: float = 30) -> dict:
        msg_id = self.kc.complete(code, len(code) if cursor_pos is None else cursor_pos)
        reply = self.kc.get_shell_msg(timeout=timeout)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.kc.get_shell_msg(timeout=timeout)
        return reply["content"]

    # ---------------------------------------------------------------- widgets (comm protocol 2.x)
    def find_widgets(self, model_name: str | None = None, **state) -> list[str]:
        return [
            cid
            for cid, s in self.widgets.items()
            if (model_name is None or s.get("_model_name") == model_name)
            and all(s.get(k) == v for k, v in state.items())
        ]

    def comm_send(self, comm_id: str, data: dict) -> str:
        msg = self.kc.session.msg("comm_msg", {"comm_id": comm_id, "data": data})
        self.kc.shell_channel.send(msg)
        return msg["header"]["msg_id"]

    def send_widget_update(self, comm_id: str, state: dict) -> str:
        return self.comm_send(comm_id, {"method": "update", "state": state, "buffer_paths": []})

    def click_button(self, comm_id: str) -> str:
        return self.comm_send(comm_id, {"method": "custom", "content": {"event": "click"}})


def _kernel_spec_dir(tmp: Path, stack: str, python: Path) -> tuple[str, Path]:
    name = f"nbft-{stack}"
    d = tmp / "kernels" / name
    d.mkdir(parents=True)
    spec = {
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"nb_finetune tests ({stack})",
        "language": "python",
    }
    (d / "kernel.json").write_text(json.dumps(spec))
    return name, tmp / "kernels"


@pytest.fixture(params=list(STACKS))
def kernel_python(request) -> tuple[str, Path]:
    """(stack id, interpreter) for the kernel; the colab stack needs `make venv-colab` (CI builds it)."""
    stack, python = request.param, STACKS[request.param]
    if not python.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{python} is missing: `make test` builds it with `make venv-colab`")
        pytest.skip(f"{python} is missing: run `make venv-colab`")
    return stack, python


@pytest.fixture()
def kernel(kernel_python, tmp_path):
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    stack, python = kernel_python
    name, kernels_dir = _kernel_spec_dir(tmp_path / "spec", stack, python)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "NB_FINETUNE_INDEX_DIR": str(tmp_path / "index"),
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    }
    env.pop("VIRTUAL_ENV", None)
    km = KernelManager(kernel_name=name, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels_dir)]))
    km.start_kernel(env=env, cwd=str(tmp_path))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=120)
        yield Kernel(stack, python, km, kc)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


_TINY_SETUP = """
import sys; sys.path.insert(0, {tests!r})
from conftest import build_tiny_model, make_texts
import pandas as pd, tempfile
model_dir = build_tiny_model(tempfile.mkdtemp())
texts, labels = make_texts({n}, seed={seed})
df = pd.DataFrame({{"text": texts, "label": labels}})
%load_ext nb_finetune
%config FinetuneMagic.output_dir = {out!r}
"""


@pytest.fixture
def tiny_setup(tmp_path):
    """`tiny_setup(n=192, seed=1, extra="")` -> the code of a setup cell: a tiny BERT in `model_dir`, a data frame
    `df` of n sentiment-like texts, the magics loaded, runs written under tmp_path/runs; `extra` lines appended."""

    def make(n: int = 192, seed: int = 1, extra: str = "") -> str:
        tests = str(Path(__file__).resolve().parents[1])
        return _TINY_SETUP.format(tests=tests, n=n, seed=seed, out=str(tmp_path / "runs")) + extra

    return make
