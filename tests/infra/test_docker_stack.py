"""The real container stack on the local Docker engine (CI installs one: no skipping).

Builds the three images, starts the rendered compose file, runs the testinfra checks, uploads
a real file through the API container's published port, finds the row in the containerised
PostgreSQL, restarts the API and reads the history again, runs ``invoke retention`` and
``invoke outbox`` as an operator does (they run inside the API container, where the media
volume is), then tears everything down.
Destructive for this project's containers and volumes on the host (pg-data, redis-data,
media-storage): they are removed before and after.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from PIL import Image
from psycopg import sql

from infra import compose, compose_engine, docker_host, engine, images, stack_ops
from infra.config import StackConfig
from infra.in_stack import ContainerTarget, LocalTarget, StackNotRunningError
from infra.stack import build_stack
from infra.verify_containers import report, run_checks

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

TERMINAL = {"succeeded", "failed"}
PROJECT_LABEL = "com.docker.compose.project=media-analysis"
REPO_ROOT = Path(__file__).resolve().parents[2]
INVOKE = Path(sys.prefix) / "bin" / "invoke"
WRONG_ROOT = Path("/nonexistent/wrong-root")


@dataclass
class Deployed:
    config: StackConfig
    passwords: dict[str, str]
    endpoints: engine.StackEndpoints
    timings: dict[str, float]
    shared: dict[str, Any] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _png(color: tuple[int, int, int] = (200, 30, 90), size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _operator_env(stack: Deployed, **extra: str) -> dict[str, str]:
    """An operator's shell for this stack: its state file and passwords, no MA_ store settings
    (so the tasks must find the store themselves)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MA_") and k not in {"DATABASE_URL", "REDIS_URL"}}  # fmt: skip
    env.update(
        MA_INFRA_STATE_FILE=str(engine.STATE_FILE),
        MA_INFRA_POSTGRES_PASSWORD=stack.passwords["postgres_password"],
        MA_INFRA_REDIS_PASSWORD=stack.passwords["redis_password"],
        COLUMNS="120",
    )
    env.update(extra)
    return env


def _invoke(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(INVOKE), *args],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _table_rows(stdout: str) -> dict[str, tuple[int, int]]:
    """``policy -> (objects, bytes)`` from the task's summary table."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").replace("┃", "│").split("│")]
        if len(cells) == 3 and cells[1].isdigit():
            rows[cells[0]] = (int(cells[1]), int(cells[2].replace(",", "")))
    return rows


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The run ended with exactly one ``error:`` line, last, and no traceback."""
    output = proc.stdout + proc.stderr
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert "Traceback" not in output, output
    assert len(errors) == 1, output
    assert lines[-1] == errors[0], output
    return errors[0]


def _live_media(url: str) -> set[str]:
    with psycopg.connect(_libpq(url), connect_timeout=10) as conn:
        rows = conn.execute("SELECT sha256 FROM media_files WHERE deleted_at IS NULL").fetchall()
    return {str(sha) for (sha,) in rows}


def _database_fingerprint(url: str) -> dict[str, tuple[int, str | None]]:
    """Per table of the schema: (rows, md5 of all rows), so any change shows."""
    with psycopg.connect(_libpq(url), connect_timeout=10) as conn:
        tables = [str(name) for (name,) in conn.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
        ).fetchall()]  # fmt: skip
        found: dict[str, tuple[int, str | None]] = {}
        for table in tables:
            query = sql.SQL("SELECT count(*), md5(string_agg(t::text, '|' ORDER BY t::text))"
                            " FROM {} t").format(sql.Identifier(table))  # fmt: skip
            row = conn.execute(query).fetchone()
            assert row is not None
            found[table] = (int(row[0]), row[1])
    return found


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    state_file = tmp_path_factory.mktemp("infra-state") / "infra-stack.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "STATE_FILE", state_file)
        timings: dict[str, float] = {}
        started = time.monotonic()
        docker_host.ensure_dockerd()
        images.seed_base_image(log=print)
        timings["engine_and_base_image_s"] = time.monotonic() - started

        config = StackConfig(api_host_port=_free_port())
        spec = build_stack(config)
        # A clean slate: volumes of an earlier run were initialised with other passwords.
        compose_engine.down(spec, remove_volumes=True)

        started = time.monotonic()
        for built in images.build_all(spec, log=print):
            timings[f"build {built.tag}_s"] = built.seconds
        timings["build_all_s"] = time.monotonic() - started

        token = secrets.token_hex(4)
        passwords = {
            "postgres_password": f"pg-{token} $/:@x",
            "redis_password": f"rd-{token}@:/ y",
        }
        started = time.monotonic()
        endpoints = engine.up(config, passwords, engine="compose", build=False, log=print)
        timings["up_to_ready_s"] = time.monotonic() - started
        print(f"timings: {timings}")
        try:
            yield Deployed(config, passwords, endpoints, timings)
        finally:
            engine.down(remove_volumes=True, engine="compose")


def test_rendered_compose_file_is_accepted_by_the_compose_cli(tmp_path: Path) -> None:
    for mode in ("managed", "external"):
        spec = build_stack(StackConfig(mode=mode))
        path = compose.write(spec, tmp_path / mode / "compose.yml")
        compose_engine.validate(spec, {"postgres_password": "x", "redis_password": "y"}, path)


def test_stack_comes_up_healthy(stack: Deployed) -> None:
    assert stack.endpoints.engine is engine.Engine.COMPOSE
    assert stack.endpoints.api_url == f"http://127.0.0.1:{stack.config.api_host_port}"
    for name in (stack.config.postgres_host, stack.config.redis_host, stack.config.api_name):
        assert docker_host.container_state(name).healthy, name
    assert stack.timings["up_to_ready_s"] < 300


def test_verify_checks_are_green(stack: Deployed) -> None:
    results = run_checks(stack.config)

    failed = [f"{r.name}: {r.detail}" for r in results if not r.ok]
    assert not failed, "\n".join(failed)
    assert len(results) == 10
    assert report(results) == 0


def test_upload_through_the_api_container_lands_in_postgres(stack: Deployed) -> None:
    api = stack.endpoints.api_url
    assert api is not None
    with httpx.Client(base_url=api, timeout=30) as client:
        assert client.get("/health/live").status_code == 200
        created = client.post(
            "/analyses",
            files={"file": ("sample.png", _png(), "image/png")},
            data={"analysis_type": "basic"},
        )
        assert created.status_code in {200, 201, 202}, created.text
        job_id = str(created.json()["id"])

        deadline = time.monotonic() + 60
        body = client.get(f"/analyses/{job_id}").json()
        while body.get("status") not in TERMINAL and time.monotonic() < deadline:
            time.sleep(0.5)
            body = client.get(f"/analyses/{job_id}").json()
    assert body.get("status") == "succeeded", body
    assert body.get("result"), body
    stack.shared["job_id"] = job_id

    with psycopg.connect(_libpq(stack.endpoints.database_url), connect_timeout=10) as conn:
        job = conn.execute(
            "SELECT status, analysis_type FROM analysis_jobs WHERE id = %s", (job_id,)
        ).fetchone()
        result = conn.execute(
            "SELECT count(*) FROM analysis_results WHERE job_id = %s", (job_id,)
        ).fetchone()
    assert job == ("succeeded", "basic")
    assert result == (1,)


def test_history_survives_an_api_container_restart(stack: Deployed) -> None:
    job_id = stack.shared.get("job_id")
    assert job_id, "the upload test must run first"
    name = stack.config.api_name
    before = docker_host.inspect(name)["State"]["StartedAt"]

    with closing(docker_host.client()) as engine_api:
        engine_api.containers.get(name).restart(timeout=20)
    docker_host.wait_healthy([name], timeout_s=120)

    assert docker_host.inspect(name)["State"]["StartedAt"] != before
    assert stack.endpoints.api_url is not None
    with httpx.Client(base_url=stack.endpoints.api_url, timeout=30) as client:
        job = client.get(f"/analyses/{job_id}")
        history = client.get("/analyses")
    assert job.status_code == 200
    assert job.json()["status"] == "succeeded"
    assert history.status_code == 200
    assert job_id in history.text


def test_retention_task_runs_in_the_api_container(stack: Deployed) -> None:
    """The reviewer's case: with the compose stack up, `invoke retention` sweeps the stack's
    volume (inside the API container), not the host's .data/storage, so no upload is taken for
    a missing file."""
    api, url = stack.endpoints.api_url, stack.endpoints.database_url
    assert api is not None
    uploads: dict[str, bytes] = {}
    with httpx.Client(base_url=api, timeout=30) as client:
        for i in range(20):
            body = _png((i * 12, 255 - i * 12, (i * 37) % 256), (32 + i, 24))
            created = client.post(
                "/analyses",
                files={"file": (f"upload-{i}.png", body, "image/png")},
                data={"analysis_type": "basic"},
            )
            assert created.status_code in {200, 201}, created.text
            uploads[hashlib.sha256(body).hexdigest()] = body
    assert len(uploads) == 20
    live_before = _live_media(url)
    assert set(uploads) <= live_before
    assert stack_ops.file_store_target({}) == ContainerTarget(stack.config.api_name)

    started = time.monotonic()
    proc = _invoke(["retention"], _operator_env(stack))
    stack.timings["invoke_retention_s"] = time.monotonic() - started
    print(f"invoke retention (in the API container): {stack.timings['invoke_retention_s']:.1f}s")

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"(in {stack.config.api_name})" in proc.stdout, proc.stdout
    rows = _table_rows(proc.stdout)
    assert rows.get("missing") == (0, 0), proc.stdout
    assert rows.get("total") == (0, 0), proc.stdout
    assert _live_media(url) == live_before, "nothing live was deleted"
    with httpx.Client(base_url=api, timeout=30) as client:
        for sha, body in uploads.items():
            got = client.get(f"/media/{sha}/content")
            assert got.status_code == 200, (sha, got.text)
            assert got.content == body, sha
    stack.shared["uploads"] = uploads


def test_retention_with_a_wrong_explicit_root_refuses_in_one_line(stack: Deployed) -> None:
    """MA_STORAGE_ROOT set on the host: the sweep runs here, against the stack's database, and
    the library refuses a root that is not that database's store; nothing changes."""
    assert stack.shared.get("uploads"), "the in-container retention test must run first"
    url = stack.endpoints.database_url
    assert isinstance(stack_ops.file_store_target({"MA_STORAGE_ROOT": str(WRONG_ROOT)}),
                      LocalTarget)  # fmt: skip
    created_top = not WRONG_ROOT.parent.exists()
    before = _database_fingerprint(url)
    try:
        proc = _invoke(["retention"], _operator_env(stack, MA_STORAGE_ROOT=str(WRONG_ROOT)))
    finally:
        if created_top and WRONG_ROOT.parent.exists():
            shutil.rmtree(WRONG_ROOT.parent)  # only what this run may have created

    assert proc.returncode == 1, proc.stdout + proc.stderr
    _one_error_line(proc)
    assert _database_fingerprint(url) == before, "nothing in the database changed"


def test_tasks_refuse_in_one_line_when_the_api_container_is_not_running(
    stack: Deployed, tmp_path: Path
) -> None:
    """A recorded stack whose API container is gone: no silent run on the host's store."""
    state = json.loads(engine.STATE_FILE.read_text(encoding="utf-8"))
    state["config"]["api_name"] = f"ma-no-such-api-{secrets.token_hex(3)}"
    other = tmp_path / "infra-stack.json"
    other.write_text(json.dumps(state), encoding="utf-8")
    env = _operator_env(stack, MA_INFRA_STATE_FILE=str(other))

    for args in (["retention", "--dry-run"], ["outbox"]):
        proc = _invoke(args, env)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        line = _one_error_line(proc)
        assert state["config"]["api_name"] in line and "invoke up" in line, line

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "STATE_FILE", other)
        with pytest.raises(StackNotRunningError, match="invoke up"):
            stack_ops.file_store_target({})


def test_outbox_task_lists_and_retries_in_the_api_container(stack: Deployed) -> None:
    env = _operator_env(stack)
    listed = _invoke(["outbox"], env)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert f"outbox in {stack.config.api_name}" in listed.stdout, listed.stdout

    missing = _invoke(["outbox", "--retry", "no-such-entry"], env)
    assert missing.returncode == 1, missing.stdout + missing.stderr
    assert "no-such-entry" in _one_error_line(missing)


def test_down_leaves_no_containers(stack: Deployed) -> None:
    engine.down(engine="compose")

    listed = subprocess.run(
        ["docker", "ps", "-a", "--filter", f"label={PROJECT_LABEL}", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert listed.stdout.strip() == ""
    for name in (stack.config.postgres_host, stack.config.redis_host, stack.config.api_name):
        assert docker_host.container_state(name).status == "missing"
    # Data volumes are kept by a plain down (the fixture removes them afterwards).
    volumes = subprocess.run(
        ["docker", "volume", "ls", "--format", "{{.Name}}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    assert {"pg-data", "redis-data", "media-storage"} <= set(volumes)


def test_external_mode_leaves_the_shared_servers_alone(
    stack: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shared servers from a managed deployment (applied through the Docker API runner this
    time), then the API alone in external mode with the compose CLI: their containers are
    not recreated on up nor removed on down."""
    pg, redis, api = stack.config.postgres_host, stack.config.redis_host, stack.config.api_name
    managed = StackConfig(api_host_port=stack.config.api_host_port)
    monkeypatch.setenv("MA_INFRA_COMPOSE_RUNNER", "docker-py")
    engine.up(managed, stack.passwords, engine="compose", build=False, migrate=False)
    assert all(r.ok for r in run_checks(managed)), report(run_checks(managed))
    shared_before = {name: docker_host.inspect(name)["Id"] for name in (pg, redis)}
    subprocess.run(["docker", "rm", "-f", api], check=True, capture_output=True, timeout=60)

    external = StackConfig(mode="external", api_host_port=stack.config.api_host_port)
    monkeypatch.setenv("MA_INFRA_COMPOSE_RUNNER", "cli")
    endpoints = engine.up(external, stack.passwords, engine="compose", build=False)
    results = run_checks(external)
    assert all(r.ok for r in results), report(results)
    assert {name: docker_host.inspect(name)["Id"] for name in (pg, redis)} == shared_before
    assert endpoints.api_url is not None
    assert httpx.get(f"{endpoints.api_url}/health/ready", timeout=10).status_code == 200

    engine.down(engine="compose")  # recorded config: external
    assert docker_host.container_state(api).status == "missing"
    for name in (pg, redis):
        assert docker_host.container_state(name).healthy, name
    assert docker_host.network_exists(stack.config.network_name)

    monkeypatch.setenv("MA_INFRA_COMPOSE_RUNNER", "docker-py")
    engine.down(remove_volumes=True, engine="compose", config=managed)
    for name in (pg, redis, api):
        assert docker_host.container_state(name).status == "missing"
