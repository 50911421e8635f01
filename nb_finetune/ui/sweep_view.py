"""The live sweep view: one curve per trial on a shared chart (the sweep's metric against the step), a table of the
trials (params, value, state: running / pruned / done / failed), and at the end the parameter importances and the
`%%finetune` cell of the best trial. Re-rendered through a display handle about once a second."""

from __future__ import annotations

import html
import threading
import time

from bokeh.layouts import column
from bokeh.models import ColumnDataSource, HoverTool
from bokeh.plotting import figure

from .experiments import COLOURS, bundle, lines_svg

__all__ = ["SweepView", "sweep_figure", "trials_html"]

_STATE_COLOURS = {"done": "#2e7d32", "pruned": "#ef6c00", "failed": "#c62828", "running": "#1565c0"}


def sweep_figure(rows, metric: str, importances: dict[str, float] | None = None, *, width: int = 640):
    """One line per trial (sources named `trial:N`), pruned trials dashed; importances as bars when given."""
    f = figure(
        title=f"Sweep: {metric} per trial",
        width=width,
        height=300,
        x_axis_label="step",
        y_axis_label=metric,
        tools="pan,wheel_zoom,box_zoom,reset,save",
    )
    f.toolbar.logo = None
    f.outline_line_color = None
    for r in rows:
        steps = [s for s, _ in r["curve"]]
        values = [v for _, v in r["curve"]]
        src = ColumnDataSource(
            {"step": steps, "value": values, "trial": [r["trial"]] * len(steps)}, name=f"trial:{r['trial']}"
        )
        colour = COLOURS[r["trial"] % len(COLOURS)]
        dash = "dashed" if r["state"] == "pruned" else "solid"
        f.line(
            "step", "value", source=src, color=colour, line_width=2, line_dash=dash, legend_label=f"trial {r['trial']}"
        )
        f.scatter("step", "value", source=src, color=colour, size=4)
    f.add_tools(HoverTool(tooltips=[("trial", "@trial"), ("step", "@step"), (metric, "@value{0.0000}")]))
    if rows:
        f.legend.location = "top_right"
        f.legend.click_policy = "hide"
    if not importances:
        return f
    names = list(importances)
    bars = figure(
        title="Parameter importance (fANOVA)",
        y_range=names[::-1],
        width=width,
        height=60 + 30 * len(names),
        tools="save",
        x_axis_label="importance",
    )
    bars.toolbar.logo = None
    bars.hbar(
        y="name",
        right="value",
        height=0.6,
        color=COLOURS[0],
        source=ColumnDataSource({"name": names, "value": [importances[n] for n in names]}, name="importance"),
    )
    return column(f, bars)


def trials_html(rows, metric: str, best: dict | None) -> str:
    keys = sorted({k for r in rows for k in r["params"]})
    head = "".join(f"<th>{html.escape(k)}</th>" for k in ["trial", *keys, metric, "state"])
    body = []
    for r in rows:
        mark = " style='font-weight:bold'" if best and r["trial"] == best["trial"] else ""
        cells = [str(r["trial"])] + [_fmt(r["params"].get(k)) for k in keys] + [_fmt(r["value"])]
        state = f"<td style='color:{_STATE_COLOURS.get(r['state'], '#555')}'>{html.escape(r['state'])}</td>"
        body.append(f"<tr{mark}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + state + "</tr>")
    return f"<table class='nb-finetune-trials'><tr>{head}</tr>{''.join(body)}</table>"


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class SweepView:
    """Subscribes to a `Sweep`; `display()` once, then `pump()` (or `follow()`, a thread) redraws it."""

    def __init__(self, sweep, interval: float = 1.0):
        self.sweep, self.interval = sweep, interval
        self._changed = threading.Event()
        self._last = 0.0
        self._handle = None
        self._final = False
        sweep.subscribe(lambda kind, payload: self._changed.set())

    def bundle(self) -> dict[str, str]:
        s = self.sweep
        rows = s.trials
        importances = self._importances() if s.done else None
        fig = sweep_figure(rows, s.metric, importances)
        svg = lines_svg(
            f"Sweep {s.name}: {s.metric}",
            [
                (
                    f"trial {r['trial']}",
                    [a for a, _ in r["curve"]],
                    [b for _, b in r["curve"]],
                    COLOURS[r["trial"] % len(COLOURS)],
                )
                for r in rows
            ],
        )
        out = bundle(fig, svg, repr(s))
        table = trials_html(rows, s.metric, s.best)
        extra = ""
        if s.done and s.best is not None:
            try:
                extra = (
                    "<p>Best trial as a cell (copy it into a new cell):</p><pre>" + html.escape(s.promote()) + "</pre>"
                )
            except Exception:  # noqa: BLE001 - objects not in the namespace: the table still shows the values
                extra = ""
        out["text/html"] = f"<div><b>{html.escape(repr(s))}</b></div>" + out["text/html"] + table + extra
        return out

    def _importances(self) -> dict[str, float] | None:
        try:
            import optuna

            return dict(optuna.importance.get_param_importances(self.sweep.study))
        except Exception:  # noqa: BLE001 - fewer than two finished trials, or a single distinct value
            return None

    def display(self, buttons: bool = True) -> None:
        from IPython.display import display

        if buttons:
            try:
                import ipywidgets as w

                stop = w.Button(description="Stop sweep", button_style="danger", icon="stop")
                trial = w.Button(description="Stop trial", icon="forward", tooltip="stop the trial training now")
                stop.on_click(lambda _: self.sweep.stop())
                trial.on_click(lambda _: self.sweep.stop_trial())
                display(w.HBox([stop, trial]))
            except ImportError:
                pass
        self._handle = display(self.bundle(), raw=True, display_id=True)
        self._last = time.monotonic()

    def pump(self, final: bool = False) -> None:
        now = time.monotonic()
        if self._handle is None or (not final and (not self._changed.is_set() or now - self._last < self.interval)):
            return
        self._changed.clear()
        self._last = now
        self._handle.update(self.bundle(), raw=True)

    def follow(self) -> None:
        """Redraw from a daemon thread until the sweep ends (the cell returns at once)."""

        def loop():
            while not self.sweep.done:
                time.sleep(self.interval)
                self.pump()
            self.pump(final=True)

        threading.Thread(target=loop, name="nb_finetune-sweep-view", daemon=True).start()
