"""Ops safety, with real processes on loopback: tasks start no daemon and no server they were
not asked for, every refusal is one ``error:`` line, and the local API is proven ours.

Each test gets its own stack record, data dir and storage root (``MA_INFRA_STATE_FILE``,
``MA_DATA_DIR``, ``MA_STORAGE_ROOT``), so the checkout's ``.data`` is never touched.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from infra import engines
from infra.docker_host import daemon_answers
from infra.engines import EngineKind, local_api
from infra.loopback import free_port
from tests.integration.task_runs import SCRUBBED, invoke, one_error_line


class _Answers200(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"status": "ok"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def other_service() -> Iterator[int]:
    """A service of our own answering 200 to every GET on a loopback port; yields the port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answers200)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def ops_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    env.update(
        MA_INFRA_STATE_FILE=str(tmp_path / "state" / "infra-stack.json"),
        MA_DATA_DIR=str(tmp_path / "data"),
        MA_STORAGE_ROOT=str(tmp_path / "storage"),
    )
    return env


def pids(name: str) -> set[int]:
    """Processes whose name is exactly ``name`` (``pgrep -x``)."""
    found = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True, check=False)
    return {int(pid) for pid in found.stdout.split()}


def servers() -> dict[str, set[int]]:
    return {name: pids(name) for name in ("postgres", "redis-server", "dockerd")}


def _describe(pid: int) -> str:
    """Command line and working directory (a daemonized redis-server chdirs to its --dir)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        return f"{cmdline} cwd={os.readlink(f'/proc/{pid}/cwd')}"
    except OSError:
        return ""  # gone already


def started_since(before: dict[str, set[int]], ours: Path) -> dict[str, list[str]]:
    """Server processes that appeared since ``before`` and belong to a task of this test:
    any new dockerd; a postgres or redis-server under ``ours`` (the test's data dir) or on
    the embedded Redis port. Other sessions' test servers on this machine are not counted."""
    after = servers()
    found: dict[str, list[str]] = {}
    for name, now in after.items():
        for pid in sorted(now - before[name]):
            what = _describe(pid)
            if name == "dockerd" or str(ours) in what or ":6399" in what:
                found.setdefault(name, []).append(what)
    return found


def test_docker_host_nowhere_is_one_line_and_starts_no_dockerd(
    ops_env: dict[str, str], project_root: Path, tmp_path: Path
) -> None:
    before = servers()
    env = {**ops_env, "DOCKER_HOST": "unix:///nonexistent.sock"}
    line = one_error_line(invoke("up", "--engine", "compose", env=env, cwd=project_root))
    assert "no Docker engine answers at unix:///nonexistent.sock" in line
    assert "scripts/bootstrap" in line and "--engine embedded" in line
    assert len(pids("dockerd")) == len(before["dockerd"])
    assert not started_since(before, tmp_path)
    assert not Path(ops_env["MA_INFRA_STATE_FILE"]).exists()


def test_engine_auto_choice_only_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    before = len(pids("dockerd"))
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    assert daemon_answers() is False
    assert engines.choose().kind is not EngineKind.COMPOSE
    assert len(pids("dockerd")) == before


@pytest.mark.parametrize("task", ["verify", "db-status"])
def test_read_only_task_without_a_stack_starts_nothing(
    task: str, ops_env: dict[str, str], project_root: Path, tmp_path: Path
) -> None:
    before = servers()
    line = one_error_line(invoke(task, env=ops_env, cwd=project_root))
    assert line == "error: nothing was started by this checkout: run invoke up first"
    assert not started_since(before, tmp_path)
    assert not (Path(ops_env["MA_DATA_DIR"]) / "pg").exists()


def test_local_api_refuses_a_port_another_service_answers_on(
    other_service: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MA_INFRA_STATE_FILE", str(tmp_path / "infra-stack.json"))
    with pytest.raises(local_api.LocalApiError) as refused:
        local_api.start({}, "127.0.0.1", other_service, timeout_s=10)
    message = str(refused.value)
    assert "\n" not in message
    assert f"port {other_service} on 127.0.0.1 is taken" in message
    assert "HTTP 200" in message and "invoke up --port" in message
    assert not (tmp_path / "api.pid").exists()  # nothing was spawned


def test_up_refuses_a_taken_port_before_starting_any_server(
    other_service: int, ops_env: dict[str, str], project_root: Path, tmp_path: Path
) -> None:
    before = servers()
    proc = invoke(
        "up", "--engine", "embedded", "--port", str(other_service), env=ops_env, cwd=project_root
    )
    line = one_error_line(proc)
    assert f"port {other_service} on 127.0.0.1 is taken" in line
    assert not started_since(before, tmp_path)
    assert not Path(ops_env["MA_INFRA_STATE_FILE"]).exists()


def test_port_only_for_the_embedded_engine(ops_env: dict[str, str], project_root: Path) -> None:
    env = {**ops_env, "DOCKER_HOST": "unix:///nonexistent.sock"}
    proc = invoke("up", "--engine", "compose", "--port", "8123", env=env, cwd=project_root)
    assert "--port is for the embedded engine" in one_error_line(proc)


def test_verify_fails_when_the_recorded_api_is_stopped_or_not_ours(
    other_service: int, ops_env: dict[str, str], project_root: Path
) -> None:
    """Embedded up on a free port, verify passes; the API stopped, or another service on its
    port, and verify fails with one line quoting the API log."""
    port = free_port()
    state = Path(ops_env["MA_INFRA_STATE_FILE"])
    api_record = state.parent / "api.pid"
    try:
        up = invoke(
            "up", "--engine", "embedded", "--port", str(port), env=ops_env, cwd=project_root,
            timeout=300,
        )  # fmt: skip
        assert up.returncode == 0, up.stdout + up.stderr
        assert json.loads(state.read_text())["api_url"] == f"http://127.0.0.1:{port}"
        record = json.loads(api_record.read_text())
        assert len(record["instance"]) == 32

        passed = invoke("verify", env=ops_env, cwd=project_root)
        assert passed.returncode == 0, passed.stdout + passed.stderr
        assert "API ready" in passed.stdout
        # A new shell without MA_DATA_DIR: the record still names the servers and the API.
        bare = {k: v for k, v in ops_env.items() if k != "MA_DATA_DIR"}
        passed = invoke("verify", env=bare, cwd=project_root)
        assert passed.returncode == 0, passed.stdout + passed.stderr

        # Another process claims to be the API: a forged instance id in the record.
        forged = {**record, "instance": "0" * 32}
        api_record.write_text(json.dumps(forged))
        line = one_error_line(invoke("verify", env=ops_env, cwd=project_root))
        assert f"another process answers on http://127.0.0.1:{port}" in line
        assert f"ours is {'0' * 32}" in line and "api.log ends:" in line
        api_record.write_text(json.dumps(record))

        os.kill(record["pid"], signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and local_api.live_instance(
            f"http://127.0.0.1:{port}", timeout_s=0.5
        ):
            time.sleep(0.2)
        time.sleep(0.5)
        line = one_error_line(invoke("verify", env=ops_env, cwd=project_root))
        assert f"the local API (pid {record['pid']}) is not running" in line
        assert "api.log ends:" in line

        # The recorded API is gone and another service answers where the stack expects it.
        forged_url = {**record, "url": f"http://127.0.0.1:{other_service}"}
        api_record.write_text(json.dumps(forged_url))
        state_data = json.loads(state.read_text())
        state.write_text(json.dumps({**state_data, "api_url": forged_url["url"]}))
        line = one_error_line(invoke("verify", env=ops_env, cwd=project_root))
        assert "not running" in line  # a 200 from someone else never passes
    finally:
        invoke("down", env=ops_env, cwd=project_root, timeout=120)
    assert not api_record.exists() and not state.exists()


def test_live_reports_the_instance_id_it_was_given() -> None:
    script = "from app_patch.health import INSTANCE_ID, Live; print(INSTANCE_ID, Live().instance)"
    given = "ab" * 16
    out = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "MA_API_INSTANCE_ID": given},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == [given, given]
    other = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "MA_API_INSTANCE_ID": "not-hex"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert other[0] == other[1] and len(other[0]) == 32 and other[0] != "not-hex"
