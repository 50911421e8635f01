"""Pure parsing of the magic's line (no shell needed; tested on its own)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

from ..errors import FinetuneError

CELL_FLAGS = {
    "--wait": "block until the run ends (Ctrl-C: graceful stop with a checkpoint; twice: abort)",
    "--dry-run": "print the layer map, steps and a memory estimate; train nothing",
    "--resume": "continue this run from its last checkpoint (= resume_from: last)",
    "--overwrite": "replace the previous run directory of this name instead of writing NAME-2",
    "--paused": "show the panel but wait for its Start button (or NAME.start()); the settings can change until then",
    "--lr-find": "run only the LR range test on this cell's model and data, plot it (also: %%finetune lr_find NAME)",
    "--sweep": "run the cell's sweep: block as Optuna trials NAME/trial-000, ... (with --resume: continue it)",
}
LINE_COMMANDS = {
    "runs": "list runs (this kernel and others on this machine)",
    "show NAME": "show the run's panel again (after the output was cleared), rebuilt from its metrics",
    "stop NAME [--no-save]": "stop a run (checkpoint first unless --no-save)",
    "abort NAME": "stop a run at once, without a checkpoint",
    "pause NAME": "pause a run at the next micro-batch",
    "resume NAME": "un-pause a paused run",
    "set NAME key=value ...": "change live fields (lr, weight_decay, epochs, ...) at the next optimizer step",
    "freeze NAME SPEC": "change which layers train (same specs as the freeze key)",
    "checkpoint NAME": "write a checkpoint at the next optimizer step",
    "wait NAME": "block until the run ends",
    "schema": "print the config reference",
    "lr_find NAME": "LR range test for a run of this kernel that has not started (e.g. from %%finetune --paused)",
    "compare NAME NAME ...": "overlay the loss and eval curves of runs (of any process; names or run directories)",
}


@dataclass
class CellArgs:
    name: str | None = None
    wait: bool = False
    dry_run: bool = False
    resume: bool = False
    overwrite: bool = False
    paused: bool = False
    lr_find: bool = False
    sweep: bool = False
    help: bool = False


@dataclass
class LineCommand:
    command: str
    name: str | None = None
    args: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)


def _split(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError as e:
        raise FinetuneError(f"%finetune: cannot parse {line!r}: {e}") from None


def parse_cell_line(line: str) -> CellArgs:
    """`%%finetune NAME --wait` -> CellArgs(name='NAME', wait=True)."""
    out = CellArgs()
    toks = _split(line)
    if len(toks) > 1 and toks[0] in ("lr_find", "sweep"):  # `%%finetune lr_find NAME`: a verb, then the name
        setattr(out, toks[0], True)
        toks = toks[1:]
    for tok in toks:
        if tok in ("-h", "--help"):
            out.help = True
        elif tok.startswith("-"):
            key = tok.lstrip("-").replace("-", "_")
            if tok not in CELL_FLAGS:
                import difflib

                close = difflib.get_close_matches(tok, list(CELL_FLAGS), n=1)
                hint = f" Did you mean {close[0]}?" if close else ""
                raise FinetuneError(
                    f"%%finetune: unknown option {tok}.{hint} Options: {', '.join(CELL_FLAGS)}. "
                    "Config keys go in the cell body."
                )
            setattr(out, key, True)
        elif out.name is None:
            if not tok.isidentifier():
                raise FinetuneError(
                    f"%%finetune: run name {tok!r} must be a Python identifier (letters, digits, _): "
                    "the run is bound to a variable of that name"
                )
            out.name = tok
        else:
            raise FinetuneError(f"%%finetune: unexpected {tok!r} after the run name; config keys go in the cell body")
    return out


def parse_line(line: str) -> LineCommand:
    """`%finetune set sentiment lr=1e-5` -> LineCommand('set', 'sentiment', options={'lr': 1e-5})."""
    toks = _split(line)
    if not toks or toks[0] in ("-h", "--help", "help"):
        return LineCommand("help")
    cmd, rest = toks[0], toks[1:]
    known = {c.split()[0] for c in LINE_COMMANDS}
    if cmd not in known:
        import difflib

        close = difflib.get_close_matches(cmd, sorted(known), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise FinetuneError(
            f"%finetune: unknown command '{cmd}'.{hint} Commands: {', '.join(sorted(known))}. "
            "To start a run use the cell magic %%finetune NAME."
        )
    if cmd in ("runs", "schema"):
        return LineCommand(cmd)
    if cmd == "compare":
        if not rest:
            raise FinetuneError("%finetune compare: name the runs, e.g. %finetune compare base lora big-lr")
        return LineCommand(cmd, None, list(rest))
    if not rest:
        raise FinetuneError(f"%finetune {cmd}: name the run, e.g. %finetune {cmd} sentiment")
    name, rest = rest[0], rest[1:]
    out = LineCommand(cmd, name)
    if cmd == "stop":
        for t in rest:
            if t != "--no-save":
                raise FinetuneError(f"%finetune stop: unexpected {t!r} (only --no-save)")
            out.options["save"] = False
    elif cmd == "set":
        if not rest:
            raise FinetuneError("%finetune set: give key=value pairs, e.g. %finetune set sentiment lr=1e-5")
        for t in rest:
            if "=" not in t:
                raise FinetuneError(f"%finetune set: {t!r} is not key=value")
            k, v = t.split("=", 1)
            out.options[k.strip()] = scalar(v.strip())
    elif cmd == "freeze":
        if not rest:
            raise FinetuneError("%finetune freeze: give a spec, e.g. %finetune freeze sentiment bottom 4")
        out.options["spec"] = scalar(" ".join(rest))
    elif rest:
        raise FinetuneError(f"%finetune {cmd}: unexpected {' '.join(rest)!r}")
    return out


def scalar(text: str):
    """A value as the cell body would read it (YAML 1.2 scalars: `1e-5` is a number); the CLI parses its
    `key=value` arguments with it too."""
    from ..core.config import parse_cell

    data, _ = parse_cell(f"v: {text}", first_line=1)
    return data["v"]


def help_text() -> str:
    lines = ["%%finetune [NAME] [options]   then the config as YAML lines in the cell body", ""]
    lines += [f"  {k:<14} {v}" for k, v in CELL_FLAGS.items()]
    lines += ["", "%finetune COMMAND ...", ""]
    lines += [f"  {k:<26} {v}" for k, v in LINE_COMMANDS.items()]
    lines += ["", "Config keys: %finetune schema, or nb_finetune.FinetuneConfig.json_schema()"]
    return "\n".join(lines)
