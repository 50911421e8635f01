"""Execute a notebook headless in a real kernel (nbclient), echo what its cells print, fail on any error.

python scripts/run_demo.py notebooks/01_quickstart.ipynb     # writes notebooks/executed/01_quickstart.ipynb
"""

from __future__ import annotations

import gc
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def _text(output) -> str:
    if output.output_type == "stream":
        return output.text
    if output.output_type in ("execute_result", "display_data"):
        return output.get("data", {}).get("text/plain", "") + "\n"
    if output.output_type == "error":
        return "\n".join(output.traceback) + "\n"
    return ""


def main(path: str) -> int:
    src = Path(path)
    nb = nbformat.read(src, as_version=4)
    client = NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(src.parent)}})
    t0 = time.monotonic()
    failed = None
    try:
        client.execute()
    except CellExecutionError as e:
        failed = e
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        print(f"--- [{i}] {cell.source.splitlines()[0] if cell.source else ''}")
        for out in cell.get("outputs", []):
            sys.stdout.write(_text(out))
    out_dir = src.parent / "executed"
    out_dir.mkdir(exist_ok=True)
    nbformat.write(nb, out_dir / src.name)
    print(f"\nexecuted {src} in {time.monotonic() - t0:.0f} s -> {out_dir / src.name}")
    if failed is not None:
        print(f"FAILED: {str(failed).splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


def _exit(code: int) -> None:
    """Leave without the interpreter's shutdown pass: with the kernel gone, pyzmq's garbage-collector thread may be
    asked for a socket while modules are torn down and prints `RuntimeError: zmq gc socket requested during
    shutdown` after a notebook that succeeded. Everything is written and flushed by now."""
    gc.collect()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit(main(sys.argv[1] if len(sys.argv) > 1 else "notebooks/01_quickstart.ipynb"))
