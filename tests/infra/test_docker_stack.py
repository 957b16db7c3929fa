"""The real container stack on the local Docker engine (CI installs one: no skipping).

Builds the three images, starts the rendered compose file, runs the testinfra checks, uploads
a real file through the API container's published port, finds the row in the containerised
PostgreSQL, restarts the API and reads the history again, then tears everything down.
Destructive for this project's containers and volumes on the host (pg-data, redis-data,
media-storage): they are removed before and after.
"""

from __future__ import annotations

import io
import secrets
import socket
import subprocess
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

from infra import compose, compose_engine, docker_host, engine, images
from infra.config import StackConfig
from infra.stack import build_stack
from infra.verify_containers import report, run_checks

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

TERMINAL = {"succeeded", "failed"}
PROJECT_LABEL = "com.docker.compose.project=media-analysis"


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


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


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
