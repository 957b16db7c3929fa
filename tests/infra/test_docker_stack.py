"""The real container stack on the local Docker engine (CI installs one: no skipping).

Builds the three images, starts the rendered compose file, runs the testinfra checks (and
shows they fail on a container that is not hardened), proves the trust boundary (no password
in ``docker inspect``; the API's database role cannot CREATE or DROP; its Redis user cannot
FLUSHALL or CONFIG GET; Redis evicts instead of being OOM-killed), uploads a real file through
the API container's published port, finds the row in the containerised PostgreSQL, restarts
the API and reads the history again, rotates the API's passwords, runs ``invoke retention``
and ``invoke outbox`` as an operator does (they run inside the API container, where the
media volume is), then tears everything down.
Destructive for this project's containers and volumes on the host (pg-data, redis-data,
media-storage): they are removed before and after.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import docker
import httpx
import psycopg
import pytest
import redis
import yaml
from PIL import Image
from psycopg import sql
from redis.exceptions import NoPermissionError

from app_patch.db import libpq_url
from app_patch.db_roles import role_problems
from app_patch.settings import PROJECT_ROOT
from infra import (
    compose,
    docker_host,
    images,
    secrets_file,
    stack_ops,
    verify_containers,
)
from infra.config import STACK_SECRETS, StackConfig, config_to_env, env_key
from infra.engines import EngineKind, StackEndpoints, UpRequest, record
from infra.engines import compose as compose_engine
from infra.engines.containers import redis_url
from infra.in_stack import ContainerTarget, LocalTarget, StackNotRunningError
from infra.loopback import free_port
from infra.progress import Lines
from infra.pulumi_program import _PidsLimitProvider
from infra.stack import build_stack
from infra.verify_containers import report, run_checks

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

TERMINAL = {"succeeded", "failed"}
PROJECT_LABEL = "com.docker.compose.project=media-analysis"
INVOKE = Path(sys.prefix) / "bin" / "invoke"
WRONG_ROOT = Path("/nonexistent/wrong-root")


@dataclass
class Deployed:
    config: StackConfig
    passwords: dict[str, str]
    endpoints: StackEndpoints
    timings: dict[str, float]
    shared: dict[str, Any] = field(default_factory=dict)


def api_key(stack: Deployed) -> dict[str, str]:
    """Every route but health needs the stack's API key (the API holds only its digest)."""
    return {"X-API-Key": stack.passwords["api_key"]}


def _png(color: tuple[int, int, int] = (200, 30, 90), size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _operator_env(stack: Deployed, **extra: str) -> dict[str, str]:
    """An operator's shell for this stack: its state file and passwords, no MA_ store settings
    (so the tasks must find the store themselves)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MA_") and k not in {"DATABASE_URL", "REDIS_URL"}}  # fmt: skip
    env.update({env_key(name): value for name, value in stack.passwords.items()})
    env.update(
        MA_INFRA_STATE_FILE=str(record.state_file()),
        MA_INFRA_SECRETS_DIR=str(secrets_file.SECRETS_ROOT),
        COLUMNS="120",
    )
    env.update(extra)
    return env


def _invoke(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(INVOKE), *args],
        cwd=PROJECT_ROOT,
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
    with psycopg.connect(libpq_url(url), connect_timeout=10) as conn:
        rows = conn.execute("SELECT sha256 FROM media_files WHERE deleted_at IS NULL").fetchall()
    return {str(sha) for (sha,) in rows}


def _database_fingerprint(url: str) -> dict[str, tuple[int, str | None]]:
    """Per table of the schema: (rows, md5 of all rows), so any change shows."""
    with psycopg.connect(libpq_url(url), connect_timeout=10) as conn:
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


def _passwords() -> dict[str, str]:
    """Fresh values for every stack secret, with characters URLs and shells must quote."""
    return {s.name: f"{s.setting[:8]}-{secrets.token_hex(6)} $/:@x" for s in STACK_SECRETS}


def _stack_env(config: StackConfig, passwords: dict[str, str]) -> dict[str, str]:
    """The environment `invoke up` reads: ``config`` and ``passwords`` as MA_INFRA_* values."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MA_INFRA_")}
    env.update(config_to_env(config))
    env.update({env_key(name): value for name, value in passwords.items()})
    env["MA_INFRA_STATE_FILE"] = str(record.state_file())
    return env


def _up(config: StackConfig, passwords: dict[str, str]) -> StackEndpoints:
    """What `invoke up` does with the compose engine (without building and verifying)."""
    engine = compose_engine.ComposeEngine(_stack_env(config, passwords))
    endpoints = engine.up(UpRequest(build=False), Lines())
    stack_ops.migrate(endpoints)
    stack_ops.wait_api_ready(endpoints)
    return endpoints


def _down(volumes: bool = False) -> None:
    """What `invoke down [--volumes --yes]` does: the recorded stack, if any."""
    if record.load() is None:
        return
    engine, found, _ = stack_ops.down_plan()
    stack_ops.down(engine, found, volumes=volumes, progress=Lines())


def _clean_slate(config: StackConfig) -> None:
    """Remove this project's containers and volumes whoever started them (a test's reset)."""
    spec = build_stack(config)
    compose_engine.stop(spec, record.state_dir() / "reset-compose.yml", remove_volumes=True)
    record.clear()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    state_file = tmp_path_factory.mktemp("infra-state") / "infra-stack.json"
    secrets_root = tmp_path_factory.mktemp("infra-secrets")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MA_INFRA_STATE_FILE", str(state_file))
        # The containers' secret files too: not the checkout's .data/secrets.
        patch.setattr(secrets_file, "SECRETS_ROOT", secrets_root)
        timings: dict[str, float] = {}
        started = time.monotonic()
        docker_host.require_engine()
        images.seed_base_image(progress=Lines())
        timings["engine_and_base_image_s"] = time.monotonic() - started

        config = StackConfig(api_host_port=free_port())
        spec = build_stack(config)
        # A clean slate: volumes of an earlier run were initialised with other passwords.
        _clean_slate(config)

        started = time.monotonic()
        for built in images.build_all(spec, progress=Lines()):
            timings[f"build {built.tag}_s"] = built.seconds
        timings["build_all_s"] = time.monotonic() - started

        passwords = _passwords()
        started = time.monotonic()
        endpoints = _up(config, passwords)
        timings["up_to_ready_s"] = time.monotonic() - started
        print(f"timings: {timings}")
        try:
            yield Deployed(config, passwords, endpoints, timings)
        finally:
            _down(volumes=True)
            _clean_slate(config)


def test_rendered_compose_file_is_accepted_by_the_compose_cli(tmp_path: Path) -> None:
    for mode in ("managed", "external"):
        spec = build_stack(StackConfig(mode=mode))
        path = compose.write(spec, tmp_path / mode / "compose.yml")
        compose_engine.validate(spec, path)


def test_stack_comes_up_healthy(stack: Deployed) -> None:
    assert stack.endpoints.engine is EngineKind.COMPOSE
    assert stack.endpoints.api_url == f"http://127.0.0.1:{stack.config.api_host_port}"
    for name in (stack.config.postgres_host, stack.config.redis_host, stack.config.api_name):
        assert docker_host.container_state(name).healthy, name
    assert stack.timings["up_to_ready_s"] < 300


def test_verify_checks_are_green(stack: Deployed) -> None:
    results = run_checks(stack.config)

    failed = [f"{r.name}: {r.detail}" for r in results if not r.ok]
    assert not failed, "\n".join(failed)
    assert len(results) == 26  # servers, 1 API replica, the proxy
    assert report(results) == 0


def test_verify_fails_on_a_container_that_is_not_hardened(stack: Deployed) -> None:
    """The same checks against a plain container (default capabilities, writable root, no
    pids limit, no no-new-privileges, a URL with a password in its env): each is reported."""
    probe = f"ma-weak-probe-{secrets.token_hex(3)}"
    leaked = f"leak-{secrets.token_hex(6)}"
    subprocess.run(
        ["docker", "run", "-d", "--name", probe, "--entrypoint", "sleep",
         "-e", f"DATABASE_URL=postgresql://u:{leaked}@h/db", stack.config.api_image, "120"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    try:
        api = build_stack(stack.config).service(stack.config.api_name)
        weak = dataclasses.replace(api, name=probe)
        hardened = verify_containers.run_check(
            "hardened", lambda: verify_containers._hardened(weak)
        )
        exposed = verify_containers.run_check(
            "exposed", lambda: verify_containers._no_secret_exposed(probe, (probe,))
        )
    finally:
        subprocess.run(["docker", "rm", "-f", "-v", probe], capture_output=True, timeout=60)

    assert not hardened.ok and not exposed.ok
    for missing in (
        "CapDrop",
        "no-new-privileges is not set",
        "PidsLimit is unlimited",
        "root filesystem is writable",
        "no tmpfs",
        "NoNewPrivs",
        "may still gain",
        "writing to / succeeded",
    ):
        assert missing in hardened.detail, hardened.detail
    assert "env DATABASE_URL" in exposed.detail, exposed.detail
    assert leaked not in exposed.detail  # the report names the variable, never the value


def test_pulumi_delivery_paths_work_on_this_engine(stack: Deployed) -> None:
    """What the Pulumi program relies on, against the real engine (no Pulumi CLI here): an
    upload (PUT archive at "/", as the provider does) is refused by a read-only container but
    lands in a volume through a never-started loader, owned and moded as the header says; and
    the PidsLimit resource's update call sets HostConfig.PidsLimit."""
    token = secrets.token_hex(3)
    volume, loader, reader = (
        f"ma-probe-vol-{token}",
        f"ma-probe-loader-{token}",
        f"ma-probe-ro-{token}",
    )
    image = stack.config.api_image
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        entry = tarfile.TarInfo("/run/secrets/db_url")
        entry.size, entry.mode, entry.uid, entry.gid = 5, 0o400, 10001, 10001
        tar.addfile(entry, io.BytesIO(b"probe"))
    with closing(docker_host.client()) as client:
        try:
            client.volumes.create(volume)
            read_only = client.containers.create(
                image, ["sleep", "60"], name=reader, read_only=True,
                volumes={volume: {"bind": "/run/secrets", "mode": "ro"}},
            )  # fmt: skip
            with pytest.raises(docker.errors.APIError, match="read-only"):
                client.api.put_archive(read_only.id, "/", archive.getvalue())
            filler = client.containers.create(
                image, ["true"], name=loader, volumes={volume: {"bind": "/run/secrets"}}
            )
            assert client.api.put_archive(filler.id, "/", archive.getvalue())
            read_only.start()
            code, output = read_only.exec_run(["cat", "/run/secrets/db_url"])
            assert (code, output) == (0, b"probe")
            code, output = read_only.exec_run(["stat", "-c", "%u:%g %a", "/run/secrets/db_url"])
            assert output.decode().strip() == "10001:10001 400"

            _PidsLimitProvider().create({"container_id": read_only.id, "pids_limit": 77})
            assert docker_host.inspect(reader)["HostConfig"]["PidsLimit"] == 77
        finally:
            for name in (reader, loader):
                subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True, timeout=60)
            subprocess.run(["docker", "volume", "rm", volume], capture_output=True, timeout=60)


def test_docker_inspect_shows_no_password(stack: Deployed) -> None:
    names = (stack.config.postgres_host, stack.config.redis_host, stack.config.api_name)
    values = set(stack.passwords.values())
    values |= {quote(value, safe="") for value in values}
    for name in names:
        attrs = docker_host.inspect(name)
        shown = json.dumps(
            {
                "Env": attrs["Config"]["Env"],
                "Cmd": attrs["Config"]["Cmd"],
                "Entrypoint": attrs["Config"]["Entrypoint"],
                "Args": attrs["Args"],
                "Labels": attrs["Config"]["Labels"],
            }
        )
        for value in values:
            assert value not in shown, name
        assert not any("PASSWORD=" in item or "_URL=" in item for item in attrs["Config"]["Env"]), (
            attrs["Config"]["Env"]
        )
    # ...and the API's own root cannot read its secrets (they belong to uid 10001, no caps).
    code, output = docker_host.exec_run(stack.config.api_name, ["cat", "/run/secrets/db_url"], "0")
    assert code != 0 and "Permission denied" in output


def test_containers_are_hardened_as_inspect_shows(stack: Deployed) -> None:
    expected_caps = {
        stack.config.postgres_host: ["SETGID", "SETUID"],
        stack.config.redis_host: ["SETGID", "SETUID"],
        stack.config.api_name: [],
    }
    for name, caps in expected_caps.items():
        host_config = docker_host.inspect(name)["HostConfig"]
        assert host_config["CapDrop"] == ["ALL"], name
        assert sorted(host_config["CapAdd"] or []) == caps, name
        assert "no-new-privileges:true" in host_config["SecurityOpt"], name
        assert host_config["PidsLimit"] > 0, name
        assert host_config["ReadonlyRootfs"] is (name == stack.config.api_name), name
    code, output = docker_host.exec_run(stack.config.api_name, ["touch", "/etc/probe"])
    assert code != 0 and "Read-only file system" in output


def test_api_database_role_cannot_create_or_drop(stack: Deployed) -> None:
    app_url = stack.endpoints.app_database_url
    assert app_url is not None and "media_app" in app_url
    assert role_problems(app_url) == []
    with psycopg.connect(libpq_url(app_url), connect_timeout=10) as conn:
        row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        assert row == (False,)
        for statement in ("CREATE TABLE ma_probe (id int)", "DROP TABLE analysis_jobs"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
            conn.rollback()
        assert conn.execute("SELECT count(*) FROM analysis_jobs").fetchone() is not None
    # Every table belongs to the owner role, none to the bootstrap superuser.
    with psycopg.connect(libpq_url(stack.endpoints.database_url), connect_timeout=10) as conn:
        owners = conn.execute(
            "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    assert owners == [(stack.config.postgres_owner_user,)]


def test_upload_through_the_api_container_lands_in_postgres(stack: Deployed) -> None:
    api = stack.endpoints.api_url
    assert api is not None
    with httpx.Client(base_url=api, timeout=30, headers=api_key(stack)) as client:
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

    with psycopg.connect(libpq_url(stack.endpoints.database_url), connect_timeout=10) as conn:
        job = conn.execute(
            "SELECT status, analysis_type FROM analysis_jobs WHERE id = %s", (job_id,)
        ).fetchone()
        result = conn.execute(
            "SELECT count(*) FROM analysis_results WHERE job_id = %s", (job_id,)
        ).fetchone()
    assert job == ("succeeded", "basic")
    assert result == (1,)


def test_cache_works_through_the_restricted_redis_user(stack: Deployed) -> None:
    job_id = stack.shared.get("job_id")
    assert job_id, "the upload test must run first"
    assert stack.endpoints.api_url is not None and stack.endpoints.redis_url is not None
    with httpx.Client(
        base_url=stack.endpoints.api_url, timeout=30, headers=api_key(stack)
    ) as client:
        first = client.get(f"/analyses/{job_id}")
        second = client.get(f"/analyses/{job_id}")
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()

    app = redis.Redis.from_url(stack.endpoints.redis_url, socket_timeout=5)
    try:
        assert urlsplit(stack.endpoints.redis_url).username == stack.config.redis_app_user
        cached = app.get(f"ma:v1:job:{job_id}")
        assert cached is not None and job_id.encode() in cached  # the API's own entry
        for command in (("FLUSHALL",), ("CONFIG", "GET", "requirepass"), ("KEYS", "*")):
            with pytest.raises(NoPermissionError):
                app.execute_command(*command)
        with pytest.raises(NoPermissionError):
            app.get("outside:the:prefix")
    finally:
        app.close()
    assert app_is_ready(stack)


def app_is_ready(stack: Deployed) -> bool:
    assert stack.endpoints.api_url is not None
    ready = httpx.get(f"{stack.endpoints.api_url}/health/ready", timeout=10)
    return ready.status_code == 200 and ready.json()["checks"]["redis"] == "ok"


def _redis_admin(stack: Deployed) -> redis.Redis:
    address = docker_host.container_ip(stack.config.redis_host, stack.config.network_name)
    url = redis_url(
        stack.config, stack.config.redis_admin_user, stack.passwords["redis_password"], address
    )
    return redis.Redis.from_url(url, socket_timeout=10)


def test_redis_evicts_instead_of_being_oom_killed(stack: Deployed) -> None:
    """Fill the cache through the app user to 1.6 x maxmemory: Redis evicts, no write is
    refused, the container is neither OOM-killed nor restarted, the API keeps answering."""
    name = stack.config.redis_host
    before = docker_host.inspect(name)["State"]
    admin = _redis_admin(stack)
    app = redis.Redis.from_url(stack.endpoints.redis_url or "", socket_timeout=10)
    maxmemory = int(admin.config_get("maxmemory")["maxmemory"])
    assert admin.config_get("maxmemory-policy")["maxmemory-policy"] == "allkeys-lru"
    value = secrets.token_bytes(64 * 1024)
    batches, per_batch = (maxmemory * 8 // 5) // (len(value) * 64) + 1, 64
    failed_api: list[int] = []
    started = time.monotonic()
    try:
        with httpx.Client(
            base_url=stack.endpoints.api_url or "", timeout=10, headers=api_key(stack)
        ) as client:
            for batch in range(batches):
                pipe = app.pipeline(transaction=False)
                for i in range(per_batch):
                    pipe.set(f"ma:v1:fill:{batch}:{i}", value, px=600_000)
                assert all(result is True for result in pipe.execute()), batch
                if batch % 10 == 0:
                    status = client.get("/health/ready").status_code
                    if status != 200:
                        failed_api.append(status)
        stats = admin.info("stats")
        memory = admin.info("memory")
    finally:
        app.close()
        admin.close()
    written = batches * per_batch * len(value)
    stack.timings["redis_fill_s"] = time.monotonic() - started
    after = docker_host.inspect(name)["State"]
    print(
        f"redis fill: wrote {written >> 20} MiB in {stack.timings['redis_fill_s']:.1f}s; "
        f"evicted_keys={stats['evicted_keys']} used_memory={memory['used_memory'] >> 20} MiB "
        f"rss={memory['used_memory_rss'] >> 20} MiB maxmemory={maxmemory >> 20} MiB"
    )
    assert written > maxmemory * 1.5
    assert int(stats["evicted_keys"]) > 0
    assert int(memory["used_memory"]) <= maxmemory * 1.05
    assert after["OOMKilled"] is False
    assert after["Status"] == "running" and after["StartedAt"] == before["StartedAt"]
    assert docker_host.inspect(name)["RestartCount"] == 0
    assert failed_api == []
    assert app_is_ready(stack)


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
    with httpx.Client(
        base_url=stack.endpoints.api_url, timeout=30, headers=api_key(stack)
    ) as client:
        job = client.get(f"/analyses/{job_id}")
        history = client.get("/analyses")
    assert job.status_code == 200
    assert job.json()["status"] == "succeeded"
    assert history.status_code == 200
    assert job_id in history.text


def test_rotating_the_api_passwords_is_one_up(stack: Deployed) -> None:
    """New app passwords (PostgreSQL role and Redis user) in the secrets, `up` again: the
    role's password changes in the database first, Redis and the API are recreated with the
    new files, PostgreSQL is not restarted, the old passwords stop working."""
    old = dict(stack.passwords)
    rotated = {
        **old,
        "postgres_app_password": f"rot-{secrets.token_hex(6)} /@:",
        "redis_app_password": f"rot-{secrets.token_hex(6)} /@:",
    }
    ids = {
        n: docker_host.inspect(n)["Id"] for n in (stack.config.postgres_host, stack.config.api_name)
    }
    endpoints = _up(stack.config, rotated)

    assert docker_host.inspect(stack.config.postgres_host)["Id"] == ids[stack.config.postgres_host]
    assert docker_host.inspect(stack.config.api_name)["Id"] != ids[stack.config.api_name]
    stack.passwords.update(rotated)
    stack.endpoints = endpoints
    assert app_is_ready(stack)
    assert endpoints.app_database_url is not None
    assert role_problems(endpoints.app_database_url) == []
    stale_db = endpoints.app_database_url.replace(
        quote(rotated["postgres_app_password"], safe=""),
        quote(old["postgres_app_password"], safe=""),
    )
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(libpq_url(stale_db), connect_timeout=10).close()
    assert endpoints.redis_url is not None
    stale_redis = endpoints.redis_url.replace(
        quote(rotated["redis_app_password"], safe=""), quote(old["redis_app_password"], safe="")
    )
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(stale_redis, socket_timeout=5).ping()


def test_invoke_verify_and_db_roles_as_an_operator(stack: Deployed, tmp_path: Path) -> None:
    """`invoke verify` (smoke + container checks) is green; `invoke db-roles` takes the
    administrator URL from a file or from MA_INFRA_ADMIN_URL, never as an argument value,
    and is idempotent."""
    verify = _invoke(["verify"], _operator_env(stack))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "Redis round trip as the API's user" in verify.stdout
    assert "database role is unprivileged" in verify.stdout

    address = docker_host.container_ip(stack.config.postgres_host, stack.config.network_name)
    admin = (
        f"postgresql://{stack.config.postgres_user}:"
        f"{quote(stack.passwords['postgres_password'], safe='')}@{address}:5432/postgres"
    )
    url_file = tmp_path / "admin-url"
    url_file.write_text(admin + "\n")
    url_file.chmod(0o600)
    by_file = _invoke(["db-roles", "--admin-url-file", str(url_file)], _operator_env(stack))
    by_env = _invoke(["db-roles"], _operator_env(stack, MA_INFRA_ADMIN_URL=admin))
    for proc in (by_file, by_env):
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "media_owner (owner) and media_app (app) ready in media_analysis" in proc.stdout
        assert stack.passwords["postgres_password"] not in proc.stdout + proc.stderr
    missing = _invoke(["db-roles"], _operator_env(stack))
    assert missing.returncode == 1
    assert "MA_INFRA_ADMIN_URL" in _one_error_line(missing)
    assert stack.endpoints.app_database_url is not None
    assert role_problems(stack.endpoints.app_database_url) == []


def test_retention_task_runs_in_the_api_container(stack: Deployed) -> None:
    """The reviewer's case: with the compose stack up, `invoke retention` sweeps the stack's
    volume (inside the API container), not the host's .data/storage, so no upload is taken for
    a missing file."""
    api, url = stack.endpoints.api_url, stack.endpoints.database_url
    assert api is not None
    uploads: dict[str, bytes] = {}
    with httpx.Client(base_url=api, timeout=30, headers=api_key(stack)) as client:
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
    with httpx.Client(base_url=api, timeout=30, headers=api_key(stack)) as client:
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
    state = json.loads(record.state_file().read_text(encoding="utf-8"))
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
        patch.setenv("MA_INFRA_STATE_FILE", str(other))
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
    _down()

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


def test_external_mode_leaves_the_shared_servers_alone(stack: Deployed, tmp_path: Path) -> None:
    """Shared servers from a managed deployment of one checkout; the API alone in external
    mode from a second checkout (its own record and owner): the servers are not recreated on
    its up nor removed on its down. The first checkout cannot switch itself to external (that
    would remove the servers it manages): refused in one line."""
    pg, redis, api = stack.config.postgres_host, stack.config.redis_host, stack.config.api_name
    managed = StackConfig(api_host_port=stack.config.api_host_port)
    _up(managed, stack.passwords)  # the schema is at head already: the migration is a no-op
    first_checkout = record.state_file()
    assert all(r.ok for r in run_checks(managed)), report(run_checks(managed))
    shared_before = {name: docker_host.inspect(name)["Id"] for name in (pg, redis)}

    external = StackConfig(mode="external", api_host_port=stack.config.api_host_port)
    switch = _invoke(["up", "--no-build", "--no-verify"],
                     {**_operator_env(stack), **config_to_env(external)})  # fmt: skip
    assert switch.returncode == 1, switch.stdout + switch.stderr
    line = _one_error_line(switch)
    assert "refusing to switch to mode=external" in line and "invoke down" in line, line
    assert {name: docker_host.inspect(name)["Id"] for name in (pg, redis)} == shared_before

    # The first checkout's API and proxy make way (a hand-over of the servers only).
    proxy_name = stack.config.proxy_name
    subprocess.run(["docker", "rm", "-f", api, proxy_name], check=True, capture_output=True,
                   timeout=60)  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MA_INFRA_STATE_FILE", str(tmp_path / "second" / "infra-stack.json"))
        endpoints = _up(external, stack.passwords)
        results = run_checks(external)
        assert all(r.ok for r in results), report(results)
        assert {name: docker_host.inspect(name)["Id"] for name in (pg, redis)} == shared_before
        assert endpoints.api_url is not None
        assert httpx.get(f"{endpoints.api_url}/health/ready", timeout=10).status_code == 200
        _down()  # the second checkout's record: external, its API only
    assert docker_host.container_state(api).status == "missing"
    for name in (pg, redis):
        assert docker_host.container_state(name).healthy, name
    assert docker_host.network_exists(stack.config.network_name)

    assert record.state_file() == first_checkout
    _down(volumes=True)
    for name in (pg, redis, api):
        assert docker_host.container_state(name).status == "missing"


def test_a_second_checkout_refuses_to_touch_the_first_checkouts_stack(
    stack: Deployed, tmp_path: Path
) -> None:
    """Another checkout (its own record dir, so its own id) on the same host: with no record,
    down/verify/db-status/retention say nothing was started; with a record of the same stack
    but its own owner, down and verify refuse naming the containers and their owner. The
    stack keeps running."""
    config = StackConfig(api_host_port=stack.config.api_host_port)
    if record.load() is None:
        _up(config, stack.passwords)
    ids = {n: docker_host.inspect(n)["Id"] for n in (config.postgres_host, config.api_name)}
    owner = record.load().owner  # type: ignore[union-attr]
    second = tmp_path / "second-checkout" / "infra-stack.json"
    env = _operator_env(stack, MA_INFRA_STATE_FILE=str(second))
    for args in (["down"], ["verify"], ["db-status"], ["retention", "--dry-run"]):
        proc = _invoke(args, env)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert _one_error_line(proc) == (
            "error: nothing was started by this checkout: run invoke up first"
        ), args

    second.parent.mkdir(parents=True, exist_ok=True)
    (second.parent / "checkout-id").write_text("0123456789abcdef\n", encoding="ascii")
    forged = json.loads(record.state_file().read_text(encoding="utf-8"))
    forged["owner"] = "checkout:0123456789abcdef"
    second.write_text(json.dumps(forged), encoding="utf-8")
    for args in (["down"], ["verify"], ["down", "--volumes", "--yes"]):
        proc = _invoke(args, env)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        line = _one_error_line(proc)
        assert "not started by this checkout" in line and config.postgres_host in line, line
        assert f"owner {owner}" in line, line
    assert {n: docker_host.inspect(n)["Id"] for n in ids} == ids
    assert docker_host.container_state(config.api_name).healthy

    up = _invoke(["up", "--no-build", "--engine", "compose"], env)
    assert up.returncode == 1, up.stdout + up.stderr
    assert "refusing to start" in _one_error_line(up)
    assert {n: docker_host.inspect(n)["Id"] for n in ids} == ids


def test_verify_fails_when_the_api_is_stopped(stack: Deployed) -> None:
    """`invoke verify` against this checkout's stack with its API container stopped: the
    check fails (exit non-zero); `invoke up` brings it back."""
    config = StackConfig(api_host_port=stack.config.api_host_port)
    if record.load() is None:
        _up(config, stack.passwords)
    env = _operator_env(stack)
    subprocess.run(["docker", "stop", config.api_name], check=True, capture_output=True,
                   timeout=60)  # fmt: skip
    try:
        proc = _invoke(["verify"], env)
        assert proc.returncode != 0, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stdout + proc.stderr
    finally:
        _up(config, stack.passwords)


def _network_id(name: str) -> str | None:
    found = subprocess.run(
        ["docker", "network", "inspect", "--format", "{{.Id}}", name],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return found.stdout.strip() if found.returncode == 0 else None


def _volume_names() -> set[str]:
    listed = subprocess.run(
        ["docker", "volume", "ls", "--format", "{{.Name}}"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return set(listed.stdout.split())


def _invoke_on_a_terminal(
    args: list[str], env: dict[str, str], answer: str
) -> subprocess.CompletedProcess[str]:
    """``_invoke`` with a pseudo-terminal as stdin, ``answer`` typed into it."""
    controller, terminal = os.openpty()
    try:
        os.write(controller, answer.encode())
        return subprocess.run(
            [str(INVOKE), *args], cwd=PROJECT_ROOT, env=env, stdin=terminal,
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
    finally:
        os.close(controller)
        os.close(terminal)


def test_hand_made_network_is_adopted_and_data_survives_down_until_confirmed_down_volumes(
    stack: Deployed,
) -> None:
    """A hand-made `af-network` (no compose labels): a managed up with the compose CLI renders
    it `external: true` and uses it, no down removes it. 10 uploads survive `invoke down` and
    an up; `invoke down --volumes` without a terminal or --yes refuses in one line and deletes
    nothing; with --yes it deletes the three volumes (and still not the network)."""
    data_volumes = {"pg-data", "redis-data", "media-storage"}
    network = stack.config.network_name
    env = _operator_env(stack)
    started = time.monotonic()
    _down(volumes=True)
    _clean_slate(stack.config)
    assert _network_id(network) is None and not data_volumes & _volume_names()
    subprocess.run(["docker", "network", "create", network], check=True, capture_output=True,
                   timeout=60)  # fmt: skip
    hand_made = _network_id(network)
    try:
        config = StackConfig(api_host_port=stack.config.api_host_port)
        endpoints = _up(config, stack.passwords)
        rendered = yaml.safe_load(compose_engine.rendered_path().read_text(encoding="utf-8"))
        assert rendered["networks"] == {network: {"name": network, "external": True}}
        assert _network_id(network) == hand_made
        attached = docker_host.inspect(config.api_name)["NetworkSettings"]["Networks"]
        assert set(attached) == {network}

        assert endpoints.api_url is not None
        uploads: dict[str, bytes] = {}
        jobs: dict[str, str] = {}
        with httpx.Client(base_url=endpoints.api_url, timeout=30, headers=api_key(stack)) as api:
            for i in range(10):
                body = _png((i * 20, 90, 255 - i * 20), (40 + i, 30))
                created = api.post(
                    "/analyses",
                    files={"file": (f"keep-{i}.png", body, "image/png")},
                    data={"analysis_type": "basic"},
                )
                assert created.status_code == 201, created.text
                jobs[str(created.json()["id"])] = hashlib.sha256(body).hexdigest()
                uploads[hashlib.sha256(body).hexdigest()] = body
            deadline = time.monotonic() + 120
            pending = set(jobs)
            while pending and time.monotonic() < deadline:
                states = {j: api.get(f"/analyses/{j}").json().get("status") for j in pending}
                pending = {j for j, status in states.items() if status not in TERMINAL}
                time.sleep(0.5)
            assert not pending, pending

        down = _invoke(["down"], env)
        assert down.returncode == 0, down.stdout + down.stderr
        assert "volumes kept: pg-data, redis-data, media-storage" in down.stdout, down.stdout
        assert docker_host.container_state(config.api_name).status == "missing"
        assert data_volumes <= _volume_names()
        assert _network_id(network) == hand_made

        endpoints = _up(config, stack.passwords)
        assert endpoints.api_url is not None
        with httpx.Client(base_url=endpoints.api_url, timeout=30, headers=api_key(stack)) as api:
            for job_id, sha in jobs.items():
                job = api.get(f"/analyses/{job_id}")
                assert job.status_code == 200 and job.json()["status"] == "succeeded", job.text
                content = api.get(f"/media/{sha}/content")
                assert content.status_code == 200 and content.content == uploads[sha], sha

        refused = _invoke(["down", "--volumes"], env)  # stdin is not a terminal
        assert refused.returncode == 1, refused.stdout + refused.stderr
        line = _one_error_line(refused)
        assert [x for x in (refused.stdout + refused.stderr).splitlines() if x.strip()] == [line]
        assert "will delete volumes pg-data, redis-data, media-storage" in line, line
        assert "--yes" in line, line
        assert data_volumes <= _volume_names()
        assert docker_host.container_state(config.api_name).healthy

        declined = _invoke_on_a_terminal(["down", "--volumes"], env, "no\n")
        assert declined.returncode == 1, declined.stdout + declined.stderr
        assert "will delete volumes pg-data, redis-data, media-storage" in declined.stdout
        assert declined.stderr.strip() == "error: not confirmed: nothing stopped or deleted"
        assert data_volumes <= _volume_names()
        assert docker_host.container_state(config.api_name).healthy

        confirmed = _invoke(["down", "--volumes", "--yes"], env)
        assert confirmed.returncode == 0, confirmed.stdout + confirmed.stderr
        assert "will delete volumes pg-data, redis-data, media-storage" in confirmed.stdout
        assert not data_volumes & _volume_names()
        assert _network_id(network) == hand_made
    finally:
        _down(volumes=True)
        _clean_slate(stack.config)
        subprocess.run(["docker", "network", "rm", network], capture_output=True, timeout=60)
    stack.timings["adopt_and_down_volumes_s"] = time.monotonic() - started
    print(f"adoption + down/up + down --volumes: {stack.timings['adopt_and_down_volumes_s']:.1f}s")
