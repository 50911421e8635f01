"""A run as static HTML and text: what a saved, exported or shared notebook shows where the live panel was.

The final output bundle of a run (transport.py) opens with `summary_html`: a header (name, final state, model, task),
the final status (steps, epoch, time, train loss, best metric), the last metrics and the evaluation table, one row
per evaluation like the Hugging Face Trainer's notebook table. nbconvert, GitHub and nbviewer pick `text/html`,
so no frontend JavaScript is needed; colours come from JupyterLab's theme variables where they exist (light
fallbacks elsewhere). Plain data in, strings out: tested without a frontend.
"""

from __future__ import annotations

import html
import math
from typing import Any

from .state import fmt_duration, fmt_value

__all__ = [
    "eval_table_html",
    "extras_table_html",
    "extras_tables_html",
    "summary_html",
    "summary_text",
    "fmt_metric",
    "metric_label",
    "STATE_COLOURS",
]

STATE_COLOURS = {  # colour-blind-safe (Okabe-Ito): blue running, bluish green finished, vermillion failed
    "queued": "#6b7b8c",
    "starting": "#6b7b8c",
    "not started": "#6b7b8c",
    "training": "#0072b2",
    "paused": "#cc79a7",
    "stopping": "#e69f00",
    "finished": "#009e73",
    "stopped": "#e69f00",
    "failed": "#d55e00",
}
_FG = "var(--jp-ui-font-color1, #222)"
_MUTED = "var(--jp-ui-font-color2, #666)"
_BORDER = "var(--jp-border-color2, #e0e0e0)"
_BEST_BG = "rgba(0, 114, 178, 0.16)"  # Okabe-Ito blue, see-through: a light tint on light themes, a dark one on dark


def fmt_metric(v) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return "--"
    return f"{v:.4f}" if abs(v) < 100 else f"{v:,.1f}"


def metric_label(name: str) -> str:
    """`eval_loss` -> "eval loss", `eval_accuracy` -> "accuracy"."""
    return "eval loss" if name == "eval_loss" else name.removeprefix("eval_").replace("_", " ")


def _metric_names(rows: list[dict[str, Any]]) -> list[str]:
    names = list(dict.fromkeys(k for r in rows for k in r.get("metrics", {})))
    return sorted(names, key=lambda k: (k != "eval_loss", names.index(k)))


def eval_table_html(rows: list[dict[str, Any]], *, max_rows: int = 200) -> str:
    """One row per evaluation: step, epoch, train loss, eval loss, each metric; the best row marked ★."""
    if not rows:
        return ""
    names = _metric_names(rows)
    shown = rows if len(rows) <= max_rows else rows[:1] + rows[-(max_rows - 1) :]
    th = f'style="text-align:right;padding:2px 8px;border-bottom:1px solid {_BORDER};font-weight:600"'
    head = "".join(
        f"<th {th}>{html.escape(h)}</th>" for h in ("", "step", "epoch", "train loss", *map(metric_label, names))
    )
    body = []
    for r in shown:
        best = bool(r.get("best"))
        style = f' style="background:{_BEST_BG};font-weight:600"' if best else ""
        cells = [
            '<span title="best so far (the metric that picks the best checkpoint)">★</span>' if best else "",
            f"{r.get('step', 0):,}",
            f"{r.get('epoch') or 0:.2f}",
            fmt_metric(r.get("train_loss")),
            *(fmt_metric(r.get("metrics", {}).get(n)) for n in names),
        ]
        body.append(
            f'<tr class="nbft-eval-row"{style}>'
            + "".join(f'<td style="text-align:right;padding:1px 8px">{c}</td>' for c in cells)
            + "</tr>"
        )
    more = (
        f'<div style="color:{_MUTED};font-size:11px">{len(rows) - len(shown)} evaluations not shown</div>'
        if len(shown) < len(rows)
        else ""
    )
    return (
        f'<table class="nb-finetune-evals" style="border-collapse:collapse;font-size:12px;color:{_FG};'
        f'font-variant-numeric:tabular-nums;margin:4px 0">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}"
    )


def extras_table_html(entry: dict[str, Any], *, max_rows: int = 20, max_chars: int = 600) -> str:
    """A task's "table" extras entry ({columns, rows}: a causal LM's prompt / first / latest generations) as an HTML
    table; cells escaped, kept as written (line breaks too), cut at `max_chars`."""
    cols = [str(c) for c in entry.get("columns") or []]
    rows = [r for r in entry.get("rows") or [] if isinstance(r, (list, tuple))]
    if not cols:
        return ""

    def cell(v) -> str:
        text = "" if v is None else str(v)
        return html.escape(text if len(text) <= max_chars else text[: max_chars - 1] + "…")

    td = f'style="text-align:left;vertical-align:top;padding:2px 8px;white-space:pre-wrap;border-bottom:1px solid {_BORDER}"'
    head = "".join(
        f'<th style="text-align:left;padding:2px 8px;border-bottom:1px solid {_BORDER};font-weight:600">'
        f"{html.escape(c)}</th>"
        for c in cols
    )
    body = "".join(
        '<tr class="nbft-table-row">'
        + "".join(f"<td {td}>{cell(r[i] if i < len(r) else '')}</td>" for i in range(len(cols)))
        + "</tr>"
        for r in rows[:max_rows]
    )
    more = (
        f'<div style="color:{_MUTED};font-size:11px">{len(rows) - max_rows} more rows not shown</div>'
        if len(rows) > max_rows
        else ""
    )
    return (
        f'<table class="nb-finetune-table" style="border-collapse:collapse;font-size:12px;color:{_FG};margin:4px 0;'
        f'width:100%">'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"
    )


def extras_tables_html(extras: dict[str, Any] | None) -> str:
    """The task's tables of the last evaluation (generations), each under its title."""
    out = []
    for name, entry in (extras or {}).items():
        if isinstance(entry, dict) and entry.get("kind") == "table":
            title = html.escape(str(entry.get("title") or name))
            out.append(f'<div style="font-size:12px;font-weight:600;margin-top:6px">{title}</div>')
            out.append(extras_table_html(entry))
    return "".join(out)


def _model_name(model: str) -> str:
    """The model as people name it: a hub id as is, a local directory by its last part (never the machine's path)."""
    text = str(model or "").rstrip("/")
    if text.startswith(("/", "~", ".")) or "\\" in text or text.count("/") > 1:
        return text.replace("\\", "/").split("/")[-1]
    return text


def _best_text(s: dict[str, Any]) -> str:
    best = s.get("best") or {}
    if not best:
        return ""
    names = [k for k in best if k.startswith("eval_") and k != "eval_loss"] or [k for k in best if k == "eval_loss"]
    if not names:
        return ""
    k = names[0]
    return f"best {metric_label(k)} {fmt_metric(best[k])} at step {best.get('step', 0):,}"


def _facts(s: dict[str, Any]) -> list[str]:
    total, step = s.get("total_steps") or 0, s.get("step") or 0
    out = [f"step {step:,}/{total:,}" if total else f"step {step:,}", f"epoch {s.get('epoch') or 0:.2f}"]
    if s.get("elapsed"):
        out.append(f"time {fmt_duration(s['elapsed'])}")
    if s.get("loss") is not None:
        out.append(f"train loss {fmt_metric(s['loss'])}")
    if s.get("lr"):
        out.append(f"lr {fmt_value(s['lr'])}")
    best = _best_text(s)
    if best:
        out.append(best)
    return out


def summary_text(name: str, s: dict[str, Any]) -> str:
    """The plain-text summary (text/plain of the final output)."""
    state = s.get("state") or ""
    lines = [f"{name}: {state}" + (f" ({s['reason']})" if s.get("reason") else "") + " · " + " · ".join(_facts(s))]
    metrics = s.get("metrics") or {}
    if metrics:
        lines.append("metrics: " + ", ".join(f"{metric_label(k)} {fmt_metric(v)}" for k, v in metrics.items()))
    rows = s.get("eval_rows") or []
    if rows:
        names = _metric_names(rows)
        lines.append(" | ".join(["step", "epoch", "train loss", *map(metric_label, names)]))
        for r in rows[-20:]:
            vals = [f"{r['step']}", f"{r.get('epoch') or 0:.2f}", fmt_metric(r.get("train_loss"))]
            vals += [fmt_metric(r["metrics"].get(n)) for n in names]
            lines.append(" | ".join(vals) + (" *best" if r.get("best") else ""))
    if s.get("error"):
        lines.append(f"error: {s['error']}")
    return "\n".join(lines)


def summary_html(name: str, s: dict[str, Any], *, run_dir: str = "") -> str:
    """Header, final status, metrics and the evaluation table of a run, as one static HTML block."""
    state = s.get("state") or ""
    colour = STATE_COLOURS.get(state, "#6b7b8c")
    reason = f" · {html.escape(str(s['reason']))}" if s.get("reason") else ""
    badge = (
        f'<span style="background:{colour};color:white;border-radius:9px;padding:1px 9px;font-size:12px">'
        f"{html.escape(state)}{reason}</span>"
    )
    facts = []
    if s.get("model"):
        facts.append(f'<span style="color:{_MUTED}">model</span> {html.escape(_model_name(s["model"]))}')
    if s.get("task"):
        facts.append(f'<span style="color:{_MUTED}">task</span> {html.escape(str(s["task"]))}')
    if s.get("device"):
        facts.append(f'<span style="color:{_MUTED}">device</span> {html.escape(str(s["device"]))}')
    if s.get("num_train"):
        facts.append(
            f'<span style="color:{_MUTED}">data</span> {s["num_train"]:,} train / {s.get("num_eval", 0):,} eval'
        )
    where = (
        f'<span style="color:{_MUTED}" title="{html.escape(run_dir)}">run directory</span> '
        f"<code>{html.escape(run_dir)}</code>"
        if run_dir
        else ""
    )
    metrics = s.get("metrics") or {}
    metric_line = " · ".join(
        f'<span style="color:{_MUTED}">{html.escape(metric_label(k))}</span> <b>{fmt_metric(v)}</b>'
        for k, v in metrics.items()
    )
    metric_div = f'<div style="font-size:12px">{metric_line}</div>' if metric_line else ""
    error = (
        f'<div style="color:{STATE_COLOURS["failed"]};font-size:12px">{html.escape(str(s["error"]))}</div>'
        if s.get("error")
        else ""
    )
    return (
        f'<div class="nb-finetune-summary" style="font-family:var(--jp-ui-font-family,sans-serif);color:{_FG};'
        f'font-size:13px;padding:4px 0">'
        f'<div style="display:flex;align-items:center;gap:10px;flex-wrap:wrap">'
        f'<b style="font-size:15px">{html.escape(name)}</b>{badge}'
        f'<span style="font-size:12px">{" · ".join(facts)}</span></div>'
        f'<div style="font-size:12px;margin-top:2px">{html.escape(" · ".join(_facts(s)))}'
        f"{' · ' + where if where else ''}</div>"
        f"{metric_div}{error}"
        f"{eval_table_html(s.get('eval_rows') or [])}{extras_tables_html(s.get('extras'))}</div>"
    )
