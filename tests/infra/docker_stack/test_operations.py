"""The running stack used as a client and an operator would: a real file uploaded through the
API container's published port lands in the containerised PostgreSQL; the cache works through
the restricted Redis user (which cannot FLUSHALL or CONFIG GET) and Redis evicts instead of
being OOM-killed; the history survives an API restart; the API's passwords rotate with one
up; ``invoke verify``, ``db-roles``, ``retention`` and ``outbox`` run as an operator does
(inside the API container, where the media volume is). The stack is the package's.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import time
from contextlib import closing
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx
import psycopg
import pytest
import redis
from redis.exceptions import NoPermissionError

from app_patch.db import libpq_conninfo
from app_patch.db_roles import role_problems
from infra import docker_host, stack_ops
from infra.engines import record
from infra.engines.containers import redis_url
from infra.in_stack import ContainerTarget, LocalTarget, StackNotRunningError
from tests.db_fingerprint import fingerprint, schema_tables
from tests.infra.support import (
    Deployed,
    compose_up,
    invoke,
    one_error_line,
    operator_env,
)
from tests.infra.traffic import TERMINAL, png
from tests.task_output import table_rows

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

WRONG_ROOT = Path("/nonexistent/wrong-root")


def _live_media(url: str) -> set[str]:
    with psycopg.connect(libpq_conninfo(url), connect_timeout=10) as conn:
        rows = conn.execute("SELECT sha256 FROM media_files WHERE deleted_at IS NULL").fetchall()
    return {str(sha) for (sha,) in rows}


def test_upload_through_the_api_container_lands_in_postgres(stack: Deployed) -> None:
    api = stack.endpoints.api_url
    assert api is not None
    with httpx.Client(base_url=api, timeout=30, headers=stack.headers) as client:
        assert client.get("/health/live").status_code == 200
        created = client.post(
            "/analyses",
            files={"file": ("sample.png", png(), "image/png")},
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

    with psycopg.connect(libpq_conninfo(stack.endpoints.database_url), connect_timeout=10) as conn:
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
        base_url=stack.endpoints.api_url, timeout=30, headers=stack.headers
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
    configured = admin.config_get("maxmemory")["maxmemory"]
    assert configured is not None
    maxmemory = int(configured)
    assert admin.config_get("maxmemory-policy")["maxmemory-policy"] == "allkeys-lru"
    value = secrets.token_bytes(64 * 1024)
    batches, per_batch = (maxmemory * 8 // 5) // (len(value) * 64) + 1, 64
    failed_api: list[int] = []
    started = time.monotonic()
    try:
        with httpx.Client(
            base_url=stack.endpoints.api_url or "", timeout=10, headers=stack.headers
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
        base_url=stack.endpoints.api_url, timeout=30, headers=stack.headers
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
    endpoints = compose_up(stack.config, rotated)

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
        psycopg.connect(libpq_conninfo(stale_db), connect_timeout=10).close()
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
    verify = invoke(["verify"], operator_env(stack.passwords))
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
    by_file = invoke(["db-roles", "--admin-url-file", str(url_file)], operator_env(stack.passwords))
    by_env = invoke(["db-roles"], operator_env(stack.passwords, MA_INFRA_ADMIN_URL=admin))
    for proc in (by_file, by_env):
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "media_owner (owner) and media_app (app) ready in media_analysis" in proc.stdout
        assert stack.passwords["postgres_password"] not in proc.stdout + proc.stderr
    missing = invoke(["db-roles"], operator_env(stack.passwords))
    assert missing.returncode == 1
    assert "MA_INFRA_ADMIN_URL" in one_error_line(missing)
    assert stack.endpoints.app_database_url is not None
    assert role_problems(stack.endpoints.app_database_url) == []


def test_retention_task_runs_in_the_api_container(stack: Deployed) -> None:
    """The reviewer's case: with the compose stack up, `invoke retention` sweeps the stack's
    volume (inside the API container), not the host's .data/storage, so no upload is taken for
    a missing file."""
    api, url = stack.endpoints.api_url, stack.endpoints.database_url
    assert api is not None
    uploads: dict[str, bytes] = {}
    with httpx.Client(base_url=api, timeout=30, headers=stack.headers) as client:
        for i in range(20):
            body = png((i * 12, 255 - i * 12, (i * 37) % 256), (32 + i, 24))
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
    proc = invoke(["retention"], operator_env(stack.passwords))
    stack.timings["invoke_retention_s"] = time.monotonic() - started
    print(f"invoke retention (in the API container): {stack.timings['invoke_retention_s']:.1f}s")

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"(in {stack.config.api_name})" in proc.stdout, proc.stdout
    rows = table_rows(proc.stdout)
    assert rows.get("missing") == (0, 0), proc.stdout
    assert rows.get("total") == (0, 0), proc.stdout
    assert _live_media(url) == live_before, "nothing live was deleted"
    with httpx.Client(base_url=api, timeout=30, headers=stack.headers) as client:
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
    before = fingerprint(url, schema_tables(url))
    try:
        proc = invoke(["retention"], operator_env(stack.passwords, MA_STORAGE_ROOT=str(WRONG_ROOT)))
    finally:
        if created_top and WRONG_ROOT.parent.exists():
            shutil.rmtree(WRONG_ROOT.parent)  # only what this run may have created

    assert proc.returncode == 1, proc.stdout + proc.stderr
    one_error_line(proc)
    assert fingerprint(url, schema_tables(url)) == before, "nothing in the database changed"


def test_tasks_refuse_in_one_line_when_the_api_container_is_not_running(
    stack: Deployed, tmp_path: Path
) -> None:
    """A recorded stack whose API container is gone: no silent run on the host's store."""
    state = json.loads(record.state_file().read_text(encoding="utf-8"))
    state["config"]["api_name"] = f"ma-no-such-api-{secrets.token_hex(3)}"
    other = tmp_path / "infra-stack.json"
    other.write_text(json.dumps(state), encoding="utf-8")
    env = operator_env(stack.passwords, MA_INFRA_STATE_FILE=str(other))

    for args in (["retention", "--dry-run"], ["outbox"]):
        proc = invoke(args, env)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        line = one_error_line(proc)
        assert state["config"]["api_name"] in line and "invoke up" in line, line

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MA_INFRA_STATE_FILE", str(other))
        with pytest.raises(StackNotRunningError, match="invoke up"):
            stack_ops.file_store_target({})


def test_outbox_task_lists_and_retries_in_the_api_container(stack: Deployed) -> None:
    env = operator_env(stack.passwords)
    listed = invoke(["outbox"], env)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert f"outbox in {stack.config.api_name}" in listed.stdout, listed.stdout

    missing = invoke(["outbox", "--retry", "no-such-entry"], env)
    assert missing.returncode == 1, missing.stdout + missing.stderr
    assert "no-such-entry" in one_error_line(missing)
