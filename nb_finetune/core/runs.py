"""Run registry on disk.

    <output_dir>/<name>/
        config.yaml        resolved config
        metrics.jsonl      append-only: one JSON object per event worth keeping
        status.json        state, reason, step, heartbeat, pid, last acknowledged command (atomic rewrite)
        control.jsonl      append-only numbered commands from any process (stop, pause, resume, set, ...)
        run.log            library logging of the worker
        checkpoints/step-000120/{model,optimizer,rng}.safetensors + state.json   (written atomically)

A per-user index (`<jupyter data dir>/nb_finetune/runs/*.json`) lists run directories with their process
id so other processes (the CLI, the server extension) find live runs and can tell dead ones.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from ..errors import FinetuneError, RunStateError
from . import records
from .controls import ACTIVE_STATES, next_state
from .events import CheckpointSaved, ControlApplied, EvalEnded, Event, Logged, RunFinished, RunStarted, StepEnded

__all__ = [
    "RunDir",
    "RegistryCallback",
    "append_command",
    "read_commands",
    "list_runs",
    "index_dir",
    "write_json_atomic",
    "check_output_dir",
    "ACTIVE_STATES",
]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
HEARTBEAT_S = 5.0


def validate_name(name: str) -> str:
    if not _NAME_RE.match(name or "") or ".." in name:
        raise FinetuneError(
            f"run name {name!r} is not valid: use letters, digits, '_', '-' and '.', starting with a letter or digit"
        )
    return name


# rename errors of file systems that cannot rename in place (a mounted Google Drive, some FUSE and SMB mounts)
_NO_RENAME = {errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.ENOSYS, errno.EACCES, errno.EBUSY}


def replace_or_copy(src: Path, dst: Path, *, last: str | None = None) -> None:
    """`os.replace(src, dst)`; where the file system refuses the rename, copy then delete `src`.

    For a directory the copy writes `last` (its manifest) after every other file, so a reader that trusts only
    directories with a manifest never takes a half copy for whole."""
    try:
        os.replace(src, dst)
        return
    except OSError as e:
        if e.errno not in _NO_RENAME:
            raise
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        shutil.copyfile(src, dst)
        os.unlink(src)
        return
    dst.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in src.iterdir())
    for name in [n for n in names if n != last] + ([last] if last in names else []):
        shutil.copyfile(src / name, dst / name)
        with open(dst / name, "rb") as fh:
            os.fsync(fh.fileno())
    shutil.rmtree(src, ignore_errors=True)


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, default=str)
            f.flush()
            os.fsync(f.fileno())
        replace_or_copy(tmp, path)
    except BaseException:  # a full disk: the old file stays whole and no half-written copy is left beside it
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def check_output_dir(output_dir: str | Path) -> Path:
    """FinetuneError unless run directories can be created under `output_dir` (tried, not guessed: `os.access`
    says yes as root on a read-only mount). Creates nothing that stays."""
    import tempfile

    base = Path(output_dir).expanduser()
    probe = base
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # the nearest existing ancestor is where the first mkdir will happen
    if not probe.is_dir():
        raise FinetuneError(f"output_dir {str(base)!r} cannot be created: {str(probe)!r} is a file, not a directory")
    try:
        tempfile.TemporaryDirectory(dir=probe, prefix=".nbft-probe-").cleanup()
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise FinetuneError(
            f"output_dir {str(base)!r} cannot be written ({str(probe)!r}: {why}); "
            "set output_dir to a directory you can write"
        ) from None
    return base


def read_json(path: Path, default=None):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def index_dir() -> Path:
    """Per-user run index, in the Jupyter data directory (override: NB_FINETUNE_INDEX_DIR)."""
    env = os.environ.get("NB_FINETUNE_INDEX_DIR")
    if env:
        return Path(env)
    from jupyter_core.paths import jupyter_data_dir  # light: no traitlets

    return Path(jupyter_data_dir()) / "nb_finetune" / "runs"


def pid_alive(pid: int | None) -> bool:
    """Whether a process of that id exists on this machine."""
    return _pid_alive(pid)


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunDir:
    """One run's directory. Creating it registers the run in the per-user index."""

    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()

    # ------------------------------------------------------------ creation
    @classmethod
    def create(cls, output_dir: str | Path, name: str, *, overwrite: bool = False, reuse: bool = False) -> RunDir:
        """New directory `<output_dir>/<name>`; `name-2`, `name-3`, ... when it exists (unless reuse/overwrite)."""
        validate_name(name)
        base = Path(output_dir).expanduser()
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FinetuneError(f"output_dir {str(base)!r} cannot be created: {e.strerror}") from None
        if not os.access(base, os.W_OK):
            raise FinetuneError(f"output_dir {str(base)!r} is not writable: set output_dir to a directory you own")
        path = base / name
        if path.exists():
            existing = cls(path)
            if existing.is_live():
                raise RunStateError(
                    f"run '{name}' is still {existing.status().get('state')} in process {existing.status().get('pid')}: "
                    f"stop it first (`%finetune stop {name}` or `nb-finetune stop {path}`)"
                )
            if overwrite:
                shutil.rmtree(path)
            elif reuse:
                (path / "checkpoints").mkdir(exist_ok=True)
                return cls(path)
        # mkdir without exist_ok is the claim: two processes starting NAME at once get NAME and NAME-2, never one
        for n in range(1, 10_000):
            candidate = path if n == 1 else base / f"{name}-{n}"
            try:
                candidate.mkdir()
            except FileExistsError:
                continue
            (candidate / "checkpoints").mkdir(exist_ok=True)
            return cls(candidate)
        raise FinetuneError(f"output_dir {str(base)!r} already holds 10,000 runs named {name!r}-N: pick another name")

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    # ------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        return read_json(self.path / "status.json", {}) or {}

    def write_status(self, **fields) -> dict[str, Any]:
        st = self.status()
        st.update(fields)
        st["heartbeat"] = time.time()
        write_json_atomic(self.path / "status.json", st)
        return st

    def is_live(self) -> bool:
        st = self.status()
        if st.get("state") not in ACTIVE_STATES:
            return False
        if st.get("host", socket.gethostname()) == socket.gethostname() and not _pid_alive(st.get("pid")):
            return False
        return time.time() - float(st.get("heartbeat", 0)) < 10 * HEARTBEAT_S or _pid_alive(st.get("pid"))

    def register(self) -> None:
        d = index_dir()
        with contextlib.suppress(OSError):
            d.mkdir(parents=True, exist_ok=True)
            write_json_atomic(
                d / f"{hashlib.sha1(str(self.path).encode()).hexdigest()[:16]}.json",
                {
                    "name": self.name,
                    "run_dir": str(self.path),
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "registered": time.time(),
                },
            )

    # ------------------------------------------------------------ files
    def write_config(self, yaml_text: str) -> None:
        tmp = self.path / ".config.yaml.tmp"
        tmp.write_text(yaml_text, encoding="utf-8")
        replace_or_copy(tmp, self.path / "config.yaml")

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.path / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(records.dumps(record) + "\n")

    def append_event(self, event: Event) -> None:
        """Append `event` to metrics.jsonl in the codec's format (core/records.py)."""
        self.append_metrics(records.encode(event))

    def read_metrics(self) -> list[dict[str, Any]]:
        """The raw records of metrics.jsonl (`read_events` decodes them)."""
        out = []
        try:
            with open(self.path / "metrics.jsonl", encoding="utf-8") as f:
                for line in f:
                    rec = records.loads(line)
                    if rec is not None:
                        out.append(rec)
        except OSError:
            pass
        return out

    def read_events(self) -> list[Event]:
        """The events recorded in metrics.jsonl, decoded by the one codec (old runs' files included)."""
        return records.read_events(self.path / "metrics.jsonl")

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.checkpoints_dir.is_dir():
            return []
        cks = [p for p in self.checkpoints_dir.iterdir() if p.is_dir() and re.fullmatch(r"step-\d+", p.name)]
        return sorted((p for p in cks if (p / "state.json").is_file()), key=lambda p: int(p.name[5:]))

    def best_checkpoint(self) -> Path | None:
        ptr = read_json(self.checkpoints_dir / "best.json")
        if ptr and (self.checkpoints_dir / ptr["checkpoint"] / "state.json").is_file():
            return self.checkpoints_dir / ptr["checkpoint"]
        return None

    def resolve_checkpoint(self, which: str) -> Path:
        """The checkpoint `resume_from` names, verified against its manifest. `last` falls back to the newest whole
        one, warning about each damaged one it skips (also in `self.damaged`); `best` or a path must be whole."""
        import warnings

        from ..errors import CheckpointError, FinetuneWarning
        from .train.checkpoints import verify_checkpoint

        self.damaged: list[str] = []
        if which == "last":
            cks = self.checkpoints()
            if not cks:
                raise FinetuneError(
                    f"resume_from: last: run '{self.name}' has no checkpoint in {self.checkpoints_dir}"
                )
            for ck in reversed(cks):
                why = verify_checkpoint(ck)
                if why is None:
                    for note in self.damaged:
                        warnings.warn(f"resume_from: last: {note}; resuming from {ck.name}", FinetuneWarning, 2)
                    return ck
                self.damaged.append(f"checkpoint {ck.name} is damaged ({why})")
            raise CheckpointError(
                f"resume_from: last: no checkpoint of run '{self.name}' is whole: {'; '.join(self.damaged)}"
            )
        if which == "best":
            best = self.best_checkpoint()
            if best is None:
                raise FinetuneError(f"resume_from: best: run '{self.name}' has no best checkpoint (needs evaluation)")
            p = best
        else:
            p = Path(which).expanduser()
            if not (p / "state.json").is_file():
                raise FinetuneError(f"resume_from: {which!r} is not a checkpoint directory (no state.json inside)")
        why = verify_checkpoint(p)
        if why is not None:
            raise CheckpointError(
                f"resume_from: {which}: checkpoint {p.name} is damaged ({why}); try resume_from: last"
            )
        return p


# --------------------------------------------------------------------------------------------- control file
def append_command(run_dir: str | Path, kind: str, source: str = "cli", **args) -> int:
    """Append a numbered command to `<run_dir>/control.jsonl` (safe across processes); returns its number."""
    import fcntl

    path = Path(run_dir) / "control.jsonl"
    if not Path(run_dir).is_dir():
        raise FinetuneError(f"{run_dir} is not a run directory")
    try:  # never through a symlink: a run directory is written by its owner only
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        raise FinetuneError(f"{path} cannot be opened for commands: {e.strerror}") from None
    with os.fdopen(fd, "a+", encoding="utf-8") as f:
        locked = _lock(f, fcntl)
        try:
            f.seek(0)
            last = 0
            for line in f:
                with contextlib.suppress(ValueError, KeyError):
                    last = max(last, int(json.loads(line)["seq"]))
            seq = last + 1
            f.seek(0, os.SEEK_END)
            f.write(json.dumps({"seq": seq, "cmd": kind, "args": args, "source": source, "time": time.time()}) + "\n")
            f.flush()
        finally:
            if locked:
                fcntl.flock(f, fcntl.LOCK_UN)
    return seq


def _lock(f, fcntl) -> bool:
    """An exclusive lock where the file system has one; a mounted Drive may raise ENOSYS / ENOTSUP / ENOLCK. Without
    it the command is still one O_APPEND write of one line (numbers may then repeat, commands are never torn)."""
    try:
        fcntl.flock(f, fcntl.LOCK_EX)
        return True
    except OSError as e:
        if e.errno in (errno.ENOSYS, errno.ENOTSUP, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            return False
        raise


class ControlFileReader:
    """Reads new complete lines of control.jsonl; cheap to poll (one stat when nothing changed)."""

    def __init__(self, run_dir: Path, start_after_seq: int = 0):
        self.path = Path(run_dir) / "control.jsonl"
        self.offset = 0
        self.last_seq = start_after_seq

    def poll(self) -> list[dict[str, Any]]:
        try:
            size = self.path.stat().st_size
        except OSError:
            return []
        if size <= self.offset:
            return []
        with open(self.path, encoding="utf-8") as f:
            f.seek(self.offset)
            chunk = f.read()
        end = chunk.rfind("\n")
        if end < 0:
            return []
        self.offset += len(chunk[: end + 1].encode("utf-8"))
        out = []
        for line in chunk[: end + 1].splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                rec = json.loads(line)
                if int(rec["seq"]) > self.last_seq:
                    self.last_seq = int(rec["seq"])
                    out.append(rec)
        return out


def read_commands(run_dir: str | Path) -> list[dict[str, Any]]:
    return ControlFileReader(Path(run_dir)).poll()


# --------------------------------------------------------------------------------------------- index
def list_runs(include_dead: bool = True) -> list[dict[str, Any]]:
    """Runs from the per-user index, each with its status and `alive` (process present, heartbeat fresh)."""
    d = index_dir()
    out = []
    if not d.is_dir():
        return out
    for f in d.glob("*.json"):
        entry = read_json(f)
        if not entry or not Path(entry.get("run_dir", "")).is_dir():
            continue
        rd = RunDir(entry["run_dir"])
        st = rd.status()
        state = st.get("state", "unknown")
        alive = rd.is_live()
        if state in ACTIVE_STATES and not alive:
            state = "dead"
        if state == "dead" and not include_dead:
            continue
        out.append({**entry, **st, "state": state, "alive": alive})
    return sorted(out, key=lambda r: r.get("registered", 0))


# --------------------------------------------------------------------------------------------- subscriber
class RegistryCallback:
    """Writes events into metrics.jsonl and status.json. Runs on the training thread; only cheap file I/O."""

    def __init__(self, run_dir: RunDir):
        self.run_dir = run_dir
        self._last_beat = 0.0

    def on_event(self, e: Event) -> None:
        rd = self.run_dir
        if isinstance(e, StepEnded):
            if e.time - self._last_beat >= HEARTBEAT_S:
                self._last_beat = e.time
                rd.write_status(step=e.step, epoch=round(e.epoch, 4), total_steps=e.total_steps)
            return
        rd.append_event(e)  # RunStarted with the layer map: `%finetune show` redraws it from here
        fields: dict[str, Any] = {}
        if isinstance(e, RunStarted):
            fields = dict(
                reason=None,
                step=e.start_step,
                total_steps=e.total_steps,
                pid=os.getpid(),
                host=socket.gethostname(),
                started=e.time,
            )
        elif isinstance(e, Logged):
            fields = dict(step=e.step, epoch=round(e.epoch, 4), loss=e.loss)
            if e.nonfinite_steps:  # steps whose loss was NaN / Inf (skipped under on_nonfinite: skip)
                fields["nonfinite_steps"] = (rd.status().get("nonfinite_steps") or 0) + e.nonfinite_steps
        elif isinstance(e, EvalEnded):
            fields = dict(metrics=e.metrics)
        elif isinstance(e, ControlApplied) and (e.source == "file" or e.source.startswith("file:")):
            fields = dict(last_command=max(e.seq, rd.status().get("last_command") or 0))  # acknowledged
        elif isinstance(e, CheckpointSaved):
            fields = dict(last_checkpoint=e.path)
        elif isinstance(e, RunFinished):
            fields = dict(reason=e.reason, step=e.step, error=e.error, finished=e.time)
        if isinstance(e, (RunStarted, ControlApplied, RunFinished)):
            state = rd.status().get("state")
            new = next_state(state, e)
            if new != state:
                fields["state"] = new
        rd.write_status(**fields)
