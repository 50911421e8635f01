"""The run's state machine and the command queue (core/controls.py), and that every view of a run uses them."""

from __future__ import annotations

import threading

import pytest

from nb_finetune.core import controls
from nb_finetune.core.controls import COMMANDS, FINAL_STATES, Controls, next_state
from nb_finetune.core.events import ControlApplied, Logged, RunFinished, RunStarted


def applied(command: str, ok: bool = True) -> ControlApplied:
    return ControlApplied(step=5, command=command, args={}, seq=1, ok=ok)


def started() -> RunStarted:
    return RunStarted("r", "/r", 10, 5, 8, 2, "cpu", "fp32", 10, 10, [])


@pytest.mark.parametrize(
    ("state", "event", "expected"),
    [
        ("queued", started(), "training"),
        ("starting", started(), "training"),
        ("stopped", started(), "training"),  # a resumed run in its old directory
        ("training", applied("pause"), "paused"),
        ("training", applied("pause", ok=False), "training"),
        ("paused", applied("resume"), "training"),
        ("training", applied("resume"), "training"),
        ("stopping", applied("resume"), "stopping"),  # a stop is never undone
        ("stopping", applied("pause"), "stopping"),
        ("training", applied("stop"), "stopping"),
        ("paused", applied("abort"), "stopping"),
        ("training", applied("stop", ok=False), "stopping"),
        ("training", applied("set"), "training"),
        ("paused", applied("freeze"), "paused"),
        ("finished", applied("stop"), "finished"),  # a late acknowledgement changes nothing
        ("stopping", RunFinished(state="stopped", reason="user", step=3), "stopped"),
        ("training", RunFinished(state="failed", reason="error", step=3, error="x"), "failed"),
        ("training", Logged(3, 0.1, 0.5, 1e-4, None, 1.0, 1.0), "training"),
        (None, applied("set"), "queued"),
    ],
)
def test_next_state(state, event, expected):
    assert next_state(state, event) == expected


def test_state_names():
    assert set(controls.ACTIVE_STATES) | set(FINAL_STATES) == set(controls.STATES)
    assert not set(controls.ACTIVE_STATES) & set(FINAL_STATES)
    assert "set" not in controls.SIMPLE_COMMANDS and set(controls.SIMPLE_COMMANDS) < set(COMMANDS)


def test_controls_queue_and_flags():
    c = Controls()
    with pytest.raises(ValueError, match="unknown command 'jump'; one of stop, abort"):
        c.send("jump")
    c.pause()
    assert c.paused and not c.stop_requested
    woke = threading.Event()
    t = threading.Thread(target=lambda: (c.wait_if_paused(), woke.set()))
    t.start()
    assert not woke.wait(0.2)  # the loop waits while paused
    c.set(lr=1e-5)
    c.stop(save=False)  # a stop releases a paused loop
    t.join(5)
    assert woke.is_set() and c.stop_requested and not c.stop_save and not c.abort_event.is_set()
    cmds = c.drain()
    assert [(x.kind, x.seq) for x in cmds] == [("pause", 1), ("set", 2), ("stop", 3)] and cmds[1].args == {"lr": 1e-5}
    assert c.drain() == []


def test_events_module_re_exports_the_controls():
    from nb_finetune.core import events

    assert events.Controls is Controls and events.Command is controls.Command


def test_every_command_name_comes_from_the_one_tuple():
    """The CLI, the magic and the server accept the commands of `COMMANDS` (the server: all but freeze)."""
    from nb_finetune.cli import main
    from nb_finetune.magics.parsing import LINE_COMMANDS
    from nb_finetune.server.runs_view import COMMANDS as API_COMMANDS

    assert set(COMMANDS) <= {c.split()[0] for c in LINE_COMMANDS}
    assert set(API_COMMANDS) == set(COMMANDS) - {"freeze"}
    with pytest.raises(SystemExit):
        main(["freeze", "x"])  # not a CLI subcommand: a spec needs Python (`%finetune freeze`)
