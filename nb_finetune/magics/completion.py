"""Kernel-side completion inside `%%finetune` cells, driven by the config's schema.

Keys complete to `key: ` (`max_st` -> `max_steps: `), aliases are offered with the canonical name they stand for,
values complete after `key: ` for choices (`precision: ` -> auto, fp32, bf16, fp16), booleans and a few known
words, `task: ` offers `auto` and every registered task (names, then aliases, each with its title), keys nest under
`data:` / `early_stopping:`, and `{{` completes notebook variable names. A cell that names its task (`task: ner`)
is offered only the keys that task reads besides the common ones (the schema's `tasks=`); without one (or with
`task: auto`) every key is offered, the task-specific ones after the common ones. Each completion's
`type` carries the field's kind and help text, which JupyterLab shows beside the item (and as its tooltip).

Works in every frontend that asks the kernel for completions (JupyterLab, Notebook, Colab, VS Code):
- IPython >= 8.6: a Matcher API v2 matcher (`context_matcher`) that sees the whole cell, returns typed
  completions and, where it has any, suppresses Python's (a YAML cell has no Python names to complete);
- older IPython (7.34 on Colab), whose matchers see only the current line and cannot silence Jedi: the
  completer instance's `completions(cell, offset)` (what ipykernel calls) is wrapped, and answers with the same
  typed completions inside a `%%finetune` body, handing every other request to IPython.

Cheap: the schema table is built once from `FinetuneConfig` (pydantic + yaml, never torch).
"""

from __future__ import annotations

import enum
import functools
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Item",
    "finetune_completions",
    "make_context_matcher",
    "install",
    "uninstall",
]

MATCHER_ID = "nb_finetune.finetune_cell"
_TYPE_MAX = 90  # characters of the `type` text a completion carries
_MAGIC = re.compile(r"^\s*%%finetune(?:\s|$)")
_KEY_POS = re.compile(r"^(?P<indent>[ \t]*)(?P<frag>[A-Za-z_][A-Za-z0-9_]*)?$")
_VALUE_POS = re.compile(
    r"^(?P<indent>[ \t]*)(?P<key>[A-Za-z_][A-Za-z0-9_]*)[ \t]*:(?P<space>[ \t]*)(?P<frag>[^#{}\[\]]*)$"
)
_VAR_POS = re.compile(r"\{\{[ \t]*(?P<frag>[A-Za-z_][A-Za-z0-9_]*)?$")
_PARENT = re.compile(r"^(?P<indent>[ \t]*)(?P<key>[A-Za-z_][A-Za-z0-9_]*)[ \t]*:[ \t]*(?:#.*)?$")
_KEY_LINE = re.compile(r"^(?P<indent>[ \t]*)(?P<key>[A-Za-z_][A-Za-z0-9_]*)[ \t]*:")
_TASK_LINE = re.compile(r"^task[ \t]*:[ \t]*(?P<value>[^#]*)")
# words a field accepts besides its type (only those the schema's own help text documents)
_VALUE_HINTS = {
    "resume_from": ("last", "best"),
    "eval_every": ("epoch",),
    "save_every": ("epoch",),
    "unfreeze_every": ("epoch",),
    "freeze": ("all_but_head",),
}


@dataclass(frozen=True)
class Item:
    """One completion: the text that replaces the fragment, and the short description shown beside it."""

    text: str
    type: str


@dataclass(frozen=True)
class _Field:
    name: str
    kind: str
    help: str
    live: bool
    aliases: tuple[str, ...]
    values: tuple[str, ...]
    default: str | None
    nested: dict[str, _Field] | None


# --------------------------------------------------------------------------------------------- schema
def _unwrap(annotation) -> tuple[list[Any], bool]:
    """Members of an Optional/Union annotation (None dropped), and whether None was one of them."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        args = typing.get_args(annotation)
        return [a for a in args if a is not type(None)], type(None) in args
    return [annotation], False


def _describe(annotation) -> tuple[str, tuple[str, ...], type | None]:
    """(kind word, accepted literal values, nested model) of a field's annotation."""
    from pydantic import BaseModel

    members, optional = _unwrap(annotation)
    kinds, values, nested = [], [], None
    for a in members:
        origin = typing.get_origin(a)
        if isinstance(a, type) and issubclass(a, enum.Enum):
            kinds.append("choice")
            values += [str(m.value) for m in a]
        elif origin is typing.Literal:
            kinds.append("choice")
            values += [str(v).lower() if isinstance(v, bool) else str(v) for v in typing.get_args(a)]
        elif a is bool:
            kinds.append("bool")
            values += ["true", "false"]
        elif isinstance(a, type) and issubclass(a, BaseModel):
            kinds.append("mapping")
            nested = a
        elif a is int or a is float or a is str:
            kinds.append(a.__name__)
        elif origin in (list, tuple) or a in (list, tuple):
            kinds.append("list")
        elif origin is dict or a is dict:
            kinds.append("mapping")
        else:
            kinds.append("any")
    if optional:
        values.append("null")
    kind = " | ".join(dict.fromkeys(kinds)) if kinds else "any"
    return kind, tuple(dict.fromkeys(values)), nested


def _fields_of(model) -> dict[str, _Field]:
    out = {}
    for name, f in model.model_fields.items():
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        kind, values, nested = _describe(f.annotation)
        hints = tuple(v for v in _VALUE_HINTS.get(name, ()) if v not in values)
        default = f.default
        if isinstance(default, enum.Enum):
            default = default.value
        default_text = None
        if f.default_factory is None and default is not None and not callable(default):
            default_text = str(default).lower() if isinstance(default, bool) else str(default)
        out[name] = _Field(
            name=name,
            kind=kind,
            help=" ".join((f.description or "").split()),
            live=bool(extra.get("live")),
            aliases=tuple(extra.get("aliases", ())),
            values=hints + values,
            default=default_text,
            nested=_fields_of(nested) if nested is not None else None,
        )
    return out


@functools.lru_cache(maxsize=1)
def _schema() -> dict[str, _Field]:
    from ..core.config import FinetuneConfig

    return _fields_of(FinetuneConfig)


@functools.lru_cache(maxsize=1)
def _task_specific() -> dict[str, tuple[str, ...]]:
    """Dotted config key (`doc_stride`, `data.tokens`) -> the tasks that read it; keys not here are common."""
    from ..core.config import task_specific_keys

    return {k: tuple(v) for k, v in task_specific_keys().items()}


def _task_values() -> list[tuple[str, str, str]]:
    """(value, canonical name, type text) for `task: `: auto, every registered name, then every alias."""
    from ..core.tasks.base import registry

    tasks = registry()
    values = [("auto", "auto", "picked from the data (default)")]
    values += [(name, name, cls.title or name) for name, cls in tasks.items()]
    seen = {v for v, _, _ in values}
    for name, cls in tasks.items():
        for a in cls.aliases:
            if a not in seen:
                seen.add(a)
                values.append((a, name, f"alias of {name} · {cls.title or name}"))
    return values


def _cell_task(lines: list[str], start: int, row: int) -> str | None:
    """The canonical task a cell's top-level `task:` line names; None for auto, none, or one not known (yet)."""
    from ..core.tasks.base import canonical_task
    from ..errors import ConfigError

    for i in range(start + 1, len(lines)):
        m = _TASK_LINE.match(lines[i]) if i != row else None
        if m is None:
            continue
        value = m.group("value").strip().strip("'\"").strip()
        if not value:
            continue
        try:
            name = canonical_task(value)
        except ConfigError:  # a placeholder, a typo or a half-typed name: no reason to hide keys
            return None
        return None if name == "auto" else name
    return None


def _keys(fields: dict[str, _Field]) -> dict[str, _Field]:
    """name or alias -> field."""
    table = {}
    for f in fields.values():
        table[f.name] = f
        for a in f.aliases:
            table.setdefault(a, f)
    return table


def _short(text: str) -> str:
    return text if len(text) <= _TYPE_MAX else text[: _TYPE_MAX - 1].rstrip() + "…"


def _key_type(key: str, f: _Field) -> str:
    head = f"alias of {f.name}" if key != f.name else f.kind + (", live" if f.live else "")
    return _short(f"{head} · {f.help}" if f.help else head)


# --------------------------------------------------------------------------------------------- the matcher
def _cell_start(lines: list[str]) -> int | None:
    """Index of the `%%finetune` line when it is the cell's first non-blank line, else None."""
    for i, line in enumerate(lines):
        if line.strip():
            return i if _MAGIC.match(line) else None
    return None


def _parent(lines: list[str], start: int, row: int, indent: int) -> str | None | bool:
    """The key an indented line belongs to (None at top level); False when it is nested in something unknown."""
    if indent == 0:
        return None
    for i in range(row - 1, start, -1):
        text = lines[i]
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        ind = len(text) - len(text.lstrip(" \t"))
        if ind >= indent:
            continue
        m = _PARENT.match(text)
        return m.group("key") if m and ind == 0 else False
    return False


def _siblings(lines: list[str], start: int, row: int, indent: int) -> set[str]:
    """Keys already given at this indentation in the same mapping (the cursor's own line excluded)."""
    found = set()
    for step in (-1, 1):
        i = row + step
        while start < i < len(lines):
            text = lines[i]
            if text.strip() and not text.lstrip().startswith("#"):
                ind = len(text) - len(text.lstrip(" \t"))
                if ind < indent:
                    break
                m = _KEY_LINE.match(text)
                if m and ind == indent:
                    found.add(m.group("key"))
            i += step
    return found


def finetune_completions(
    full_text: str, cursor_line: int, cursor_pos: int, namespace: dict[str, Any] | None = None
) -> tuple[str, list[Item]] | None:
    """Completions at (cursor_line, cursor_pos) of a cell, or None when this is not a place to complete.

    Returns (fragment, items): `fragment` is the text before the cursor the items replace (a suffix of the line
    up to the cursor); items are ordered (prefix matches before substring matches, canonical keys before
    aliases).

    Example:
        >>> frag, items = finetune_completions("%%finetune\\nmax_st", 1, 6)
        >>> frag, items[0].text
        ('max_st', 'max_steps: ')
    """
    lines = full_text.split("\n")
    start = _cell_start(lines)
    if start is None or not (start < cursor_line < len(lines)):
        return None
    before = lines[cursor_line][:cursor_pos]
    if "#" in before:
        return None  # a comment (or a value with a '#', which YAML reads as one)
    top = _schema()

    var = _VAR_POS.search(before)
    if var is not None:
        frag = var.group("frag") or ""
        names = sorted(k for k in (namespace or {}) if k.startswith(frag) and not k.startswith("_"))
        items = [Item(k, _short(f"variable · {type(namespace[k]).__name__}")) for k in names[:200]]
        return frag, items

    m = _KEY_POS.match(before)
    if m is not None:
        indent, frag = len(m.group("indent")), m.group("frag") or ""
        parent = _parent(lines, start, cursor_line, indent)
        if parent is False:
            return None
        if parent is None:
            fields = top
        else:
            pf = _keys(top).get(parent)
            if pf is None or pf.nested is None:
                return None
            fields = pf.nested
        table = _keys(fields)
        given = {table[k].name for k in _siblings(lines, start, cursor_line, indent) if k in table}
        task = _cell_task(lines, start, cursor_line)
        specific = _task_specific()
        prefix = "" if parent is None else f"{_keys(top)[parent].name}."
        low = frag.lower()
        ranked = []
        for key, f in table.items():
            if f.name in given and key != frag:
                continue
            users = specific.get(prefix + f.name)
            if task is not None and users is not None and task not in users:
                continue  # the cell's task does not read this key
            k = key.lower()
            rank = 0 if k.startswith(low) else 2 if low in k else None
            if rank is None:
                continue
            # no task named: keys only some tasks read come after the common ones
            ranked.append((rank + (key != f.name), task is None and users is not None, key, f))
        ranked.sort(key=lambda t: t[:3])
        # a mapping-valued key opens a nested block: `data:` then the next line
        items = [Item(f"{key}:" if f.nested is not None else f"{key}: ", _key_type(key, f)) for *_, key, f in ranked]
        return frag, items

    m = _VALUE_POS.match(before)
    if m is not None:
        indent, key, frag = len(m.group("indent")), m.group("key"), m.group("frag")
        parent = _parent(lines, start, cursor_line, indent)
        if parent is False:
            return None
        fields = top if parent is None else getattr(_keys(top).get(parent), "nested", None)
        f = _keys(fields).get(key) if fields else None
        pad = "" if m.group("space") else " "  # `precision:` + `bf16` would not be YAML
        if parent is None and f is not None and f.name == "task":
            return frag, _task_items(frag, pad)
        if f is None or not f.values:
            return None
        low = frag.lower()
        items = []
        for v in f.values:
            if v.lower().startswith(low) and v != frag:
                label = f"{f.name} value" + (" (default)" if v == f.default else "")
                items.append(Item(pad + v, _short(label)))
        return frag, items
    return None


def _task_items(frag: str, pad: str) -> list[Item]:
    """`task: ` values matching `frag` at the start or at a word (`class` -> text-classification): names first."""
    low = frag.strip().lower().replace("_", "-")
    ranked = []
    for order, (value, name, text) in enumerate(_task_values()):
        if value == frag:
            continue
        rank = 0 if value.startswith(low) else 1 if any(w.startswith(low) for w in value.split("-")[1:]) else None
        if rank is not None:
            ranked.append((value != name, rank, order, Item(pad + value, _short(text))))
    ranked.sort(key=lambda t: t[:3])
    return [t[-1] for t in ranked]


# --------------------------------------------------------------------------------------------- IPython glue
def make_context_matcher(shell=None):
    """Matcher API v2 (IPython >= 8.6): sees the whole cell, returns typed completions."""
    from IPython.core.completer import SimpleCompletion, context_matcher

    @context_matcher(priority=100, identifier=MATCHER_ID)
    def finetune_cell_matcher(context):
        result = finetune_completions(
            context.full_text,
            context.cursor_line,
            context.cursor_position,
            getattr(shell, "user_ns", None),
        )
        if result is None:
            return {"completions": [], "suppress": False}
        fragment, items = result
        return {
            "completions": [SimpleCompletion(i.text, type=i.type) for i in items],
            "matched_fragment": fragment,
            "suppress": True,  # Python names mean nothing in a YAML cell
            "ordered": True,
        }

    return finetune_cell_matcher


class _CellCompletions:
    """Older IPython (< 8.6): wraps `Completer.completions` on one completer instance.

    IPython 7's matchers see only the current line (so they cannot tell a `%%finetune` cell) and cannot suppress
    Jedi's Python names; `completions(cell, offset)`, which ipykernel calls for every complete_request, sees the
    whole cell. Inside a `%%finetune` body with something to offer, the wrapper answers with typed `Completion`s
    itself; everywhere else it hands the call to the completer untouched.
    """

    matcher_identifier = MATCHER_ID

    def __init__(self, completer, shell=None):
        self.completer = completer
        self.shell = shell
        self.original = completer.__dict__.get("completions")  # an instance attribute someone else set, if any
        self.bound = completer.completions

    def __call__(self, text, offset, *args, **kwargs):
        ours = self.ours(text, offset)
        if ours is None:
            return self.bound(text, offset, *args, **kwargs)
        return iter(ours)

    def ours(self, text: str, offset: int) -> list | None:
        offset = min(max(int(offset), 0), len(text))
        before = text[:offset]
        row, col = before.count("\n"), offset - (before.rfind("\n") + 1)
        result = finetune_completions(text, row, col, getattr(self.shell, "user_ns", None))
        if result is None or not result[1]:
            return None
        from IPython.core.completer import Completion, provisionalcompleter

        fragment, items = result
        start = offset - len(fragment)
        with provisionalcompleter():  # what ipykernel does around this call; silences the provisional-API warning
            return [Completion(start, offset, i.text, type=i.type, _origin=MATCHER_ID, signature="") for i in items]

    def restore(self) -> None:
        if self.completer.__dict__.get("completions") is self:
            if self.original is None:
                del self.completer.completions
            else:
                self.completer.completions = self.original


def _has_context_matcher() -> bool:
    try:
        from IPython.core.completer import SimpleCompletion, context_matcher  # noqa: F401
    except ImportError:
        return False
    return True


def install(shell, api: str | None = None) -> None:
    """Register the completion on `shell` (idempotent). `api`: "v2", "legacy" or None (the best available)."""
    completer = getattr(shell, "Completer", None)
    if completer is None:
        return
    uninstall(shell)
    api = api or ("v2" if _has_context_matcher() else "legacy")
    if api == "v2":
        completer.custom_matchers.insert(0, make_context_matcher(shell))
    else:
        completer.completions = _CellCompletions(completer, shell)


def uninstall(shell) -> None:
    completer = getattr(shell, "Completer", None)
    if completer is None:
        return
    wrapper = completer.__dict__.get("completions")
    if isinstance(wrapper, _CellCompletions):
        wrapper.restore()
    completer.custom_matchers[:] = [
        m for m in completer.custom_matchers if getattr(m, "matcher_identifier", None) != MATCHER_ID
    ]
