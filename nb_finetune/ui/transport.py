"""How the Bokeh figures reach the frontend (DESIGN.md, "Rendering").

- `WidgetTransport`: jupyter_bokeh's `BokehModel`; streamed points travel as document patches over its comm.
  Used once its view proves it rendered (BokehJS syncs its computed ranges and sizes back as `jsevent`
  messages); otherwise `AutoTransport` switches to the display handle after `confirm_timeout` seconds.
- `DisplayTransport`: re-renders the figures into a display handle about once a second (Colab, VS Code).
- `StaticTransport`: nothing live (nbclient, CI); the final snapshot only.

BokehJS is loaded INLINE (core only, no CDN) in the cell before any figure. Every transport ends with the same
final bundle: Bokeh HTML over an SVG drawn in Python, so a saved notebook shows the curves everywhere.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import uuid

from .plots import PlotSet

__all__ = [
    "RENDERERS",
    "AutoTransport",
    "DisplayTransport",
    "StaticTransport",
    "WidgetTransport",
    "bokehjs_bundle",
    "final_bundle",
    "make_transport",
    "detect_frontend",
]

RENDERERS = ("auto", "widget", "display", "static")
FRAME = "border:1px solid var(--jp-border-color2, #e0e0e0);padding:6px"  # the panel box's frame (panel.py)
RESERIALISE_S = 10.0  # display mode: the figures' structure is serialised again at most this often
CATCH_UP_S = (3.0, 12.0)  # after a new view asked for the state: re-render the views this long after the request


# where the panel's widget box renders (VS Code, Colab with widgets) it shows the state line itself: not twice
_HIDE_STATUS = (
    "<style>body:has(.nb-finetune-panel .nb-finetune-status) .nb-finetune-display-status{display:none}</style>"
)


def detect_frontend() -> str:
    """Best guess of the frontend: 'colab', 'vscode', or 'jupyter' (JupyterLab / Notebook 7 / other)."""
    if "google.colab" in sys.modules:
        return "colab"
    if any(k.startswith("VSCODE_") for k in os.environ):
        return "vscode"
    return "jupyter"


def bokehjs_bundle() -> dict[str, str]:
    """BokehJS (core only) as an inline script: what both live transports and the final snapshot need."""
    from bokeh.resources import Resources

    res = Resources(mode="inline", components=["bokeh"])
    return {
        "text/html": res.render_js() + '<div class="nb-finetune-bokehjs" style="display:none"></div>',
        "text/plain": "",
    }


def _plain(x):
    """A column value as JSON can carry it: NaN and infinities become null (a gap in the line)."""
    return x if not isinstance(x, float) or math.isfinite(x) else None


def _source_data_refs(item: dict) -> dict[str, dict]:
    """The `data` maps of every ColumnDataSource in a serialised document, by model id."""
    out: dict[str, dict] = {}
    stack = [item]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            if o.get("name") == "ColumnDataSource" and "attributes" in o:
                data = o["attributes"].get("data")
                if isinstance(data, dict):
                    out[o["id"]] = data
            stack.extend(o.values())
        elif isinstance(o, list):
            stack.extend(o)
    return out


def _embed_html(root, *, fallback: str = "", element_id: str | None = None, skip_where: str = "") -> str:
    """Bokeh `json_item` of `root` that renders once BokehJS is there; `fallback` (an SVG) stays otherwise."""
    from bokeh.embed import json_item

    eid = element_id or f"nbft-{uuid.uuid4().hex[:12]}"
    return _embed_json(json.dumps(json_item(root, eid)), eid, fallback, skip_where)


def _embed_json(item: str, eid: str, fallback: str = "", skip_where: str = "") -> str:
    """`skip_where`: a class; where an element of it is on the page (the live panel's box), nothing is drawn."""
    skip = f"if(document.querySelector('.{skip_where}'))return;" if skip_where else ""
    fallback_div = f'<div class="nb-finetune-static" id="{eid}-static">{fallback}</div>' if fallback else ""
    # Retry briefly: BokehJS may still be loading from an earlier output of this cell. Without it the SVG stays.
    return (
        f'<div class="nb-finetune-plots" id="{eid}"></div>{fallback_div}'
        "<script>(function(){var item="
        + item
        + ";var n=0;function go(){"
        + skip
        + "if(window.Bokeh&&window.Bokeh.embed&&window.Bokeh.embed.embed_item){"
        f"var s=document.getElementById('{eid}-static');"
        # the SVG goes only once the figures are drawn (a model BokehJS lacks would otherwise leave nothing)
        "Promise.resolve(window.Bokeh.embed.embed_item(item)).then(function(){if(s)s.style.display='none';});}"
        "else if(n++<40){setTimeout(go,100);}}go();})();</script>"
    )


def final_bundle(
    plots: PlotSet,
    *,
    title: str,
    state: str,
    note: str = "",
    text: str = "",
    summary: str = "",
    hide_where: str = "",
) -> dict[str, str]:
    """The output a finished run leaves behind: the run's HTML `summary` (header, final state, metrics, evaluation
    table), then interactive Bokeh where BokehJS is present and the SVG elsewhere; the SVG alone for renderers that
    pick images, `text` (the summary as text) for the ones that pick text. `hide_where`: a class the live panel's
    box carries once it shows the same summary and plots itself; on a page where it renders, this output hides."""
    from .svg import run_svg

    svg = run_svg(plots.series(), title=title, state=state, note=note)
    with plots.lock:
        body = _embed_html(plots.root, fallback=svg, skip_where=hide_where)
    # framed as the live panel is (its border and padding): the plots keep their width when the run ends
    hide = (
        f"<style>body:has(.{hide_where}) .nb-finetune-final.{hide_where}-copy{{display:none}}</style>"
        if hide_where
        else ""
    )
    own = f" {hide_where}-copy" if hide_where else ""
    html = f'{hide}<div class="nb-finetune-final{own}" style="{FRAME}">{summary}{body}</div>'
    return {"text/html": html, "image/svg+xml": svg, "text/plain": text or f"{title}: {state}"}


class _Base:
    name = "base"
    live = True

    def __init__(self, plots: PlotSet):
        self.plots = plots
        self.renders = 0
        self.handle = None
        self.status_html = ""  # the run's state line above the live plots (display mode: no widget shows it)
        self.status_text = ""

    def set_status(self, html: str, text: str) -> None:
        """The panel's header and status line, for transports that show them themselves (`DisplayTransport`)."""
        self.status_html, self.status_text = html, text

    def widget(self):  # the widget to put inside the panel, if any
        return None

    def show(self) -> None:
        """Display this transport's outputs (main thread, inside the cell being run)."""
        from IPython.display import display

        self.handle = display({"text/plain": ""}, raw=True, display_id=True)

    def refresh(self, changed: bool, now: float) -> None:  # the pump's writer, after `plots.apply`
        return None

    def finalize(self, bundle: dict[str, str], keep_live: bool = False) -> None:
        if self.handle is not None:
            self.handle.update(bundle, raw=True)
        else:
            from IPython.display import display

            display(bundle, raw=True)


class StaticTransport(_Base):
    name = "static"
    live = False


class DisplayTransport(_Base):
    """Re-render the whole figure set into a display handle at most every `interval` seconds."""

    name = "display"

    def __init__(self, plots: PlotSet, interval: float = 1.0):
        super().__init__(plots)
        self.interval = interval
        self._last = 0.0
        self._dirty = False
        self._item: dict | None = None
        self._structure = -1
        self._columns: dict[str, dict] = {}
        self.serialisations = 0
        self._serialised_at = 0.0

    def set_status(self, html: str, text: str) -> None:
        """A page without a widget manager (VS Code, Colab without widgets) shows no panel box: the run's state line
        travels above the plots, re-rendered with them (a paused run's new state too)."""
        if (html, text) != (self.status_html, self.status_text):
            super().set_status(html, text)
            self._dirty = True

    def show(self) -> None:
        from IPython.display import display

        self.handle = display(self._bundle(), raw=True, display_id=True)
        self._last = time.monotonic()

    def _bundle(self) -> dict[str, str]:
        """The plots as HTML. Serialising the Bokeh document is the slow part (~0.5 s): it happens again only when
        the plots' structure changed; otherwise the cached document gets the sources' current columns."""
        from bokeh.embed import json_item

        eid = f"nbft-{uuid.uuid4().hex[:12]}"
        with self.plots.lock:
            changed = self._structure != self.plots.structure
            # new lines (a metric, a layer group) wait up to RESERIALISE_S: their columns travel meanwhile
            if self._item is None or (changed and time.monotonic() - self._serialised_at >= RESERIALISE_S):
                self._serialised_at = time.monotonic()
                self._item = json_item(self.plots.root, eid)
                self._structure = self.plots.structure
                self._columns = _source_data_refs(self._item)
                self.serialisations += 1
            for src in self.plots.sources():
                ref = self._columns.get(src.id)
                if ref is not None:
                    ref["entries"] = [[k, [_plain(x) for x in v]] for k, v in src.data.items()]
            self._item["target_id"] = eid
            item = json.dumps(self._item)
        status = (
            f'{_HIDE_STATUS}<div class="nb-finetune-display-status">{self.status_html}</div>'
            if self.status_html
            else ""
        )
        return {
            "text/html": status + _embed_json(item, eid),
            "text/plain": (self.status_text + "\n" if self.status_text else "")
            + "(live plots: they need a frontend that runs JavaScript)",
        }

    def refresh(self, changed: bool, now: float) -> None:
        self._dirty = self._dirty or changed
        if self._dirty and self.handle is not None and now - self._last >= self.interval:
            self._last, self._dirty = now, False
            self.handle.update(self._bundle(), raw=True)
            self.renders += 1


def _bokeh_model_class():
    """jupyter_bokeh's BokehModel, with browser write-backs taken under the plots' lock and noted as a render."""
    from jupyter_bokeh import BokehModel

    class PanelBokehModel(BokehModel):
        """A second view (a page reload, Notebook 7 opened on the same kernel) asks the kernel for the widget's
        whole state and renders `render_bundle` from it, then applies the patches that follow. jupyter_bokeh
        serialises that bundle once, when the widget is made, so such a view showed empty plots: here every full
        state request serialises the document as it is now (under the plots' lock, so no stream goes between the
        bundle and the patches after it), and `refresh_views()` later re-renders the views once, which also
        covers the patches a new page dropped before its view existed."""

        def __init__(self, model, lock, **kw):
            self._nbft_lock = lock
            self.confirmed_at: float | None = None
            self.received: dict[str, int] = {}  # browser write-backs by kind (the UI-cost benchmark reads them)
            self.sync_cpu_s = 0.0
            self.state_requests = 0  # full state requests after the first display (new views)
            self.state_requested_at: float | None = None
            self._answered_at: float | None = None  # the last message from any view
            self._opened = False
            self._resending = False
            super().__init__(model, combine_events=True, **kw)
            self._opened = True

        def get_state(self, key=None, drop_defaults=False):
            if key is None and self._opened:
                with self._nbft_lock:  # the pump re-sends under it: `_resending` is read while no re-send is under way
                    if not self._resending:  # a full state request: a new view is coming
                        self._trait_values["render_bundle"] = self._model_to_traits(self._model)
                        self.state_requests += 1
                        self.state_requested_at = time.monotonic()
                        self._catch_ups = 0
                    return super().get_state(key, drop_defaults)
            return super().get_state(key, drop_defaults)

        def resync(self) -> None:
            """Every view re-renders the document as it is now (the run ended: a view made later in a page that has
            this model, e.g. after an output update, renders from this state, not from the first one)."""
            with self._nbft_lock:
                self.render_bundle = self._model_to_traits(self._model)

        def send_state(self, key=None):
            """A change of `render_bundle` goes out in the widget's whole state, not as an update of that key alone:
            a message sent from the pump thread carries the kernel's current request as its parent, and a page
            restoring its widgets takes the first update whose parent is its `request_state` as the model's whole
            state. A `render_bundle`-only update sent then gave that page a model with no module or name ("No
            version of module undefined is registered"): no plots in a second Notebook 7 tab on a loaded machine."""
            keys = [key] if isinstance(key, str) else key
            if keys is None or "render_bundle" not in keys:
                return super().send_state(key)
            with self._nbft_lock:
                self._resending = True  # the whole state, as it is: not a new view's request
                try:
                    return super().send_state(None)
                finally:
                    self._resending = False

        def catch_up(self, now: float) -> bool:
            """The writer, after a state request: send the current document to every view (each re-renders once)
            CATCH_UP_S after it, for the points a new page got before its view was there. Returns whether it did."""
            t = self.state_requested_at
            if t is None or self._catch_ups >= len(CATCH_UP_S):
                return False
            # the first one as soon as a view answers after the request (the new view rendered), else by the clock
            answered = self._catch_ups == 0 and (self._answered_at or 0) > t + 0.2
            if not answered and now - t < CATCH_UP_S[self._catch_ups]:
                return False
            self._catch_ups += 1
            with self._nbft_lock:
                self.render_bundle = self._model_to_traits(self._model)
            return True

        def _sync_model(self, model, content, buffers):
            c0 = time.thread_time()
            self._answered_at = time.monotonic()
            if self.confirmed_at is None:
                self.confirmed_at = self._answered_at
            key = f"{content.get('kind', content.get('event', '?'))}:{content.get('attr', '')}"
            self.received[key] = self.received.get(key, 0) + 1
            try:
                # jupyter_bokeh's view sends back every change it applied, our own streams included: applying
                # those would append the points twice. The panel needs nothing from the browser's document
                # (zoom and pan live there), so only Bokeh UI events (`MessageSent`) are applied, under the lock.
                if content.get("kind") == "MessageSent":
                    with self._nbft_lock:  # the one-writer rule: the pump streams under the same lock
                        return super()._sync_model(model, content, buffers)
                return None
            finally:
                self.sync_cpu_s += time.thread_time() - c0

    return PanelBokehModel


class WidgetTransport(_Base):
    name = "widget"

    def __init__(self, plots: PlotSet):
        super().__init__(plots)
        self.model = _bokeh_model_class()(plots.root, plots.lock)

    @property
    def confirmed(self) -> bool:
        return self.model.confirmed_at is not None

    def widget(self):
        return self.model

    def refresh(self, changed: bool, now: float) -> None:
        if self.model.catch_up(now):
            self.renders += 1

    def finalize(self, bundle: dict[str, str], keep_live: bool = False) -> None:
        if not keep_live:
            self.model.layout.display = "none"
        super().finalize(bundle)


class AutoTransport(WidgetTransport):
    """The widget while its view confirms it rendered; the display handle after `confirm_timeout` without."""

    name = "auto"

    def __init__(self, plots: PlotSet, confirm_timeout: float = 4.0, interval: float = 1.0):
        super().__init__(plots)
        self.confirm_timeout = confirm_timeout
        self.interval = interval
        self.mode = "pending"  # -> "widget" | "display"
        self._shown_at: float | None = None
        self._fallback: DisplayTransport | None = None

    def show(self) -> None:
        super().show()
        self._shown_at = time.monotonic()

    def set_status(self, html: str, text: str) -> None:
        super().set_status(html, text)
        if self._fallback is not None:
            self._fallback.set_status(html, text)

    def refresh(self, changed: bool, now: float) -> None:
        if self.mode != "display":
            self.model.catch_up(now)
        if self.mode == "pending":
            if self.confirmed:
                self.mode = "widget"
            elif self._shown_at is not None and now - self._shown_at > self.confirm_timeout:
                self.mode = "display"
                self.model.layout.display = "none"
                self._fallback = DisplayTransport(self.plots, self.interval)
                self._fallback.handle = self.handle
                self._fallback.set_status(self.status_html, self.status_text)
                changed = True
        if self._fallback is not None:
            self._fallback.refresh(changed, now)
            self.renders = self._fallback.renders


def make_transport(renderer: str, plots: PlotSet, *, interval: float = 1.0, confirm_timeout: float = 4.0):
    """`renderer`: auto | widget | display | static (`%config FinetuneMagic.renderer`)."""
    if renderer not in RENDERERS:
        raise ValueError(f"renderer {renderer!r} is not one of {', '.join(RENDERERS)}")
    if renderer == "auto":
        frontend = detect_frontend()
        if frontend in ("colab", "vscode"):
            return DisplayTransport(plots, interval)
        try:
            import jupyter_bokeh  # noqa: F401
        except ImportError:
            return DisplayTransport(plots, interval)
        return AutoTransport(plots, confirm_timeout, interval)
    if renderer == "widget":
        return WidgetTransport(plots)
    if renderer == "display":
        return DisplayTransport(plots, interval)
    return StaticTransport(plots)
