"""`%%finetune NAME` and `%finetune COMMAND`. User mistakes become `UsageError`s (no traceback)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from traitlets import Float, Unicode
from traitlets.config import Configurable

from .. import api
from ..core import runs
from ..core.config import FinetuneConfig, config_reference_markdown
from ..core.controls import COMMANDS
from ..errors import FinetuneError
from .parsing import help_text, parse_cell_line, parse_line


@magics_class
class FinetuneMagic(Magics, Configurable):
    """Session preferences (`%config FinetuneMagic.output_dir = "runs"`); run parameters live in the cell."""

    output_dir = Unicode("runs", help="Default output_dir for runs whose cell does not set one.").tag(config=True)
    refresh_seconds = Float(0.5, help="Shortest interval between two progress display updates.").tag(config=True)
    renderer = Unicode(
        "auto",
        help="How live plots reach the frontend: auto (jupyter_bokeh widget once it renders, else a display "
        "handle), widget, display (re-render about once a second: Colab, VS Code), static (final plots only), "
        "or text (a one-line progress display, no panel).",
    ).tag(config=True)
    plot_interval = Float(1.0, help="Seconds between two re-renders of the plots in display mode.").tag(config=True)

    def __init__(self, shell=None, **kwargs):
        Configurable.__init__(self, config=shell.config if shell else None)
        Magics.__init__(self, shell=shell, **kwargs)

    @line_cell_magic
    def finetune(self, line: str, cell: str | None = None):
        """Fine-tune a model: `%%finetune NAME` + YAML config lines; `%finetune --help` for the commands."""
        try:
            return self._cell(line, cell) if cell is not None else self._line(line)
        except FinetuneError as e:
            raise UsageError(str(e)) from None

    # ---------------------------------------------------------------- cell
    def _cell(self, line: str, cell: str):
        args = parse_cell_line(line)
        if args.help:
            print(help_text())
            return None
        cfg = FinetuneConfig.from_cell(cell, self.shell.user_ns, first_line=2)
        changes = {}
        if args.name:
            changes["name"] = args.name
        elif cfg.name is None:
            changes["name"] = "finetune"
        if "output_dir" not in cfg.model_fields_set:
            changes["output_dir"] = self.output_dir
        if args.resume:
            changes["resume_from"] = "last"
        cfg = cfg.replace(**changes)
        if args.dry_run:
            print(api.finetune(cfg, dry_run=True))
            return None
        if args.lr_find or args.sweep:
            from .experiments import cell_lr_find, cell_sweep

            return cell_lr_find(self.shell, cfg) if args.lr_find else cell_sweep(self, cfg, args)
        if args.wait and args.paused:
            raise FinetuneError("%%finetune: --paused waits for the Start button, which --wait cannot deliver")
        self._renderer_choice()  # a bad renderer is an error before the run exists
        view = _Relay()
        run = api.finetune(cfg, callbacks=[view], overwrite=args.overwrite, start=False)
        self.shell.user_ns[cfg.name] = run
        view.target = self._view(run, interactive=not args.wait)
        view.flush()
        if not args.paused:
            run.start()
        if args.wait:
            run.wait(pump=view.target.pump)
            view.target.pump(final=True)
            if run.status == "failed":
                raise UsageError(f"run '{run.name}' failed: {run.error}")
        else:
            view.target.follow()
        return None

    def _view(self, run, *, interactive: bool, state=None):
        """The run's panel (or the one-line progress display with `renderer = text` / without the UI extras)."""
        renderer = self._renderer_choice()
        if renderer == "text":
            from ..ui.progress import ProgressView

            view = ProgressView(run.name, self.refresh_seconds)
            view.run = run
            view.show()
            return _ProgressAdapter(view, run)
        from ..ui.panel import Panel

        panel = Panel(
            run,
            renderer=renderer,
            interactive=interactive,
            refresh_seconds=min(self.refresh_seconds, 0.25),
            plot_interval=self.plot_interval,
            state=state,
        )
        panel.display()
        return panel

    def _renderer_choice(self) -> str:
        """`%config FinetuneMagic.renderer`, checked; "text" when the `notebook` extra (ipywidgets, bokeh) is absent."""
        renderer = self.renderer.strip().lower()
        if renderer == "text":
            return renderer
        try:
            from ..ui.panel import Panel  # noqa: F401 - ipywidgets and bokeh are there
            from ..ui.transport import RENDERERS
        except ImportError:
            return "text"
        if renderer not in RENDERERS:
            raise FinetuneError(
                f"%config FinetuneMagic.renderer: {renderer!r} is not one of {', '.join(RENDERERS)} or text"
            )
        return renderer

    # ---------------------------------------------------------------- line
    def _line(self, line: str):
        cmd = parse_line(line)
        if cmd.command == "help":
            print(help_text())
            return None
        if cmd.command == "schema":
            print(config_reference_markdown())
            return None
        if cmd.command == "runs":
            return _runs_table()
        if cmd.command == "show":
            return self._show(cmd.name)
        if cmd.command in ("compare", "lr_find"):
            from .experiments import line_compare, line_lr_find

            return line_compare(cmd.args) if cmd.command == "compare" else line_lr_find(self.shell, cmd.name)
        if cmd.command == "stop" and (sw := _sweep_named(cmd.name)) is not None:
            sw.stop()  # the trial training now stops with a checkpoint; no further trial starts
            return None
        target = _resolve(cmd.name)
        if isinstance(target, Path):  # a run of another process: through its control file
            if cmd.command not in COMMANDS:
                raise FinetuneError(f"%finetune {cmd.command} works for runs of this kernel only")
            seq = runs.append_command(target, cmd.command, source="magic", **cmd.options)
            print(f"sent {cmd.command} to {target} (command {seq})")
            return None
        run = target
        if cmd.command == "stop":
            run.stop(save=cmd.options.get("save", True), _source="magic")
        elif cmd.command == "abort":
            run.abort()
        elif cmd.command == "pause":
            run.pause(_source="magic")
        elif cmd.command == "resume":
            run.resume(_source="magic")
        elif cmd.command == "set":
            run.set(_source="magic", **cmd.options)
        elif cmd.command == "freeze":
            run.freeze(cmd.options["spec"], _source="magic")
        elif cmd.command == "checkpoint":
            run.checkpoint(_source="magic")
        elif cmd.command == "wait":
            run.wait()
        return None

    def _show(self, name: str):
        """Re-attach a panel: replay the run's metrics.jsonl, then follow the live run of this kernel."""
        from ..ui.state import PanelState

        target = _resolve(name)
        if isinstance(target, Path):
            raise FinetuneError(
                f"%finetune show: run '{name}' belongs to another process ({target}); "
                "its panel lives there. Use `%finetune runs` to see its state here."
            )
        run = target
        relay = _Relay()
        run.subscribe(relay)  # first, so no event falls between the replay and the subscription
        state = PanelState.from_events(run.run_dir.read_events(), run.name, run.run_dir.status())
        if run.done:
            state.state, state.reason, state.error = run.status, run.reason, run.error
        relay.target = self._view(run, interactive=True, state=state)
        relay.flush()
        relay.target.follow()
        return None


class _Relay:
    """A subscriber that exists before the panel does: holds events until the panel is attached."""

    def __init__(self):
        self.target = None
        self._held: list = []
        self._lock = threading.Lock()

    def on_event(self, e) -> None:
        with self._lock:
            if self.target is None or self._held:
                self._held.append(e)
                return
        self.target.on_event(e)

    def flush(self) -> None:
        with self._lock:
            held, self._held = self._held, []
        for e in held:
            self.target.on_event(e)


class _ProgressAdapter:
    """The one-line ProgressView behind the panel's pump/follow interface."""

    def __init__(self, view, run):
        self.view, self.run = view, run

    def on_event(self, e) -> None:
        self.view.on_event(e)

    def pump(self, final: bool = False) -> None:
        self.view.pump(force=final)

    def follow(self):
        return self.view.follow(self.run)


def _sweep_named(name: str):
    from ..sweeps import get_sweep

    return get_sweep(name)


def _resolve(name: str):
    """A run of this kernel by name, else a run directory (a live run of another process)."""
    try:
        return api.get_run(name)
    except FinetuneError as e:
        p = Path(name).expanduser()
        if (p / "status.json").is_file():
            return p
        matches = [r for r in runs.list_runs() if r.get("name") == name and r.get("alive")]
        if len(matches) == 1:
            return Path(matches[0]["run_dir"])
        raise e


def _runs_table():
    """`%finetune runs`: name, task, model, status, key hyperparameters, best metric, duration, steps."""
    from ..compare import runs_table

    table = runs_table()
    if table.empty:
        print("no runs yet")
        return None
    return table


# ---------------------------------------------------------------- SIGTERM
SIGTERM_GRACE_S = 60.0  # at most this long for the live runs' checkpoints before the kernel goes on to exit
_previous_sigterm = None  # the handler ours replaced (chained after the runs have stopped)


def install_sigterm_handler() -> bool:
    """SIGTERM (what a container or a Colab runtime sends before it goes) asks every live run of this kernel to stop
    with a checkpoint, waits for them, then hands the signal on to the handler that was there before: by default
    the kernel then ends as it would have. Signal handlers only exist on the main thread, which the extension's
    loading runs on; the core only exposes the stop request. Installed once, however often the extension loads."""
    global _previous_sigterm
    if threading.current_thread() is not threading.main_thread():
        return False
    current = signal.getsignal(signal.SIGTERM)
    if current is not _on_sigterm:
        _previous_sigterm = current
        signal.signal(signal.SIGTERM, _on_sigterm)
    return True


def uninstall_sigterm_handler() -> None:
    """Put back the handler `install_sigterm_handler` replaced (`%unload_ext nb_finetune`)."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is _on_sigterm:
        signal.signal(signal.SIGTERM, _previous_sigterm if _previous_sigterm is not None else signal.SIG_DFL)


def _on_sigterm(signum, frame) -> None:
    stop_live_runs("SIGTERM", SIGTERM_GRACE_S)
    previous = _previous_sigterm
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:  # the default (or a handler set outside Python): end as the signal would
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def stop_live_runs(reason: str, grace_s: float) -> list[str]:
    """Ask every live run of this process to stop after a checkpoint (status.json records `reason`) and wait up to
    `grace_s` seconds in all for them. Returns the names of the runs asked."""
    live = api.active_runs()
    for run in live:
        # fd 2, not sys.stderr: a signal handler must not take the kernel's output-stream locks
        os.write(2, f"nb_finetune: {reason}: stopping run '{run.name}' after a checkpoint\n".encode())
        run.stop(save=True, reason=reason)
    deadline = time.monotonic() + grace_s
    for run in live:
        try:
            run.wait(timeout=max(0.0, deadline - time.monotonic()))
        except (FinetuneError, TimeoutError):  # never started (--paused), or its checkpoint takes too long
            pass
    return [run.name for run in live]
