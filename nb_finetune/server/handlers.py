"""Authenticated REST handlers under `<base_url>nb-finetune/api/` (contract: notes/server_api.md).

    GET  runs                 {"runs": [Run, ...], "time": epoch_s}, newest first
    GET  runs/<id>            Run + "commands": the last 20 control.jsonl records, each with "acknowledged"
    POST runs/<id>/control    {"cmd": "stop"|"pause"|"resume"|"checkpoint"|"abort"|"set", "args": {...}} -> 202 {"seq", "id"}
    POST stop-all             {"scope": "server"|"all", "ids": [id, ...]} (both optional) -> {"stopped": [ids],
                              "skipped": [ids]}: stops the live runs of this server's kernels ("server", the default)
                              or every live run ("all"), only those in "ids" when given; "skipped" are the live runs
                              left alone because they belong to another process
    GET  schema               the config's JSON schema

A Run has "kernel_id": the id of this server's kernel that runs it, or null for a run of another process (a
terminal, another Jupyter server, another user), "lr" (the last logged learning rate) and "base_lr" (the base of
the schedule: the last applied `set`, else the config's).

Errors are `{"message": ...}` with 400 (bad body), 404 (unknown run id) or 409 (run not alive).
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import time
from typing import Any

import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join

from ..core.runs import append_command
from ..errors import FinetuneError
from .runs_view import COMMANDS, ID_RE, RunEntry, RunsView, clean_json, kernel_pids

__all__ = ["setup_handlers", "parse_control_body", "parse_stop_all_body", "BodyError"]

MAX_BODY = 16 * 1024
MAX_SET_FIELDS = 16
MAX_STOP_IDS = 1000
STOP_SCOPES = ("server", "all")


class BodyError(ValueError):
    """A request body the API refuses (400)."""


def _set_fields() -> tuple[dict[str, str], set[str]]:
    """(name or alias -> canonical name, live canonical names that `set` may change with a number)."""
    from ..core.config import FinetuneConfig, alias_table, live_fields

    live = {n for n in live_fields() if n != "freeze"}
    table = {k: v for k, v in alias_table(FinetuneConfig).items() if v in live}
    return table, live


def parse_control_body(body: bytes) -> tuple[str, dict[str, Any]]:
    """Validate a control request body; returns (cmd, args with canonical names). Raises BodyError."""
    if len(body) > MAX_BODY:
        raise BodyError(f"body is larger than {MAX_BODY} bytes")
    try:
        data = json.loads(body.decode("utf-8") or "null", parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as e:
        raise BodyError(f"body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise BodyError('body must be a JSON object such as {"cmd": "stop"}')
    extra = sorted(set(data) - {"cmd", "args"})
    if extra:
        raise BodyError(f"unknown field {extra[0]!r}: a body has 'cmd' and optional 'args'")
    cmd = data.get("cmd")
    if not isinstance(cmd, str) or cmd not in COMMANDS:
        raise BodyError(f"cmd: {_short(cmd)} is not one of {', '.join(COMMANDS)}")
    args = data.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise BodyError("args: must be an object")
    if cmd == "set":
        return cmd, _parse_set_args(args)
    if cmd == "stop":
        bad = sorted(set(args) - {"save"})
        if bad:
            raise BodyError(f"args.{_key(bad[0])}: stop takes only 'save' (true or false)")
        if "save" in args and not isinstance(args["save"], bool):
            raise BodyError("args.save: must be true or false")
        return cmd, dict(args)
    if args:
        raise BodyError(f"args.{_key(sorted(args)[0])}: '{cmd}' takes no arguments")
    return cmd, {}


def parse_stop_all_body(body: bytes) -> tuple[str, set[str] | None]:
    """Validate a stop-all body; returns (scope, the run ids to limit it to or None). Raises BodyError."""
    if len(body) > MAX_BODY:
        raise BodyError(f"body is larger than {MAX_BODY} bytes")
    try:
        data = json.loads(body.decode("utf-8") or "{}", parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as e:
        raise BodyError(f"body is not valid JSON: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise BodyError('body must be a JSON object such as {"scope": "server"}')
    extra = sorted(set(data) - {"scope", "ids"})
    if extra:
        raise BodyError(f"unknown field {_key(extra[0])!r}: a stop-all body has optional 'scope' and 'ids'")
    scope = data.get("scope", "server")
    if scope not in STOP_SCOPES:
        raise BodyError(f"scope: {_short(scope)} is not one of {', '.join(STOP_SCOPES)}")
    ids = data.get("ids")
    if ids is None:
        return scope, None
    if not isinstance(ids, list) or len(ids) > MAX_STOP_IDS:
        raise BodyError(f"ids: must be a list of at most {MAX_STOP_IDS} run ids")
    bad = [i for i in ids if not isinstance(i, str) or not ID_RE.match(i)]
    if bad:
        raise BodyError(f"ids: {_short(bad[0])} is not a run id")
    return scope, set(ids)


def _parse_set_args(args: dict[str, Any]) -> dict[str, Any]:
    from pydantic import ValidationError

    from ..core.config import FinetuneConfig

    if not args:
        raise BodyError("args: 'set' needs at least one field, e.g. {\"lr\": 1e-5}")
    if len(args) > MAX_SET_FIELDS:
        raise BodyError(f"args: at most {MAX_SET_FIELDS} fields")
    table, live = _set_fields()
    out: dict[str, Any] = {}
    for key, value in args.items():
        if key not in table:
            raise BodyError(f"args.{_key(key)}: not a field that can change during a run ({', '.join(sorted(live))})")
        name = table[key]
        if name in out:
            raise BodyError(f"args.{_key(key)}: '{name}' is given twice")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise BodyError(f"args.{_key(key)}: must be a finite number, got {_short(value)}")
        try:
            FinetuneConfig.model_validate({name: value})  # the schema's type and range checks
        except ValidationError as e:
            msg = e.errors()[0].get("msg", "invalid value") if e.errors() else "invalid value"
            raise BodyError(f"args.{_key(key)}: {value!r}: {msg}") from None
        out[name] = value
    return out


def _no_constant(name: str):
    raise ValueError(f"{name} is not allowed")


def _key(key: Any) -> str:
    s = str(key)
    return s if len(s) <= 40 else s[:37] + "..."


def _short(value: Any) -> str:
    s = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else repr(value)
    return s if len(s) <= 40 else s[:37] + "..."


class _Base(APIHandler):
    def initialize(self, view: RunsView) -> None:
        self.view = view

    def reply(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(clean_json(data), allow_nan=False))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = (kwargs.get("exc_info") or (None, None, None))[1]
        if isinstance(exc, tornado.web.HTTPError) and exc.log_message:
            # APIHandler would send the unformatted template; send the message itself
            message = exc.log_message % exc.args if exc.args else exc.log_message
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"message": message, "reason": exc.reason}))
            return
        super().write_error(status_code, **kwargs)

    async def off_loop(self, fn, *args, **kwargs):
        """Run file reading in a worker thread: a first read of many long runs must not stall the server."""
        return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args, **kwargs))

    def kernels(self) -> dict[int, str]:
        """pid -> kernel id of this server's kernels (read on the event loop, where the kernel manager lives)."""
        return kernel_pids(self.settings.get("kernel_manager"))

    def entry_or_404(self, run_id: str) -> RunEntry:
        entry = self.view.lookup(run_id)
        if entry is None:
            raise tornado.web.HTTPError(404, "no run with id %s", _short(run_id))
        return entry


class RunsHandler(_Base):
    @tornado.web.authenticated
    async def get(self) -> None:
        runs = await self.off_loop(self.view.list, kernels=self.kernels())
        self.reply({"runs": runs, "time": time.time()})


class RunHandler(_Base):
    @tornado.web.authenticated
    async def get(self, run_id: str) -> None:
        entry = self.entry_or_404(run_id)
        self.reply(await self.off_loop(self.view.describe, entry, with_commands=True, kernels=self.kernels()))


class ControlHandler(_Base):
    @tornado.web.authenticated
    async def post(self, run_id: str) -> None:
        entry = self.entry_or_404(run_id)
        try:
            cmd, args = parse_control_body(self.request.body or b"")
        except BodyError as e:
            raise tornado.web.HTTPError(400, "%s", str(e)) from None
        run = await self.off_loop(self.view.describe, entry)
        if not run["alive"]:
            raise tornado.web.HTTPError(409, "run '%s' is not running (%s)", run["name"], run["state"])
        try:
            seq = append_command(entry.run_dir, cmd, source="server", **args)
        except (OSError, FinetuneError) as e:
            raise tornado.web.HTTPError(409, "run '%s': cannot write its control file (%s)", run["name"], e) from None
        self.log.info("nb_finetune: %s -> run %s (%s), seq %d", cmd, run["name"], entry.id, seq)
        self.reply({"seq": seq, "id": entry.id}, status=202)


class StopAllHandler(_Base):
    @tornado.web.authenticated
    async def post(self) -> None:
        try:
            scope, ids = parse_stop_all_body(self.request.body or b"")
        except BodyError as e:
            raise tornado.web.HTTPError(400, "%s", str(e)) from None
        kernels = self.kernels()
        stopped, skipped = [], []
        for entry in await self.off_loop(self.view.entries):
            if ids is not None and entry.id not in ids:
                continue
            run = await self.off_loop(self.view.describe, entry, kernels=kernels)
            if not run["alive"]:
                continue
            if scope == "server" and run["kernel_id"] is None:
                skipped.append(entry.id)  # another process's run (a terminal, another server or user)
                continue
            try:
                append_command(entry.run_dir, "stop", source="server")
            except (OSError, FinetuneError) as e:
                self.log.warning("nb_finetune: cannot stop run %s: %s", entry.id, e)
                continue
            stopped.append(entry.id)
        self.log.info("nb_finetune: stop-all (%s): stopped %d, left %d alone", scope, len(stopped), len(skipped))
        self.reply({"stopped": stopped, "skipped": skipped})


class SchemaHandler(_Base):
    _schema: str | None = None

    @tornado.web.authenticated
    def get(self) -> None:
        if SchemaHandler._schema is None:
            from ..core.config import FinetuneConfig

            SchemaHandler._schema = json.dumps(clean_json(FinetuneConfig.json_schema()), default=str)
        self.set_header("Cache-Control", "no-store")
        self.finish(SchemaHandler._schema)


def setup_handlers(web_app) -> None:
    base = url_path_join(web_app.settings.get("base_url", "/"), "nb-finetune", "api")
    view = RunsView()
    kw = {"view": view}
    web_app.add_handlers(
        ".*$",
        [
            (url_path_join(base, "runs"), RunsHandler, kw),
            (url_path_join(base, "runs", r"([^/]+)"), RunHandler, kw),
            (url_path_join(base, "runs", r"([^/]+)", "control"), ControlHandler, kw),
            (url_path_join(base, "stop-all"), StopAllHandler, kw),
            (url_path_join(base, "schema"), SchemaHandler, kw),
        ],
    )
