"""The runs API through a real `jupyter server` process: auth, lookups, path traversal, bodies, and a live run
that stops when the server writes its control file."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from nb_finetune.core.runs import RunDir, read_commands

ROOT = Path(__file__).resolve().parents[2]
API = "/nb-finetune/api/"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, url: str, token: str, proc: subprocess.Popen, index: Path):
        self.url, self.token, self.proc, self.index = url, token, proc, index

    def request(self, method: str, path: str, body=None, *, token: bool = True, raw: bytes | None = None):
        """(status, parsed JSON) for `path` under the server's base URL, sent as is (no normalisation)."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.url + path.lstrip("/"), data=data, method=method)
        if token:
            req.add_header("Authorization", f"token {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status, ctype, text = r.status, r.headers.get("Content-Type", ""), r.read().decode()
        except urllib.error.HTTPError as e:
            status, ctype, text = e.code, e.headers.get("Content-Type", ""), e.read().decode()
        if "json" not in ctype:  # a page from outside the API (e.g. the server's own 404)
            return status, text
        # strict JSON, as the browser parses it: NaN / Infinity would fail here
        return status, json.loads(text, parse_constant=_refuse)


def _refuse(name):
    raise AssertionError(f"the reply contains {name}, which JSON.parse refuses")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("jpserver")
    token, port = secrets.token_hex(16), _free_port()
    cfg = tmp / "config"
    cfg.mkdir()
    # only our extension: quicker start, and the test does not depend on which others are installed
    (cfg / "jupyter_server_config.json").write_text(
        json.dumps(
            {
                "ServerApp": {
                    "jpserver_extensions": {
                        "nb_finetune": True,
                        "jupyterlab": False,
                        "notebook": False,
                        "jupyter_lsp": False,
                        "notebook_shim": False,
                        "jupyter_server_terminals": False,
                    }
                }
            }
        )
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("JUPYTER")},
        "PYTHONPATH": str(ROOT),
        "JUPYTER_CONFIG_DIR": str(cfg),
        "JUPYTER_DATA_DIR": str(tmp / "data"),
        "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
        "NB_FINETUNE_INDEX_DIR": str(tmp / "index"),
    }
    log = open(tmp / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter_server",
            "--no-browser",
            "--allow-root",
            "--ip=127.0.0.1",
            f"--port={port}",
            "--port-retries=0",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={tmp}",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    srv = Server(f"http://127.0.0.1:{port}/", token, proc, tmp / "index")
    srv.runtime = tmp / "runtime"  # the kernels' connection files
    deadline = time.monotonic() + 90
    while True:
        assert proc.poll() is None, (tmp / "server.log").read_text()
        try:
            if srv.request("GET", "api/status")[0] == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, (tmp / "server.log").read_text()
        time.sleep(0.2)
    srv.log = tmp / "server.log"
    yield srv
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


@pytest.fixture()
def api(server, monkeypatch):
    """The server, with this process registering runs into the server's index (emptied for each test)."""
    monkeypatch.setenv("NB_FINETUNE_INDEX_DIR", str(server.index))
    server.index.mkdir(exist_ok=True)
    for f in server.index.iterdir():
        f.unlink()
    return server


def run_id(path) -> str:
    return hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:16]


def fake_run(out: Path, name: str, *, state: str = "training", pid: int | None = None, **status) -> RunDir:
    rd = RunDir.create(out, name)
    rd.write_status(state=state, pid=pid if pid is not None else os.getpid(), name=rd.name, **status)
    rd.register()
    return rd


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ------------------------------------------------------------------------------------------------- auth
def test_requests_without_the_token_are_refused(api, tmp_path):
    rd = fake_run(tmp_path / "runs", "guarded")
    rid = run_id(rd.path)
    for method, path, body in [
        ("GET", API + "runs", None),
        ("GET", API + f"runs/{rid}", None),
        ("GET", API + "schema", None),
        ("POST", API + f"runs/{rid}/control", {"cmd": "stop"}),
        ("POST", API + "stop-all", {}),
    ]:
        status, _ = api.request(method, path, body, token=False)
        assert status == 403, (method, path, status)
    assert not (rd.path / "control.jsonl").exists()
    # a wrong token is no better than none
    req = urllib.request.Request(api.url + API.lstrip("/") + "runs", headers={"Authorization": "token nope"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 403


# ------------------------------------------------------------------------------------------------- reading
def test_list_reports_status_progress_best_metric_and_a_loss_sparkline(api, tmp_path):
    rd = fake_run(tmp_path / "runs", "listed", step=150, total_steps=1150, epoch=0.5)
    (rd.path / "config.yaml").write_text("model: tiny-bert\nmetric_for_best: accuracy\n")
    t0 = time.time() - 100
    for i in range(1, 151):  # 150 log events, one step each, 10 steps/s
        loss = float("nan") if i == 75 else 2.0 - i / 100
        rd.append_metrics({"event": "log", "time": t0 + i / 10, "step": i, "loss": loss, "samples_per_s": 160.0})
    rd.append_metrics({"event": "eval", "step": 50, "eval_loss": 0.9, "eval_accuracy": 0.7, "is_best": True})
    rd.append_metrics({"event": "eval", "step": 100, "eval_loss": 0.8, "eval_accuracy": 0.9, "is_best": True})
    rd.append_metrics({"event": "eval", "step": 150, "eval_loss": 0.7, "eval_accuracy": 0.8, "is_best": False})
    done = fake_run(tmp_path / "runs", "done", state="finished", reason="completed", step=10, total_steps=10)

    status, body = api.request("GET", API + "runs")
    assert status == 200
    assert abs(body["time"] - time.time()) < 60
    runs = {r["name"]: r for r in body["runs"]}
    assert [r["name"] for r in body["runs"]] == ["done", "listed"]  # newest first
    r = runs["listed"]
    assert r["id"] == run_id(rd.path) and r["run_dir"] == str(rd.path)
    assert (r["state"], r["alive"], r["pid"], r["step"], r["total_steps"]) == (
        "training",
        True,
        os.getpid(),
        150,
        1150,
    )
    assert r["epoch"] == 0.5 and r["model"] == "tiny-bert"
    assert r["eta_s"] == pytest.approx(100.0, rel=0.01)  # 1000 steps left at 10 steps/s
    assert r["samples_per_s"] == 160.0 and r["loss"] == pytest.approx(0.5)
    assert r["best_metric"] == {"name": "eval_accuracy", "value": 0.9}
    hist = r["loss_history"]
    assert len(hist) == 60 and hist[0] == pytest.approx(1.99) and hist[-1] == pytest.approx(0.5)
    assert hist == sorted(hist, reverse=True)  # evenly subsampled from a falling loss, the NaN left out
    assert r["last_command"] == 0 and r["pending"] == [] and r["heartbeat_age_s"] < 60
    d = runs["done"]
    assert (d["state"], d["reason"], d["alive"], d["eta_s"]) == ("finished", "completed", False, None)
    assert d["id"] == run_id(done.path) and d["best_metric"] is None and d["loss_history"] == []

    # new lines are picked up on the next poll (the reader keeps its offset)
    rd.append_metrics({"event": "log", "time": t0 + 16, "step": 160, "loss": 0.1, "samples_per_s": 170.0})
    r = {x["name"]: x for x in api.request("GET", API + "runs")[1]["runs"]}["listed"]
    assert r["loss"] == pytest.approx(0.1) and r["samples_per_s"] == 170.0 and r["loss_history"][-1] == 0.1


def test_a_run_whose_process_is_gone_is_dead_and_refuses_commands(api, tmp_path):
    rd = fake_run(tmp_path / "runs", "ghost", pid=dead_pid(), step=3)
    rid = run_id(rd.path)
    status, r = api.request("GET", API + f"runs/{rid}")
    assert status == 200 and (r["state"], r["alive"]) == ("dead", False)
    status, err = api.request("POST", API + f"runs/{rid}/control", {"cmd": "stop"})
    assert status == 409 and "ghost" in err["message"] and "dead" in err["message"]
    assert not (rd.path / "control.jsonl").exists()


def test_unknown_ids_are_404(api, tmp_path):
    fake_run(tmp_path / "runs", "known")
    for rid in ["0123456789abcdef", "0123456789ABCDEF", "0123456789abcde", "known", "x" * 300]:
        status, err = api.request("GET", API + f"runs/{rid}")
        assert status == 404 and "no run" in err["message"], rid
        status, _ = api.request("POST", API + f"runs/{rid}/control", {"cmd": "stop"})
        assert status == 404, rid


def test_schema_is_served(api):
    status, schema = api.request("GET", API + "schema")
    assert status == 200
    assert schema["properties"]["lr"]["aliases"] == ["learning_rate"]
    assert "live" in schema["properties"]["lr"]


# ------------------------------------------------------------------------------------------------- traversal
def test_path_traversal_attempts_are_refused(api, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "status.json").write_text(json.dumps({"state": "training", "pid": os.getpid()}))
    secret = tmp_path / "secret.txt"
    secret.write_text("do not touch\n")
    rd = fake_run(tmp_path / "runs", "real")
    rid = run_id(rd.path)
    attempts = [
        "..%2F..%2F..%2Fetc%2Fpasswd",
        "..%2Fvictim",
        "%2Fetc%2Fpasswd",
        "%2E%2E",
        "..",
        "%252E%252E%252Fvictim",
        f"{rid}%2F..%2F..%2Fvictim",
        str(victim).replace("/", "%2F"),
    ]
    for a in attempts:
        status, _ = api.request("GET", API + f"runs/{a}")
        assert status in (400, 404), (a, status)
        status, _ = api.request("POST", API + f"runs/{a}/control", {"cmd": "stop"})
        assert status in (400, 404, 405), (a, status)
    for raw in [f"runs/../runs/{rid}/../../../etc/passwd", "runs/..%2f..%2fschema"]:
        status, _ = api.request("GET", API + raw)
        assert status in (400, 404), (raw, status)
    assert not (victim / "control.jsonl").exists()
    assert not (rd.path / "control.jsonl").exists()


def _write_entry(index: Path, run_dir: str, *, stem: str | None = None) -> str:
    stem = stem or hashlib.sha1(run_dir.encode()).hexdigest()[:16]
    index.mkdir(parents=True, exist_ok=True)
    (index / f"{stem}.json").write_text(json.dumps({"name": "evil", "run_dir": run_dir, "pid": os.getpid()}))
    return stem


def test_index_entries_that_leave_their_directory_are_ignored(api, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "status.json").write_text(json.dumps({"state": "training", "pid": os.getpid()}))
    runs = tmp_path / "runs"
    runs.mkdir()
    link = runs / "link"
    link.symlink_to(outside, target_is_directory=True)
    # an honest run whose control file was replaced by a symlink to a file elsewhere
    rd = fake_run(runs, "hijacked")
    target = tmp_path / "target.txt"
    target.write_text("original\n")
    (rd.path / "control.jsonl").symlink_to(target)

    bad = {
        "symlinked run_dir": _write_entry(api.index, str(link)),
        "dotdot run_dir": _write_entry(api.index, str(runs) + "/../outside"),
        "relative run_dir": _write_entry(api.index, "outside"),
        "id not matching run_dir": _write_entry(api.index, str(outside), stem="00000000000000aa"),
        "symlinked control.jsonl": run_id(rd.path),
    }
    status, body = api.request("GET", API + "runs")
    assert status == 200 and body["runs"] == []
    for why, rid in bad.items():
        assert api.request("GET", API + f"runs/{rid}")[0] == 404, why
        assert api.request("POST", API + f"runs/{rid}/control", {"cmd": "stop"})[0] == 404, why
    assert api.request("POST", API + "stop-all", {"scope": "all"})[1] == {"stopped": [], "skipped": []}
    assert not (outside / "control.jsonl").exists()
    assert target.read_text() == "original\n"


# ------------------------------------------------------------------------------------------------- commands
@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"not json", "JSON"),
        (b"[1, 2]", "object"),
        (b'{"cmd": "stop", "extra": 1}', "extra"),
        (b'{"cmd": "rm -rf"}', "cmd"),
        (b'{"cmd": 7}', "cmd"),
        (b'{"args": {}}', "cmd"),
        (b'{"cmd": "pause", "args": {"x": 1}}', "args.x"),
        (b'{"cmd": "stop", "args": {"force": true}}', "args.force"),
        (b'{"cmd": "stop", "args": {"save": "no"}}', "args.save"),
        (b'{"cmd": "set", "args": []}', "args"),
        (b'{"cmd": "set", "args": {}}', "args"),
        (b'{"cmd": "set", "args": {"lr": "1e-5"}}', "args.lr"),
        (b'{"cmd": "set", "args": {"lr": true}}', "args.lr"),
        (b'{"cmd": "set", "args": {"lr": NaN}}', "JSON"),
        (b'{"cmd": "set", "args": {"lr": 1e999}}', "args.lr"),
        (b'{"cmd": "set", "args": {"lr": -1}}', "args.lr"),
        (b'{"cmd": "set", "args": {"batch_size": 8}}', "args.batch_size"),
        (b'{"cmd": "set", "args": {"freeze": 2}}', "args.freeze"),
        (b'{"cmd": "set", "args": {"max_steps": 2.5}}', "args.max_steps"),
        (b'{"cmd": "set", "args": {"lr": 1e-5, "learning_rate": 2e-5}}', "args.learning_rate"),
        (b'{"cmd": "stop", "pad": "' + b"x" * 20000 + b'"}', "larger"),
    ],
)
def test_bad_bodies_are_400_naming_the_field(api, tmp_path, body, field):
    rd = fake_run(tmp_path / "runs", "target")
    status, err = api.request("POST", API + f"runs/{run_id(rd.path)}/control", raw=body)
    assert status == 400 and field in err["message"], err
    assert not (rd.path / "control.jsonl").exists()


def test_commands_are_appended_with_source_server_and_shown_pending(api, tmp_path):
    rd = fake_run(tmp_path / "runs", "steered")
    rid = run_id(rd.path)
    status, reply = api.request("POST", API + f"runs/{rid}/control", {"cmd": "set", "args": {"learning_rate": 1e-5}})
    assert (status, reply) == (202, {"seq": 1, "id": rid})
    status, reply = api.request("POST", API + f"runs/{rid}/control", {"cmd": "stop", "args": {"save": False}})
    assert (status, reply) == (202, {"seq": 2, "id": rid})
    cmds = read_commands(rd.path)
    assert [(c["seq"], c["cmd"], c["args"], c["source"]) for c in cmds] == [
        (1, "set", {"lr": 1e-5}, "server"),
        (2, "stop", {"save": False}, "server"),
    ]
    r = api.request("GET", API + f"runs/{rid}")[1]
    assert r["pending"] == [1, 2] and r["last_command"] == 0
    rd.write_status(last_command=1)  # what the engine does when it applies seq 1
    r = api.request("GET", API + f"runs/{rid}")[1]
    assert r["pending"] == [2] and r["last_command"] == 1
    assert [(c["seq"], c["cmd"], c["acknowledged"]) for c in r["commands"]] == [(1, "set", True), (2, "stop", False)]


def test_stop_all_with_scope_all_stops_every_alive_run(api, tmp_path):
    a = fake_run(tmp_path / "runs", "a")
    b = fake_run(tmp_path / "runs", "b", state="paused")
    c = fake_run(tmp_path / "runs", "c", pid=dead_pid())
    d = fake_run(tmp_path / "runs", "d", state="finished")
    status, reply = api.request("POST", API + "stop-all", {"scope": "all"})
    assert status == 200 and sorted(reply["stopped"]) == sorted([run_id(a.path), run_id(b.path)])
    assert reply["skipped"] == []
    for rd, n in [(a, 1), (b, 1), (c, 0), (d, 0)]:
        assert [x["cmd"] for x in read_commands(rd.path)] == ["stop"] * n


@pytest.fixture()
def other_process():
    """A live process that is neither this server nor one of its kernels (a run started from a terminal)."""
    proc = subprocess.Popen(["sleep", "600"])
    yield proc
    proc.kill()
    proc.wait()


def test_stop_all_leaves_runs_of_other_processes_alone(api, tmp_path, other_process):
    other = fake_run(tmp_path / "runs", "other", pid=other_process.pid)
    mine = fake_run(tmp_path / "runs", "this_test")  # this test's process: not a kernel of the server either
    runs = {r["name"]: r for r in api.request("GET", API + "runs")[1]["runs"]}
    assert runs["other"]["alive"] is True and runs["other"]["kernel_id"] is None
    assert runs["this_test"]["kernel_id"] is None

    status, reply = api.request("POST", API + "stop-all", {})
    assert status == 200 and reply["stopped"] == []
    assert sorted(reply["skipped"]) == sorted([run_id(other.path), run_id(mine.path)])
    # ids limit what is stopped, never widen the scope
    status, reply = api.request("POST", API + "stop-all", {"ids": [run_id(other.path)]})
    assert status == 200 and reply == {"stopped": [], "skipped": [run_id(other.path)]}
    assert not (other.path / "control.jsonl").exists() and not (mine.path / "control.jsonl").exists()
    assert other_process.poll() is None
    # everything, when asked for; only the listed ids then
    status, reply = api.request("POST", API + "stop-all", {"scope": "all", "ids": [run_id(other.path)]})
    assert status == 200 and reply == {"stopped": [run_id(other.path)], "skipped": []}
    assert [c["cmd"] for c in read_commands(other.path)] == ["stop"]
    assert not (mine.path / "control.jsonl").exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"[1]", "object"),
        (b'{"scope": "everyone"}', "scope"),
        (b'{"scope": "all", "force": true}', "force"),
        (b'{"ids": "0123456789abcdef"}', "ids"),
        (b'{"ids": ["../../etc"]}', "ids"),
        (b'{"ids": [7]}', "ids"),
    ],
)
def test_bad_stop_all_bodies_are_400(api, tmp_path, body, field):
    rd = fake_run(tmp_path / "runs", "untouched")
    status, err = api.request("POST", API + "stop-all", raw=body)
    assert status == 400 and field in err["message"], err
    assert not (rd.path / "control.jsonl").exists()


def _kernel_client(server, kernel_id: str):
    from jupyter_client import BlockingKernelClient

    kc = BlockingKernelClient(connection_file=str(server.runtime / f"kernel-{kernel_id}.json"))
    kc.load_connection_file()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    return kc


@pytest.mark.kernel
def test_stop_all_stops_the_run_of_this_servers_kernel(api, tmp_path, tiny_model_dir, other_process):
    other = fake_run(tmp_path / "runs", "other", pid=other_process.pid)
    status, kernel = api.request("POST", "api/kernels", {"name": "python3"})
    assert status == 201, kernel
    kc = _kernel_client(api, kernel["id"])
    try:
        # a real run in the kernel, training in the background until it is stopped
        code = "\n".join(
            [
                "import pandas as pd",
                "from tests.conftest import make_texts",
                "from nb_finetune import finetune",
                "texts, labels = make_texts(64, seed=1)",
                f"run = finetune({{'name': 'mine', 'model': {str(tiny_model_dir)!r}, "
                "'data': {'train': pd.DataFrame({'text': texts, 'label': labels}), 'eval_split': 0}, "
                "'max_steps': 1000000, 'batch_size': 16, 'log_every': 1, 'save_every': None, "
                f"'output_dir': {str(tmp_path / 'kernel_runs')!r}}})",
            ]
        )
        reply = kc.execute_interactive(code, timeout=180, output_hook=lambda msg: None)
        assert reply["content"]["status"] == "ok", reply["content"]
        deadline = time.monotonic() + 120
        while True:
            runs = {r["name"]: r for r in api.request("GET", API + "runs")[1]["runs"]}
            if runs.get("mine", {}).get("state") == "training" and runs["mine"]["step"] >= 2:
                break
            assert time.monotonic() < deadline, runs
            time.sleep(0.2)
        mine = runs["mine"]
        assert mine["kernel_id"] == kernel["id"] and runs["other"]["kernel_id"] is None
        assert mine["lr"] is not None and mine["base_lr"] == pytest.approx(2e-5)  # the default lr

        status, reply = api.request("POST", API + "stop-all", {})
        assert status == 200 and reply == {"stopped": [mine["id"]], "skipped": [run_id(other.path)]}
        deadline = time.monotonic() + 120
        while (r := api.request("GET", API + f"runs/{mine['id']}")[1])["state"] != "stopped":
            assert time.monotonic() < deadline, r
            time.sleep(0.2)
        assert r["alive"] is False and r["commands"][-1]["cmd"] == "stop" and r["commands"][-1]["acknowledged"]
        # the other process's run goes on, untouched
        o = api.request("GET", API + f"runs/{run_id(other.path)}")[1]
        assert (o["state"], o["alive"], o["commands"]) == ("training", True, [])
        assert other_process.poll() is None
    finally:
        kc.stop_channels()
        api.request("DELETE", f"api/kernels/{kernel['id']}")


def test_a_live_run_honours_a_stop_from_the_server(api, tiny_config):
    from nb_finetune import finetune

    run = finetune({**tiny_config, "name": "live", "max_steps": 1_000_000, "save_every": None})
    try:
        rid = run_id(run.dir)
        deadline = time.monotonic() + 120
        while True:
            status, r = api.request("GET", API + f"runs/{rid}")
            if status == 200 and r["state"] == "training" and run.step >= 2:
                break
            assert time.monotonic() < deadline, r
            time.sleep(0.1)
        assert r["alive"] is True
        status, reply = api.request("POST", API + f"runs/{rid}/control", {"cmd": "stop"})
        assert status == 202
        run.wait(timeout=120)
    finally:
        if run.status in ("queued", "starting", "training", "paused"):
            run.abort()
            run.wait(timeout=60)
    assert (run.status, run.reason) == ("stopped", "user")
    assert run.checkpoints, "a stop saves a checkpoint"
    r = api.request("GET", API + f"runs/{rid}")[1]
    assert r["state"] == "stopped" and r["alive"] is False
    assert r["last_command"] >= reply["seq"] and r["pending"] == []
    assert r["commands"][-1] == {**r["commands"][-1], "cmd": "stop", "source": "server", "acknowledged": True}


def test_the_server_process_never_loaded_torch(api, tmp_path):
    fake_run(tmp_path / "runs", "light")
    for method, path in [("GET", "runs"), ("GET", "schema")]:
        assert api.request(method, API + path)[0] == 200
    maps = Path(f"/proc/{api.proc.pid}/maps")
    if not maps.exists():
        pytest.skip("no /proc here")
    loaded = maps.read_text()
    assert "nb_finetune: runs API at /nb-finetune/api/" in api.log.read_text()  # the extension is loaded
    assert "libtorch" not in loaded and "torch/_C" not in loaded and "transformers" not in loaded
