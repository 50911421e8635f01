"""An IPython shell whose display publisher records every display and display update (no kernel needed)."""

from __future__ import annotations

import threading

import pytest


class Recorder:
    is_publishing = False  # IPython's error display asks

    def __init__(self):
        self.calls: list[dict] = []
        self._lock = threading.Lock()

    def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kw):
        with self._lock:
            self.calls.append({"data": data, "transient": transient or {}, "update": update})

    def clear_output(self, wait=False):
        pass

    @property
    def outputs(self) -> list[dict]:
        """What the cell shows now: one entry per display id, updated in place, in creation order."""
        shown: dict = {}
        for c in self.calls:
            did = c["transient"].get("display_id") or id(c)
            if c["update"]:
                if did in shown:
                    shown[did] = c["data"]
            else:
                shown[did] = c["data"]
        return list(shown.values())


@pytest.fixture
def displays():
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()  # the test suite's one shell (the magic tests use it too)
    old = shell.display_pub
    rec = Recorder()
    shell.display_pub = rec
    try:
        yield rec
    finally:
        shell.display_pub = old
