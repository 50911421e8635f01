"""The run panel: header, layer map with freezing controls, live hyperparameters, buttons, status, plots.

Threads (DESIGN.md, "Execution modes"): widgets are created and displayed on the main thread; the training
thread only feeds `PanelState` (appends under a lock); one writer, the pump, applies new points to the Bokeh
sources and text to the widgets, a few times a second at most. Widget callbacks run on the main thread (the
kernel's shell handler) and only call the `Run`'s thread-safe steering methods.
"""

from __future__ import annotations

import atexit
import html
import math
import threading
import time
import uuid
import weakref
from functools import partial
from typing import Any

import ipywidgets as W

from ..core.config import FinetuneConfig, check_live_value, live_fields
from ..errors import FinetuneError
from .plots import FROZEN, LAYER_W, TRAINABLE, PlotSet, layer_bar
from .state import PanelState, fmt_count, fmt_duration, fmt_value, main_metrics, unreadable_text
from .summary import STATE_COLOURS, eval_table_html, extras_tables_html, metric_label, summary_html, summary_text
from .transport import FRAME, bokehjs_bundle, final_bundle, make_transport

__all__ = ["Panel", "IPYWIDGETS_8"]

IPYWIDGETS_8 = int(W.__version__.split(".")[0]) >= 8
PLOT_SECONDS = 1.0  # new points reach the plots at most this often (display handle: a whole re-render)
WIDGET_PLOT_SECONDS = 2.0  # ... and through jupyter_bokeh, whose view answers each change with several messages
TEXT_SECONDS = 0.5  # the header and status line at most this often
DEBOUNCE_S = 0.6  # a control's change is sent this long after the last value of a burst (a slider drag)
_STATE_COLOURS = STATE_COLOURS
_MUTED = "var(--jp-ui-font-color2, #666)"  # JupyterLab's theme colours where they exist, light fallbacks elsewhere
_ERROR = "var(--jp-error-color1, #d55e00)"
# live fields the freezing box owns, or that have no single-value widget
_NOT_IN_HPARAMS = {"freeze", "unfreeze_every", "unfreeze_until", "layer_lr_decay", "group_lr"}
_LABELS = {"max_grad_norm": "grad clip", "lr": "learning rate"}
_UNFREEZE_CHOICES = [("off", "off"), ("every epoch", "epoch"), ("every 50 steps", "50"), ("every 200 steps", "200")]


def _tip(widget, text: str):
    """Tooltip on ipywidgets 8 (`tooltip`) and 7 (`description_tooltip`)."""
    if IPYWIDGETS_8:
        widget.tooltip = text
    else:
        widget.description_tooltip = text
    return widget


def _field_help(name: str) -> str:
    f = FinetuneConfig.model_fields.get(name)
    extra = (f.json_schema_extra or {}) if f is not None else {}
    text = (f.description or "") if f is not None else ""
    if isinstance(extra, dict) and extra.get("live"):
        text += f"\nLive: {extra['live']}"
    return text.strip()


def _fmt_num(v: float | None, unit: str = "") -> str:
    if v is None or not isinstance(v, (int, float)) or not math.isfinite(v):
        return "--"
    if abs(v) >= 1000:
        return f"{v:,.0f}{unit}"
    return f"{v:.3g}{unit}"


def _short_path(v) -> str:
    """A long local model path as its last two parts (the whole path is the tooltip)."""
    text = str(v)
    if len(text) > 48 and "/" in text:
        return "…/" + "/".join(text.rstrip("/").split("/")[-2:])
    return text


def _fmt_metric(v) -> str:
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        return "--"
    return f"{v:.4f}" if abs(v) < 100 else f"{v:,.1f}"


def _task_facts(run) -> tuple[str, list[str]]:
    """The run's task title and `describe()` lines, from the `Run`'s task (pre-flight resolved it)."""
    task = getattr(run, "task", None)
    if task is None:
        return "", []
    try:
        detail = [str(x) for x in task.describe()]
    except Exception:  # noqa: BLE001 - a header line must not stop the panel
        detail = []
    return str(getattr(task, "title", "") or getattr(task, "name", "")), detail


class Panel:
    """One run's panel. `interactive=False` (under `--wait`) shows the controls disabled."""

    def __init__(
        self,
        run,
        *,
        renderer: str = "auto",
        interactive: bool = True,
        refresh_seconds: float = 0.25,
        plot_interval: float = 1.0,
        state: PanelState | None = None,
    ):
        self.run = run
        self.interactive = interactive
        self.refresh_seconds = refresh_seconds
        cfg = run.config
        self.state = state or PanelState(run.name, model=str(cfg.model))
        self.state.model = self.state.model or str(cfg.model)
        if not self.state.task:  # before RunStarted tells it: the run's task as pre-flight resolved it
            self.state.task, self.state.task_detail = _task_facts(run)
        if not self.state.layers and not run.done:
            lm = run.planned_layer_map()
            if lm is not None:
                from ..core.freezing import resolve_freeze

                try:
                    self.state.set_layers(lm.table(resolve_freeze(cfg.freeze, lm)))
                except FinetuneError:
                    self.state.set_layers(lm.table(set()))
        self.plots = PlotSet()
        if self.state.layers:  # drawn before the first view (an empty layer map has no ranges to draw)
            self.plots.set_layers(self.state.snapshot()["layers"])
        self.transport = make_transport(renderer, self.plots, interval=plot_interval)
        self.plot_seconds = WIDGET_PLOT_SECONDS if self.transport.widget() is not None else PLOT_SECONDS
        self.layers_transport = None
        self.renders = 0
        self.pump_cpu_s = 0.0  # CPU time of the writer's thread(s) in pump() (the UI-cost benchmark reads it)
        self._version_seen = -1
        self._last_text = 0.0
        self._last_plot = 0.0
        self._finalized = False
        self._thread: threading.Thread | None = None
        self._syncing = False  # True while the writer moves controls to match the run (no commands sent)
        self._frozen_by_user: list[str] | None = None
        self._timers: dict[str, threading.Timer] = {}
        self._timers_lock = threading.Lock()
        self._build()

    # ------------------------------------------------------------------ construction (main thread)
    def _build(self) -> None:
        st = self.state
        self.header = W.HTML(layout=W.Layout(width="100%"))
        self.status = W.HTML(layout=W.Layout(width="100%"))
        self.note = W.HTML(layout=W.Layout(width="100%", min_height="18px"))
        live = live_fields()

        # ---- freezing
        n_blocks = sum(1 for x in st.layers if x["kind"] == "block")
        self.train_last = W.IntSlider(
            value=0,
            min=0,
            max=max(n_blocks, 1),
            description="train last",
            continuous_update=False,
            style={"description_width": "80px"},
            layout=W.Layout(width="290px"),
        )
        _tip(
            self.train_last,
            "How many transformer blocks train, counted from the top (the head side); the blocks below them are "
            "frozen (no gradients, no optimizer state). Applied at the next optimizer step.",
        )
        self.train_emb = _tip(W.Checkbox(value=False, description="train embeddings", indent=False), "Embeddings")
        self.train_head = _tip(W.Checkbox(value=True, description="train head", indent=False), "The task head")
        self.blocks_label = W.HTML()
        self.unfreeze = W.Dropdown(
            options=_UNFREEZE_CHOICES,
            value="off",
            description="unfreeze",
            style={"description_width": "80px"},
            layout=W.Layout(width="290px"),
        )
        _tip(self.unfreeze, "Gradual unfreezing (ULMFiT): one more block becomes trainable at each interval.")
        self.lr_decay = W.FloatSlider(
            value=1.0,
            min=0.5,
            max=1.0,
            step=0.05,
            description="layer decay",
            continuous_update=False,
            readout_format=".2f",
            style={"description_width": "80px"},
            layout=W.Layout(width="290px"),
        )
        _tip(self.lr_decay, "Discriminative learning rates: each block down from the head gets this factor more.")
        freeze_rows: list = [
            W.HTML("<b>Freezing</b>"),
            self.train_last,
            self.blocks_label,
            W.HBox([self.train_emb, self.train_head]),
        ]
        if "unfreeze_every" in live:
            freeze_rows.append(self.unfreeze)
        if "layer_lr_decay" in live:
            freeze_rows.append(self.lr_decay)
        self.freeze_box = W.VBox(freeze_rows, layout=W.Layout(width="300px"))

        # ---- hyperparameters: one control per live field of the schema
        cfg = self.run.config
        self.hparams: dict[str, W.Widget] = {}
        rows: list = [W.HTML("<b>Hyperparameters</b>")]
        for name in live:
            if name in _NOT_IN_HPARAMS:
                continue
            w = self._hparam_widget(name, getattr(cfg, name, None))
            if w is None:
                continue
            _tip(w, _field_help(name))
            w.observe(lambda ch, n=name: self._on_hparam(n, ch), names="value")
            self.hparams[name] = w
            rows.append(w)
        self.hparam_box = W.VBox(rows, layout=W.Layout(width="300px"))

        # ---- buttons
        def button(label, icon, style, tip):
            return _tip(
                W.Button(description=label, icon=icon, button_style=style, layout=W.Layout(width="120px")), tip
            )

        self.start_btn = button("Start", "play", "success", "Start the run with the settings above")
        self.pause_btn = button("Pause", "pause", "", "Pause at the next micro-batch (Resume continues)")
        self.stop_btn = button("Stop", "stop", "danger", "Write a checkpoint, then stop")
        self.save_btn = button("Checkpoint", "save", "", "Write a checkpoint at the next optimizer step")
        self.start_btn.on_click(lambda _: self._on_start())
        self.pause_btn.on_click(lambda _: self._on_pause())
        self.stop_btn.on_click(lambda _: self._on_stop())
        self.save_btn.on_click(lambda _: self._on_checkpoint())
        self.start_btn.layout.display = "none" if self.run.started else None
        self.buttons = W.HBox([self.start_btn, self.pause_btn, self.stop_btn, self.save_btn])

        for w in (self.train_last, self.train_emb, self.train_head):
            w.observe(lambda ch: self._on_freeze(), names="value")
        self.unfreeze.observe(
            lambda ch: self._on_live("unfreeze_every", None if ch["new"] == "off" else _interval(ch["new"])),
            names="value",
        )
        self.lr_decay.observe(
            lambda ch: self._on_live("layer_lr_decay", None if ch["new"] >= 0.999 else round(ch["new"], 4)),
            names="value",
        )

        # ---- plots
        layers_widget = self._layers_widget()
        plots_widget = self.transport.widget()
        top = W.HBox(
            [self.freeze_box, *([layers_widget] if layers_widget is not None else []), self.hparam_box],
            layout=W.Layout(align_items="flex-start", flex_flow="row wrap", grid_gap="8px"),
        )
        self.controls = [
            self.train_last,
            self.train_emb,
            self.train_head,
            self.unfreeze,
            self.lr_decay,
            *self.hparams.values(),
            self.start_btn,
            self.pause_btn,
            self.stop_btn,
            self.save_btn,
        ]
        self.eval_table = W.HTML(layout=W.Layout(width="100%", max_height="260px", overflow="auto"))
        self.eval_table.add_class("nb-finetune-eval-table")
        self._eval_rows_seen = -1
        # the task's tables (a causal LM's generations): HTML, as BokehJS's core bundle has no table or Div model
        self.task_tables = W.HTML(layout=W.Layout(width="100%", max_height="320px", overflow="auto"))
        self.task_tables.add_class("nb-finetune-task-tables")
        # the run's summary once it ends (header, final state, metrics, evaluation and task tables): widget state,
        # so every view of the box shows it, a page reloaded mid-run too
        self.summary_view = W.HTML(layout=W.Layout(width="100%", display="none"))
        self.summary_view.add_class("nb-finetune-final-summary")
        self.done_class = f"nb-finetune-done-{uuid.uuid4().hex[:12]}"  # set on the box when the run ends
        self.box = W.VBox(
            [
                self.header,
                top,
                self.buttons,
                self.status,
                self.note,
                self.summary_view,
                *([plots_widget] if plots_widget else []),
                self.eval_table,
                self.task_tables,
            ],
            layout=W.Layout(width="100%", border="1px solid var(--jp-border-color2, #e0e0e0)", padding="6px"),
        )  # the final output has the same frame (transport.FRAME)
        self.box.add_class("nb-finetune-panel")
        if not self.interactive:
            for w in self.controls:
                w.disabled = True
            self.state.note = (
                "controls are off while the cell waits (--wait): the kernel cannot take widget input "
                "while a cell runs; use the default background mode to steer the run"
            )
        self._sync_controls(self.state.snapshot())
        self._render_text(force=True)

    def _layers_widget(self):
        """The layer map figure as its own BokehModel (widget transports) or inside the display output."""
        from .transport import AutoTransport, WidgetTransport, _bokeh_model_class

        if isinstance(self.transport, (WidgetTransport, AutoTransport)):
            self.layers_model = _bokeh_model_class()(self.plots.layers, self.plots.lock)
            return self.layers_model
        self.layers_model = None
        self.plots.root.children.insert(0, self.plots.layers)  # display/static: above the grid
        return None

    def _hparam_widget(self, name: str, value):
        style = {"description_width": "95px"}
        layout = W.Layout(width="290px")
        if name == "lr":
            v = float(value or 2e-5)
            return W.FloatLogSlider(
                value=v,
                base=10,
                min=-7,
                max=-1,
                step=0.05,
                description="learning rate",
                readout_format=".1e",
                continuous_update=False,
                style=style,
                layout=layout,
            )
        f = FinetuneConfig.model_fields[name]
        ann = str(f.annotation)
        if ann in ("<class 'float'>", "float | None", "typing.Optional[float]") or isinstance(value, float):
            return W.FloatText(
                value=float(value) if value is not None else 0.0,
                description=_LABELS.get(name, name.replace("_", " ")),
                continuous_update=False,
                style=style,
                layout=layout,
            )
        if ann in ("<class 'int'>", "int | None", "typing.Optional[int]"):
            return W.IntText(
                value=int(value) if value is not None else 0,
                description=_LABELS.get(name, name.replace("_", " ")),
                continuous_update=False,
                style=style,
                layout=layout,
            )
        return W.Text(
            value="" if value is None else str(value),
            description=_LABELS.get(name, name.replace("_", " ")),
            continuous_update=False,
            placeholder="off",
            style=style,
            layout=layout,
        )

    # ------------------------------------------------------------------ showing
    def display(self) -> None:
        from IPython.display import display

        if self.transport.live:
            display(bokehjs_bundle(), raw=True)  # before any Bokeh widget view is created
        display(self._box_bundle(), raw=True)
        self.transport.show()

    def _box_bundle(self) -> dict:
        """The panel's output: the widget view for live frontends; for nbconvert, GitHub and nbviewer (no widget
        state) a caption instead of ipywidgets' `VBox(children=...)` repr; the run's summary follows in the final
        output below it."""
        if hasattr(self.box, "_repr_mimebundle_"):
            data = dict(self.box._repr_mimebundle_() or {})
        else:  # ipywidgets 7 without it
            data = {
                "application/vnd.jupyter.widget-view+json": {
                    "version_major": 2,
                    "version_minor": 0,
                    "model_id": self.box.model_id,
                }
            }
        name = html.escape(self.run.name)
        data["text/plain"] = f"nb_finetune panel of run {self.run.name!r} (live while its kernel runs)"
        data["text/html"] = (
            '<div class="nb-finetune-caption" style="color:var(--jp-ui-font-color2,#666);font-size:12px">'
            f"nb_finetune panel of run <b>{name}</b>: its live controls need the running kernel; "
            "the run's summary and plots follow.</div>"
        )
        return data

    def follow(self) -> threading.Thread:
        """Background mode: a daemon thread is the writer until the run ends, then draws the final output."""

        def loop():
            while not self.run.done:
                time.sleep(self.refresh_seconds)
                self.pump()
            self.pump(final=True)

        self._thread = threading.Thread(target=loop, name=f"nb_finetune-panel-{self.run.name}", daemon=True)
        self._thread.start()
        _follow_at_exit(self)
        return self._thread

    # ------------------------------------------------------------------ the writer
    def on_event(self, e) -> None:  # training thread: record only
        self.state.on_event(e)

    def pump(self, final: bool = False) -> None:
        """Apply new points to the plots and text to the widgets (the one writer)."""
        if self._finalized:
            return
        c0 = time.thread_time()
        now = time.monotonic()
        ending = final or self.state.done or self.run.done
        changed = False
        if ending or now - self._last_plot >= self.plot_seconds:  # points wait in the state between two applies
            self._last_plot = now
            pts = self.state.take()
            snap = self.state.snapshot() if pts.layers_changed else None
            changed = self.plots.apply(pts, snap["layers"] if snap else None)
        self.transport.refresh(changed, now)
        if self.layers_model is not None:
            self.layers_model.catch_up(now)
        if ending:
            self._render_text(force=True)
            self._finalize()
        else:
            self._render_text()
        self.pump_cpu_s += time.thread_time() - c0

    def _render_text(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and (self.state.version == self._version_seen or now - self._last_text < TEXT_SECONDS):
            return
        self._version_seen = self.state.version
        self._last_text = now
        snap = self.state.snapshot()
        if not self.run.started:
            snap["state"] = "not started"
        self.header.value = self._header_html(snap)
        self.status.value = self._status_html(snap)
        note = snap.get("error") or snap.get("note") or ""
        colour = _ERROR if snap.get("error") else _MUTED
        log = _changes_html(snap.get("changes") or [])
        self.note.value = (
            f'<span style="color:{colour};font-size:12px">{html.escape(note)}</span>' if note else ""
        ) + log
        # without a widget manager the box above shows nothing: the display output carries the same lines
        self.transport.set_status(
            f'<div style="{FRAME};margin-bottom:4px">{self.header.value}{self.status.value}{self.note.value}</div>',
            self._status_text(snap, note),
        )
        self._sync_controls(snap)
        rows = snap.get("eval_rows") or []
        if len(rows) != self._eval_rows_seen:
            self._eval_rows_seen = len(rows)
            self.eval_table.value = (
                '<div style="font-size:12px;font-weight:600;margin-top:4px">Evaluations</div>' + eval_table_html(rows)
                if rows
                else ""
            )
        tables = extras_tables_html(snap.get("extras"))
        if tables != self.task_tables.value:
            self.task_tables.value = tables
        if self.run.started and self.start_btn.layout.display != "none":
            self.start_btn.layout.display = "none"
        self.renders += 1

    def _finalize(self) -> None:
        if self._finalized:
            return
        self._finalized = True
        snap = self.state.snapshot()
        for w in self.controls:
            w.disabled = True
        self.start_btn.layout.display = "none"
        state = snap["state"]
        note = {
            "stopped": "interrupted" if snap.get("reason") != "early_stopping" else "early stopping",
            "failed": "failed",
        }.get(state, "")
        if state == "stopped" and snap.get("reason") == "user":
            note = "stopped by the user"
        metrics = main_metrics(snap.get("metrics") or {}, snap.get("extras"))
        title = self.run.name + (
            " — " + ", ".join(f"{metric_label(k)} {_fmt_metric(v)}" for k, v in list(metrics.items())[:4])
            if metrics
            else ""
        )
        snap["metrics"] = metrics
        run_dir = _relative_dir(getattr(getattr(self.run, "run_dir", None), "path", None))
        summary = summary_html(self.run.name, snap, run_dir=run_dir)
        live = self._widget_views()
        if live:
            # Every view of the box (this page, a page reloaded mid-run, Notebook 7 opened on the kernel, one opened
            # after the run) renders the widgets' state, never a display update made after it loaded (the display id
            # is not saved): so the final view lives there. The summary above the live plots, which keep every point;
            # the display output carries the same for saved notebooks (nbconvert, GitHub) and hides itself wherever
            # this box renders (no second copy in this page).
            self.summary_view.value = summary
            self.summary_view.layout.display = None
            self.box.add_class(self.done_class)
            self.transport.model.resync()  # views made from now on in a page that has the model render every point
        self.eval_table.layout.display = "none"  # the summary carries the evaluation and task tables
        self.task_tables.layout.display = "none"
        self._static_layers(snap)
        bundle = final_bundle(
            self.plots,
            title=title,
            state=state,
            note=note,
            text=summary_text(self.run.name, snap),
            summary=summary,
            hide_where=self.done_class if live else "",
        )
        self.transport.finalize(bundle, keep_live=live)

    def _widget_views(self) -> bool:
        """Whether the plots reach the page through widgets (not the display handle of a frontend without them)."""
        return self.transport.widget() is not None and getattr(self.transport, "mode", "widget") != "display"

    def _static_layers(self, snap: dict[str, Any]) -> None:
        """The finished layer map as HTML (no Bokeh widget needed), the live map's width: three columns stay three."""
        if self.layers_model is None:
            return
        self.layers_model.layout.display = "none"
        self.layers_img = W.HTML(self._layers_html(snap["layers"]), layout=W.Layout(width=f"{LAYER_W + 30}px"))
        self.box.children = tuple(
            self.layers_img if c is self.layers_model else c for c in self._replace_layers(self.box.children)
        )

    def _replace_layers(self, children):
        out = []
        for c in children:
            if isinstance(c, W.Box) and any(x is self.layers_model for x in c.children):
                c.children = tuple(self.layers_img if x is self.layers_model else x for x in c.children)
            out.append(c)
        return out

    # ------------------------------------------------------------------ text
    def _header_html(self, s: dict[str, Any]) -> str:
        state = s["state"]
        colour = _STATE_COLOURS.get(state, "#546e7a")
        badge = (
            f'<span style="background:{colour};color:white;border-radius:9px;padding:1px 9px;font-size:12px">'
            f"{html.escape(state)}{' · ' + html.escape(str(s['reason'])) if s.get('reason') else ''}</span>"
        )
        facts = [
            ("model", s.get("model") or ""),
            ("task", s.get("task") or "", "\n".join(s.get("task_detail") or [])),
            ("device", s.get("device") or "--"),
            ("precision", s.get("precision") or "--"),
        ]
        if s.get("params_total"):
            pct = 100 * s["params_trainable"] / s["params_total"]
            facts.append(
                (
                    "parameters",
                    f"{fmt_count(s['params_total'])} total, {fmt_count(s['params_trainable'])} trainable ({pct:.1f}%)",
                )
            )
        if s.get("num_train"):
            facts.append(("data", f"{s['num_train']:,} train / {s['num_eval']:,} eval"))
        if s.get("cache", "").startswith("on"):
            facts.append(("cache", s["cache"]))
        items = " · ".join(
            f'<span style="color:{_MUTED}">{f[0]}</span> <span title="{html.escape(str(f[-1] or f[1]))}">'
            f"{html.escape(_short_path(f[1]))}</span>"
            for f in facts
            if f[1] not in ("", None)
        )
        return (
            f'<div style="display:flex;align-items:center;gap:10px;flex-wrap:wrap;font-size:13px">'
            f'<b style="font-size:15px">{html.escape(self.run.name)}</b>{badge}'
            f'<span style="font-size:12px">{items}</span></div>'
        )

    def _status_html(self, s: dict[str, Any]) -> str:
        total = s.get("total_steps") or 0
        pct = 100 * (s.get("step") or 0) / total if total else 0
        colour = _STATE_COLOURS.get(s["state"], "#546e7a")
        parts = status_parts(self.state, s)
        return (
            '<div style="display:flex;align-items:center;gap:10px;font-family:var(--jp-code-font-family,monospace);'
            'font-size:12px">'
            f'<div style="flex:0 0 160px;height:8px;background:var(--jp-layout-color3,#e0e0e0);border-radius:4px;'
            f'overflow:hidden">'
            f'<div class="nb-finetune-bar" style="width:{pct:.1f}%;height:100%;background:{colour}"></div></div>'
            f'<span class="nb-finetune-status" title="{html.escape(" · ".join(parts))}" style="white-space:nowrap;'
            f'overflow:hidden;text-overflow:ellipsis;min-width:0">{html.escape(" · ".join(parts))}</span></div>'
        )

    def _status_text(self, s: dict[str, Any], note: str = "") -> str:
        """The header and status line as plain text (a frontend that shows only text/plain)."""
        state = s["state"] + (f" ({s['reason']})" if s.get("reason") else "")
        line = f"{self.run.name}: {state} · " + " · ".join(status_parts(self.state, s))
        return line + (f"\n{note}" if note else "")

    @staticmethod
    def _layers_html(layers: list[dict[str, Any]]) -> str:
        """A static layer map (after the run: no Bokeh widget needed)."""
        if not layers:
            return ""
        top = max(layer_bar(x["params"]) for x in layers) or 1  # the live map's square-root scale
        rows = "".join(
            f'<div style="display:flex;align-items:center;gap:6px;font-size:11px;height:14px" '
            f'title="{html.escape(x["group"])}: {x["params"]:,} parameters, '
            f'{"trainable" if x["trainable"] else "frozen"}">'
            f'<span style="width:90px;text-align:right;color:{_MUTED}">{html.escape(x["group"])}</span>'
            f'<span style="display:inline-block;height:10px;width:{max(2, 170 * layer_bar(x["params"]) / top):.0f}px;'
            f'background:{TRAINABLE if x["trainable"] else FROZEN}"></span>'
            f'<span style="color:{_MUTED}">{fmt_count(x["params"])}</span></div>'
            for x in reversed(layers)
        )
        return f'<div style="padding:4px 12px"><b style="font-size:12px">Layer map</b>{rows}</div>'

    # ------------------------------------------------------------------ controls <- run (writer)
    def _sync_controls(self, s: dict[str, Any]) -> None:
        layers = s.get("layers") or []
        blocks = [x for x in layers if x["kind"] == "block"]
        self._syncing = True
        try:
            if blocks:
                if self.train_last.max != len(blocks):
                    self.train_last.max = len(blocks)
                trained = 0
                for x in reversed(blocks):
                    if not x["trainable"]:
                        break
                    trained += 1
                if self.train_last.value != trained:
                    self.train_last.value = trained
                emb = [x for x in layers if x["kind"] == "embeddings"]
                head = [x for x in layers if x["kind"] == "head"]
                if emb and self.train_emb.value != emb[0]["trainable"]:
                    self.train_emb.value = emb[0]["trainable"]
                if head and self.train_head.value != all(x["trainable"] for x in head):
                    self.train_head.value = all(x["trainable"] for x in head)
                frozen_params = sum(x["params"] for x in layers if not x["trainable"])
                self.blocks_label.value = (
                    f'<span style="font-size:11px;color:{_MUTED};padding-left:84px">'
                    f"of {len(blocks)} blocks · {fmt_count(frozen_params)} parameters frozen</span>"
                )
            self.pause_btn.description = "Resume" if s["state"] == "paused" else "Pause"
            self.pause_btn.icon = "play" if s["state"] == "paused" else "pause"
        finally:
            self._syncing = False

    # ------------------------------------------------------------------ controls -> run (main thread)
    def _frozen_groups(self) -> list[str]:
        layers = self.state.snapshot()["layers"]
        blocks = [x["group"] for x in layers if x["kind"] == "block"]
        n_train = self.train_last.value
        frozen = blocks[: max(0, len(blocks) - n_train)]
        if not self.train_emb.value:
            frozen = [x["group"] for x in layers if x["kind"] == "embeddings"] + frozen
        if not self.train_head.value:
            frozen += [x["group"] for x in layers if x["kind"] == "head"]
        return frozen

    def _say(self, text: str, error: bool = False) -> None:
        colour = _ERROR if error else _MUTED
        self.note.value = f'<span style="color:{colour};font-size:12px">{html.escape(text)}</span>'

    def _guard(self, fn, what: str) -> None:
        try:
            fn()
        except FinetuneError as e:
            self._say(f"{what}: {e}", error=True)

    def _on_freeze(self) -> None:
        if self._syncing or not self.interactive:
            return
        frozen = self._frozen_groups()
        spec = frozen if frozen else "none"

        def send():
            if not self.run.started:
                self.run.configure(freeze=spec)
                self.state.on_event(_layers_event(self.state, frozen))
                self._say(f"freeze set to {spec} (applies when the run starts)")
            else:
                self.run.freeze(spec, _source="panel")
                self._say(f"freeze {', '.join(frozen) or 'none'}: sent, applied at the next optimizer step")

        if self.run.started:
            self._later("freeze", send)
        else:
            self._guard(send, "freeze")

    def _later(self, key: str, send) -> None:
        """Debounce: send only the last of a burst of changes (a slider dragged or stepped with the arrow keys
        reports every value it passes), DEBOUNCE_S after the last one."""
        with self._timers_lock:
            old = self._timers.pop(key, None)
            if old is not None:
                old.cancel()
            t = threading.Timer(DEBOUNCE_S, lambda: self._guard(send, key))
            t.daemon = True
            self._timers[key] = t
            t.start()

    def _on_live(self, name: str, value) -> None:
        if self._syncing or not self.interactive:
            return

        def send():
            if not self.run.started:
                self.run.configure(**{name: value})
                self._say(f"{name} = {value} (applies when the run starts)")
            else:
                self.run.set(_source="panel", **{name: value})
                self._say(f"{name} = {fmt_value(value)}: sent, applied at the next optimizer step")

        if not self.run.started:
            self._guard(send, name)
            return
        try:  # a bad value is refused at once, in red; a good one waits for the end of the burst
            check_live_value(name, value)
        except FinetuneError as e:
            self._say(f"{name}: {e}", error=True)
            return
        self._later(name, send)

    def _on_hparam(self, name: str, change) -> None:
        value = change["new"]
        if isinstance(self.hparams.get(name), W.Text):
            value = value.strip() or None
            if isinstance(value, str) and value.isdigit():
                value = int(value)
        elif name in ("max_grad_norm",) and value == 0:
            value = None
        self._on_live(name, value)

    def _on_start(self) -> None:
        self._guard(self.run.start, "start")
        if self.run.started:
            self.start_btn.layout.display = "none"
            self._say("started")

    def _on_pause(self) -> None:
        if self.state.state == "paused":
            self._guard(partial(self.run.resume, _source="panel"), "resume")
            self._say("resume sent")
        else:
            self._guard(partial(self.run.pause, _source="panel"), "pause")
            self._say("pause sent: the run pauses at the next micro-batch")

    def _on_stop(self) -> None:
        self.run.stop(save=True, _source="panel")
        self._say("stop sent: a checkpoint is written, then the run stops")

    def _on_checkpoint(self) -> None:
        self._guard(partial(self.run.checkpoint, _source="panel"), "checkpoint")
        self._say("checkpoint requested for the next optimizer step")


def status_parts(state, s: dict[str, Any]) -> list[str]:
    """The status line's facts (`state`: the run's PanelState, `s` its snapshot): step, epoch, ETA, train loss, lr,
    throughput, memory, skipped steps and files, the latest metrics."""
    total = s.get("total_steps") or 0
    step = s.get("step") or 0
    parts = [f"step {step:,}/{total:,}" if total else f"step {step:,}", f"epoch {s.get('epoch', 0):.2f}"]
    eta = state.eta_seconds() if s["state"] in ("training", "paused") else None
    if eta is not None:
        parts.append(f"ETA {fmt_duration(eta)}")
    if s.get("loss") is not None:
        parts.append(f"train loss {_fmt_num(s['loss'])}")
    if s.get("lr"):
        parts.append(f"lr {fmt_value(s['lr'])}")
    if s.get("samples_per_s"):
        parts.append(f"{_fmt_num(s['samples_per_s'])} samples/s")
    unit = s.get("throughput_unit") or "tokens"
    if s.get("tokens_per_s") and unit != "samples":
        parts.append(f"{_fmt_num(s['tokens_per_s'])} {unit}/s")
    if s.get("memory_mb"):
        parts.append(f"memory {_fmt_num(s['memory_mb'] / 1024, ' GB')}")
    if s.get("nonfinite_steps"):
        parts.append(f"{s['nonfinite_steps']:,} NaN/Inf steps skipped")
    if s.get("unreadable"):
        parts.append(unreadable_text(s["unreadable"]))
    metrics = main_metrics(s.get("metrics") or {}, s.get("extras"))
    if metrics:
        parts.append(", ".join(f"{metric_label(k)} {_fmt_metric(v)}" for k, v in metrics.items()))
    return parts


def _changes_html(changes: list[dict[str, Any]]) -> str:
    """The change log: the last live changes, newest first, each with its step, what and who."""
    if not changes:
        return ""
    items = "".join(
        f'<li style="{"" if c.get("ok", True) else f"color:{_ERROR}"}">step {c.get("step", 0):,} · '
        f"{html.escape(str(c.get('label', '')))} · by {html.escape(str(c.get('source', '')))}"
        f"{'' if c.get('ok', True) else ' · refused'}"
        f"{' (' + html.escape(str(c['message'])) + ')' if c.get('message') else ''}</li>"
        for c in reversed(changes[-3:])
    )
    return (
        f'<div class="nb-finetune-changes" style="font-size:11px;color:{_MUTED}">changes ({len(changes)}, newest '
        f'first):<ul style="margin:0 0 2px 0;padding-left:18px">{items}</ul></div>'
    )


def _relative_dir(path) -> str:
    """The run directory relative to the working directory (a shared notebook shows no home directory), else its
    name."""
    if not path:
        return ""
    import os

    try:
        rel = os.path.relpath(str(path))
    except ValueError:
        rel = ""
    return rel if rel and not rel.startswith("..") else os.path.basename(str(path).rstrip("/"))


def _interval(v: str):
    return int(v) if v.isdigit() else v


def _layers_event(state: PanelState, frozen: list[str]):
    """A local `freeze` event for a run that has not started (the map redraws; nothing is sent)."""
    from ..core.events import ControlApplied

    return ControlApplied(step=state.step, command="freeze", args={"spec": frozen or "none"}, seq=0, source="preview")


# ---------------------------------------------------------------------------------------- kernel shutdown
# Panels whose writer thread may still be running. Weak: a panel's live thread keeps it here (the thread's loop holds
# it); once the thread has ended, the panel and its run can go.
_FOLLOWING: weakref.WeakSet[Panel] = weakref.WeakSet()
_FOLLOWING_LOCK = threading.Lock()
_AT_EXIT_REGISTERED = False
AT_EXIT_WAIT_S = 5.0  # at most this long in all, for the final renders of runs that have ended


def _follow_at_exit(panel: Panel) -> None:
    """Registers a panel's writer thread to be waited for when the kernel shuts down. A run that ended just before
    the kernel was told to shut down (a notebook runner's last cell) may still have its final render to send: sent
    while the interpreter tears zmq down, it printed `RuntimeError: zmq gc socket requested during shutdown`
    tracebacks after a notebook that succeeded. The exit handler is registered after pyzmq's and ipykernel's, so it
    runs before them (atexit is last in, first out), while the IOPub thread still sends what the render hands it."""
    global _AT_EXIT_REGISTERED
    with _FOLLOWING_LOCK:
        if not _AT_EXIT_REGISTERED:
            try:  # pyzmq registers its garbage collector's exit handler when this module is first imported, which
                # can be at the first large message, after ours: imported now, it runs after ours
                import zmq.utils.garbage  # noqa: F401
            except ImportError:
                pass
            atexit.register(_join_followers)
            _AT_EXIT_REGISTERED = True
        _FOLLOWING.add(panel)


def _join_followers(budget: float = AT_EXIT_WAIT_S) -> None:
    """Waits for the final render of every run that has ended; a run still training (the kernel shut down
    mid-run) is not waited for, and nothing waits longer than `budget` in all."""
    deadline = time.monotonic() + budget
    with _FOLLOWING_LOCK:
        pending = [p._thread for p in _FOLLOWING if p._thread is not None and p._thread.is_alive() and p.run.done]
    for t in pending:
        t.join(max(0.0, deadline - time.monotonic()))
