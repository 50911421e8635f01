"""What the runs API reports about each run, read cheaply from the run directories (the sidebar polls every ~2 s).

Runs are found only through the per-user index (`nb_finetune.core.runs.index_dir()`) and addressed by the index
entry's file stem; nothing a client sends is ever joined into a path. An entry is used only when it is
consistent: its stem is the sha1 of its `run_dir` (as `RunDir.register` writes it), `run_dir` is an absolute,
symlink-free path to a real directory, and the run's files there are regular files, not symlinks.

`metrics.jsonl` is read incrementally: each poll reads only the bytes appended since the last one (nothing when
its size and mtime are unchanged), and a first read of a very long file starts from its tail.

A run belongs to this server when its process is one of the server's kernels or a descendant of one (a kernel
started through a wrapper, Accelerate's child processes): `kernel_pids` lists the kernels' process ids from the
kernel manager, `kernel_owner` walks a run's parent processes up to one of them. "Stop all" stops only those by
default, and the status bar follows only those.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import os
import re
import socket
import stat
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from ..core import records
from ..core.controls import COMMANDS as _ALL_COMMANDS
from ..core.controls import FINAL_STATES
from ..core.events import ControlApplied, EvalEnded, Logged, RunStarted
from ..core.runs import ACTIVE_STATES, RunDir, index_dir, read_commands

__all__ = ["ID_RE", "COMMANDS", "RunEntry", "RunsView", "clean_json", "kernel_owner", "kernel_pids"]

ID_RE = re.compile(r"^[0-9a-f]{16}$")
COMMANDS = tuple(c for c in _ALL_COMMANDS if c != "freeze")  # the API's commands: freeze specs stay in Python
RUN_FILES = ("status.json", "metrics.jsonl", "control.jsonl", "config.yaml")
HISTORY_POINTS = 60  # loss_history length sent to the sparkline
_KEEP_LOSSES = 2048  # losses kept per run (evenly thinned beyond this)
_RATE_WINDOW = 20  # log events the step rate (ETA) is measured over
_MAX_TAIL = 512 << 10  # first read of a long metrics.jsonl parses its last 512 KiB ...
_PREFIX_SAMPLES = 256  # ... plus this many log lines sampled evenly before that (the sparkline's early part)
_EVAL_NEEDLE = records.EVAL_NEEDLE  # ... plus every eval line (found without parsing the rest)
_CONTROL_NEEDLE = b'"event": "ControlApplied"'  # ... and every applied command (a `set lr` long ago still counts)
_SCAN_CHUNK = 4 << 20
_MAX_SMALL_FILE = 1 << 20  # config.yaml / status.json larger than this are ignored
_RECENT_COMMANDS = 20
_MAX_ANCESTORS = 16  # parent processes walked up from a run's pid to find this server's kernel


def clean_json(value: Any) -> Any:
    """Non-finite floats -> None, recursively: the browser's JSON.parse refuses NaN and Infinity."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    return value


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _positive(value: Any) -> float | None:
    """A finite number > 0, else None (a log record without an lr decodes to 0.0: unknown, not zero)."""
    value = _finite(value)
    return value if value is not None and value > 0 else None


def _is_regular_or_absent(path: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return True
    except OSError:
        return False


def _read_small(path: str) -> bytes | None:
    """The file's bytes, never through a symlink; None when absent, not a regular file or too large."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_SMALL_FILE:
            return None
        return f.read(_MAX_SMALL_FILE + 1)


def kernel_pids(kernel_manager: Any) -> dict[int, str]:
    """Process id -> kernel id of the kernels `kernel_manager` (the server's MappingKernelManager) runs locally.

    jupyter_client >= 7 keeps the kernel's process in its provisioner (`provisioner.pid`, `provisioner.process`);
    older versions in `kernel`. Kernels without a local process (a gateway, a remote provisioner) are left out.
    """
    out: dict[int, str] = {}
    if kernel_manager is None:
        return out
    try:
        ids = list(kernel_manager.list_kernel_ids())
    except Exception:  # a kernel manager of another kind: no kernel is ours then, nothing breaks
        return out
    for kid in ids:
        try:
            km = kernel_manager.get_kernel(kid)
        except KeyError:  # shut down between the two calls
            continue
        prov = getattr(km, "provisioner", None)
        for pid in (
            getattr(prov, "pid", None),
            getattr(getattr(prov, "process", None), "pid", None),
            getattr(getattr(km, "kernel", None), "pid", None),
        ):
            if isinstance(pid, int) and not isinstance(pid, bool) and pid > 1:
                out[pid] = str(kid)
                break
    return out


def _parent_pid(pid: int) -> int | None:
    """The parent of process `pid` (Linux /proc, else psutil when installed); None when unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ")"
        return int(data[data.rindex(b")") + 2 :].split()[1])
    except (OSError, ValueError, IndexError):
        if os.path.isdir("/proc/self"):
            return None  # a /proc system: the process is gone or not ours to read
    try:
        import psutil
    except ImportError:
        return None
    try:
        return psutil.Process(pid).ppid()
    except Exception:  # gone, or access denied
        return None


def kernel_owner(pid: Any, kernels: dict[int, str]) -> str | None:
    """The id of the kernel whose process is `pid` or one of its ancestors; None when no kernel of `kernels` is."""
    if not kernels or isinstance(pid, bool) or not isinstance(pid, int):
        return None
    seen: set[int] = set()
    while pid > 1 and pid not in seen and len(seen) < _MAX_ANCESTORS:
        if pid in kernels:
            return kernels[pid]
        seen.add(pid)
        parent = _parent_pid(pid)
        if parent is None:
            return None
        pid = parent
    return None


class RunEntry:
    """One validated index entry."""

    __slots__ = ("id", "run_dir", "entry")

    def __init__(self, run_id: str, run_dir: str, entry: dict[str, Any]):
        self.id = run_id
        self.run_dir = run_dir
        self.entry = entry

    def file(self, name: str) -> str:
        assert name in RUN_FILES
        return os.path.join(self.run_dir, name)


def validate_entry(run_id: str, entry: Any) -> RunEntry | None:
    """The entry when it is safe to use, else None (the run is then unknown to the API)."""
    if not ID_RE.match(run_id) or not isinstance(entry, dict):
        return None
    run_dir = entry.get("run_dir")
    if not isinstance(run_dir, str) or not run_dir or "\x00" in run_dir or not os.path.isabs(run_dir):
        return None
    # the index names an entry by the sha1 of its resolved run_dir: an edited or swapped entry does not match
    if hashlib.sha1(run_dir.encode()).hexdigest()[:16] != run_id:
        return None
    # symlink-free and normalised: no component of the path may be a link or `..`
    if os.path.realpath(run_dir) != run_dir:
        return None
    try:
        if not stat.S_ISDIR(os.lstat(run_dir).st_mode):
            return None
    except OSError:
        return None
    if not all(_is_regular_or_absent(os.path.join(run_dir, f)) for f in RUN_FILES):
        return None
    return RunEntry(run_id, run_dir, entry)


class _MetricsSummary:
    """What the API needs from metrics.jsonl, updated line by line."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.steps: list[float] = []  # the step of each kept loss
        self.stride = 1  # keep every `stride`-th loss once the list would exceed _KEEP_LOSSES
        self.seen = 0
        self.last_log: Logged | None = None
        self.window: deque[tuple[float, float]] = deque(maxlen=_RATE_WINDOW)  # (time, step) at log events
        self.best_flagged: EvalEnded | None = None  # the last evaluation the loop marked is_best
        self.evals = 0
        self.extremes: dict[str, tuple[float, float]] = {}  # metric -> (min, max) over evaluations
        self.base_lr: float | None = None  # the lr of the last `set` the loop applied (the schedule's new base)

    def add(self, rec: dict[str, Any]) -> None:
        """One metrics.jsonl record, decoded by the run registry's codec."""
        e = records.decode(rec)
        if isinstance(e, Logged):
            self.last_log = e
            t, step = _finite(e.time), _finite(e.step)
            if t is not None and step is not None:
                if self.window and step < self.window[-1][1]:
                    self.window.clear()
                self.window.append((t, step))
            loss = _finite(e.loss)
            if loss is not None:
                self.add_loss(step if step is not None else float(self.seen), loss)
        elif isinstance(e, EvalEnded):
            self.evals += 1
            if e.is_best:
                self.best_flagged = e
            for k, v in e.metrics.items():
                v = _finite(v)
                if v is not None:
                    lo, hi = self.extremes.get(k, (v, v))
                    self.extremes[k] = (min(lo, v), max(hi, v))
        elif isinstance(e, ControlApplied) and e.command == "set" and e.ok:
            lr = _finite(e.args.get("lr", e.args.get("learning_rate"))) if isinstance(e.args, dict) else None
            if lr is not None and lr > 0:
                self.base_lr = lr
        elif isinstance(e, RunStarted) or (isinstance(e, ControlApplied) and e.command in ("pause", "resume")):
            self.window.clear()  # a resumed or paused run: the rate starts over

    def add_loss(self, step: float, loss: float) -> None:
        if self.seen % self.stride == 0:
            self.losses.append(loss)
            self.steps.append(step)
            if len(self.losses) > _KEEP_LOSSES:
                self.losses, self.steps = self.losses[::2], self.steps[::2]
                self.stride *= 2
        self.seen += 1

    def steps_per_s(self) -> float | None:
        if len(self.window) < 2:
            return None
        (t0, s0), (t1, s1) = self.window[0], self.window[-1]
        if t1 <= t0 or s1 <= s0:
            return None
        return (s1 - s0) / (t1 - t0)

    def best(self, metric: str) -> dict[str, Any] | None:
        flagged = self.best_flagged.metrics.get(metric) if self.best_flagged is not None else None
        if _finite(flagged) is not None:
            return {"name": metric, "value": float(flagged)}
        if metric in self.extremes:
            lo, hi = self.extremes[metric]
            return {"name": metric, "value": lo if "loss" in metric else hi}
        return None

    def history(self, points: int = HISTORY_POINTS) -> list[float]:
        """`points` losses evenly spaced in steps (by position when the steps do not increase)."""
        n = len(self.losses)
        if n <= points:
            return list(self.losses)
        steps = self.steps
        if steps[-1] > steps[0] and all(a <= b for a, b in zip(steps, steps[1:])):
            out = []
            for i in range(points):
                target = steps[0] + i * (steps[-1] - steps[0]) / (points - 1)
                j = min(bisect.bisect_left(steps, target), n - 1)
                if j > 0 and target - steps[j - 1] < steps[j] - target:
                    j -= 1
                out.append(self.losses[j])
            return out
        return [self.losses[round(i * (n - 1) / (points - 1))] for i in range(points)]


class _MetricsTail:
    """Incremental reader of one metrics.jsonl."""

    def __init__(self) -> None:
        self.key: tuple[int, int, int] | None = None  # (inode, size, mtime_ns) at the last read
        self.offset = 0
        self.summary = _MetricsSummary()

    def update(self, path: str) -> _MetricsSummary:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            self.__init__()
            return self.summary
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                self.__init__()
                return self.summary
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
            if key == self.key:
                return self.summary
            if self.key is None or self.key[0] != st.st_ino or st.st_size < self.offset:
                self.__init__()  # new or rewritten file
            start = self.offset
            skip_partial = False
            if st.st_size - start > _MAX_TAIL:
                start, skip_partial = st.st_size - _MAX_TAIL, True
            f.seek(start)
            chunk = f.read(st.st_size - start)
            if skip_partial:  # the tail starts after the line it cuts; everything before is scanned, not parsed
                nl = chunk.find(b"\n")
                chunk, start = (chunk[nl + 1 :], start + nl + 1) if nl >= 0 else (b"", st.st_size)
                self._scan_prefix(f, start)
            end = chunk.rfind(b"\n")
            complete = chunk[: end + 1] if end >= 0 else b""
            self.offset = start + len(complete)
            for line in complete.splitlines():
                rec = records.loads(line) if line.strip() else None
                if rec is not None:
                    self.summary.add(rec)
            # a half-written last line is read again next time: remember the size only up to the complete part
            self.key = key if self.offset == st.st_size else (st.st_ino, -1, -1)
        return self.summary

    def _scan_prefix(self, f, end: int) -> None:
        """The part of a long file before the tail: every eval line, and log lines sampled evenly (for losses)."""
        samples = []
        for k in range(_PREFIX_SAMPLES):
            f.seek(k * end // _PREFIX_SAMPLES)
            chunk = f.read(4096)
            nl = chunk.find(b"\n")
            nl2 = chunk.find(b"\n", nl + 1) if nl >= 0 else -1
            if nl2 > nl and (k * end // _PREFIX_SAMPLES) + nl2 < end:
                e = records.decode(records.loads(chunk[nl + 1 : nl2]))
                if isinstance(e, Logged):
                    samples.append(e)
        found: list[tuple[int, dict[str, Any]]] = []  # (offset, record) of eval and control lines
        f.seek(0)
        pos, carry = 0, b""
        while pos < end:
            start = pos - len(carry)
            block = carry + f.read(min(_SCAN_CHUNK, end - pos))
            pos = f.tell()
            cut = block.rfind(b"\n") + 1
            block, carry = block[:cut], block[cut:]
            for needle in (_EVAL_NEEDLE, _CONTROL_NEEDLE):
                i = block.find(needle)
                while i >= 0:
                    a, b = block.rfind(b"\n", 0, i) + 1, block.find(b"\n", i)
                    rec = records.loads(block[a:b])
                    if rec is not None:
                        found.append((start + a, rec))
                    i = block.find(needle, b)
        for _, rec in sorted(found, key=lambda x: x[0]):
            self.summary.add(rec)
        for e in samples:
            loss, step = _finite(e.loss), _finite(e.step)
            if loss is not None:
                self.summary.add_loss(step if step is not None else 0.0, loss)
        self.summary.stride = 1  # the tail keeps every loss again (history() spaces them by step)


class _SmallFileCache:
    """Parsed small files (config.yaml, control.jsonl), re-read when their (inode, size, mtime) changes."""

    def __init__(self, parse):
        self.parse = parse
        self.items: dict[str, tuple[tuple, Any]] = {}

    def get(self, path: str, default: Any) -> Any:
        try:
            st = os.lstat(path)
        except OSError:
            self.items.pop(path, None)
            return default
        if not stat.S_ISREG(st.st_mode):
            return default
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        hit = self.items.get(path)
        if hit is not None and hit[0] == key:
            return hit[1]
        value = self.parse(path)
        self.items[path] = (key, value)
        return value


def _parse_config(path: str) -> dict[str, Any]:
    import yaml  # light; the server reads only `model` and the best-checkpoint metric

    raw = _read_small(path)
    if raw is None:
        return {}
    try:
        data = yaml.safe_load(raw.decode("utf-8", "replace"))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _parse_commands(path: str) -> list[dict[str, Any]]:
    return [c for c in read_commands(os.path.dirname(path)) if isinstance(c, dict)]


def _config_number(value: Any) -> float | None:
    """A number of config.yaml; `1e-5` written by hand is a string to a YAML 1.1 reader such as PyYAML."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    return _finite(value)


def _best_metric_name(cfg: dict[str, Any]) -> str:
    es = cfg.get("early_stopping")
    name = es.get("metric") if isinstance(es, dict) and es.get("metric") else cfg.get("metric_for_best")
    name = name if isinstance(name, str) and name else "eval_loss"
    return name if name.startswith("eval_") else f"eval_{name}"


class RunsView:
    """Reads the index and the run directories; thread-safe, with per-run caches."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._metrics: dict[str, _MetricsTail] = {}
        self._configs = _SmallFileCache(_parse_config)
        self._commands = _SmallFileCache(_parse_commands)

    # ------------------------------------------------------------ lookup
    def entries(self) -> list[RunEntry]:
        d = index_dir()
        out = []
        try:
            names = sorted(os.listdir(d))
        except OSError:
            return out
        for fname in names:
            stem, ext = os.path.splitext(fname)
            if ext != ".json" or not ID_RE.match(stem):
                continue
            e = self._entry(d, stem)
            if e is not None:
                out.append(e)
        return out

    def lookup(self, run_id: Any) -> RunEntry | None:
        """The entry for an id from a client, or None. The id is matched, never used as a path until it is."""
        if not isinstance(run_id, str) or not ID_RE.match(run_id):
            return None
        return self._entry(index_dir(), run_id)

    @staticmethod
    def _entry(d: Path, run_id: str) -> RunEntry | None:
        raw = _read_small(os.path.join(d, run_id + ".json"))
        if raw is None:
            return None
        try:
            entry = json.loads(raw)
        except ValueError:
            return None
        return validate_entry(run_id, entry)

    # ------------------------------------------------------------ reports
    def list(self, kernels: dict[int, str] | None = None) -> list[dict[str, Any]]:
        """Every run of the index, newest first; `kernels` (from `kernel_pids`) fills each run's `kernel_id`."""
        entries = self.entries()
        runs = [self.describe(e, kernels=kernels) for e in entries]
        with self._lock:  # forget runs that left the index
            keep = {e.run_dir for e in entries}
            for gone in [k for k in self._metrics if k not in keep]:
                del self._metrics[gone]
        runs.sort(key=lambda r: (r.get("_registered") or 0, r.get("started") or 0), reverse=True)
        for r in runs:
            r.pop("_registered", None)
        return runs

    def describe(
        self, e: RunEntry, *, with_commands: bool = False, kernels: dict[int, str] | None = None
    ) -> dict[str, Any]:
        rd = RunDir(e.run_dir)
        st = rd.status()
        alive = rd.is_live()
        state = st.get("state") or "queued"
        if state in ACTIVE_STATES and not alive:
            state = "dead"
        elif state not in ACTIVE_STATES and state not in FINAL_STATES:
            state = "queued" if alive else "dead"
        now = time.time()
        with self._lock:
            tail = self._metrics.setdefault(e.run_dir, _MetricsTail())
            m = tail.update(e.file("metrics.jsonl"))
            cfg = self._configs.get(e.file("config.yaml"), {})
            commands = self._commands.get(e.file("control.jsonl"), [])
            history = m.history()
            rate = m.steps_per_s()
            best = m.best(_best_metric_name(cfg))
            last_log = m.last_log
            base_lr = m.base_lr
        step = _finite(st.get("step"))
        total = _finite(st.get("total_steps"))
        eta = None
        if state == "training" and rate and total is not None and step is not None:
            eta = max(0.0, (total - step) / rate)
        last_command = int(_finite(st.get("last_command")) or 0)
        heartbeat = _finite(st.get("heartbeat"))
        model = cfg.get("model")
        loss = _finite(last_log.loss) if last_log is not None else _finite(st.get("loss"))
        pid = st.get("pid") if isinstance(st.get("pid"), int) else e.entry.get("pid")
        host = st.get("host") or e.entry.get("host")
        own = bool(alive and kernels) and (not isinstance(host, str) or host == socket.gethostname())
        if base_lr is None:
            base_lr = _config_number(cfg.get("lr", cfg.get("learning_rate")))
        run: dict[str, Any] = {
            "id": e.id,
            "name": st.get("name") or e.entry.get("name") or os.path.basename(e.run_dir),
            "run_dir": e.run_dir,
            "state": state,
            "reason": st.get("reason"),
            "alive": alive,
            "heartbeat_age_s": round(max(0.0, now - heartbeat), 1) if heartbeat is not None else None,
            "pid": pid,
            # the id of this server's kernel that runs it (its process or an ancestor of it); None for a run of
            # another process: a terminal, another server, another user
            "kernel_id": kernel_owner(pid, kernels) if own else None,
            "step": int(step) if step is not None else 0,
            "total_steps": int(total) if total is not None else None,
            "epoch": _finite(st.get("epoch")),
            "eta_s": round(eta, 1) if eta is not None else None,
            "samples_per_s": _finite(last_log.samples_per_s) if last_log is not None else None,
            "loss": loss,
            "lr": _positive(last_log.lr) if last_log is not None else None,  # last logged: base lr x schedule factor
            "base_lr": _positive(base_lr),  # what `set lr` changes: the last applied set, else the config's lr
            "best_metric": best,
            "loss_history": history,
            "last_command": last_command,
            "pending": [int(c["seq"]) for c in commands if alive and int(c["seq"]) > last_command],
            "model": model if isinstance(model, str) else None,
            "started": _finite(st.get("started")),
            "finished": _finite(st.get("finished")),
            "_registered": _finite(e.entry.get("registered")),
        }
        if with_commands:
            run.pop("_registered")
            run["commands"] = [
                {
                    "seq": int(c["seq"]),
                    "cmd": c.get("cmd"),
                    "args": c.get("args") if isinstance(c.get("args"), dict) else {},
                    "source": c.get("source"),
                    "time": _finite(c.get("time")),
                    "acknowledged": int(c["seq"]) <= last_command,
                }
                for c in commands[-_RECENT_COMMANDS:]
            ]
        return clean_json(run)
