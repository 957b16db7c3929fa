"""Nothing lost, nothing wrongly deleted: idempotency across outages, a poison-proof outbox,
retention that tells the cache, and stored files that are always closed."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import uuid
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from app_patch.db import create_engine
from app_patch.embedded import EmbeddedPostgres
from app_patch.retention import Policy, Sweeper
from app_patch.settings import RetentionSettings
from app_patch.storage import Storage
from tests.integration.api.harness import (
    LiveApp,
    describe,
    fresh_settings,
    job_rows,
    metric_values,
    ready,
    running_app,
    scalar,
    unique_text,
    upload,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("clean_db")


async def test_reused_key_with_other_bytes_is_a_conflict(
    api: LiveApp, client: httpx.AsyncClient
) -> None:
    key = f"k-{uuid.uuid4()}"
    first = await upload(client, unique_text("one"), idempotency_key=key)
    assert first.status_code == 201, describe(first)
    other = await upload(client, unique_text("two"), idempotency_key=key)
    assert other.status_code == 409, describe(other)
    assert "Idempotency-Key" in other.json()["detail"]
    same_bytes_other_type = await upload(
        client, b"x" * 10, idempotency_key=key, analysis_type="auto"
    )
    assert same_bytes_other_type.status_code == 409, describe(same_bytes_other_type)
    assert len(await job_rows(api.db_url)) == 1


async def test_client_ref_with_control_characters_is_refused(client: httpx.AsyncClient) -> None:
    for ref in ("nul\x00inside", "bell\x07", "line\nbreak"):
        response = await upload(client, unique_text("ref"), client_ref=ref)
        assert response.status_code == 422, describe(response)


async def test_same_key_during_an_outage_is_one_job_bound_to_the_key(
    dedicated_pg: EmbeddedPostgres, redis_url: str, tmp_path: Path
) -> None:
    settings = fresh_settings(db_url=dedicated_pg.url, redis_url=redis_url, data_dir=tmp_path)
    async with running_app(settings) as live, live.client(timeout=30) as client:
        before = await upload(client, unique_text("warm"))
        assert before.status_code == 201, describe(before)
        await asyncio.to_thread(dedicated_pg.stop)

        key = f"outage-{uuid.uuid4()}"
        content = unique_text("outage")
        answers = [await upload(client, content, idempotency_key=key) for _ in range(3)]
        assert [a.status_code for a in answers] == [202, 202, 202], [describe(a) for a in answers]
        assert len({a.json()["id"] for a in answers}) == 1, "one job id for one key"
        conflict = await upload(client, unique_text("other bytes"), idempotency_key=key)
        assert conflict.status_code == 409, describe(conflict)

        await asyncio.to_thread(dedicated_pg.restart)
        job_id = uuid.UUID(answers[0].json()["id"])
        _, body = await wait_for(
            lambda: ready(client),
            lambda v: v[1].get("outbox_backlog") == 0 and v[1]["checks"]["postgres"] == "ok",
            timeout_s=30,
        )
        assert body["outbox_backlog"] == 0, body
        rows = await job_rows(dedicated_pg.url, "idempotency_key = %s", (key,))
        assert rows == [job_id], "present once, still bound to the key"
        again = await upload(client, content, idempotency_key=key)
        assert again.status_code == 200 and again.json()["id"] == str(job_id), describe(again)
        late_conflict = await upload(client, unique_text("other"), idempotency_key=key)
        assert late_conflict.status_code == 409, describe(late_conflict)


async def test_poison_entry_does_not_block_replay_and_shows(
    dedicated_pg: EmbeddedPostgres, redis_url: str, tmp_path: Path
) -> None:
    """Entries that cannot land (NUL in a field, truncated JSON) sit in outbox/failed/, the
    rest lands; /metrics, /health/ready and `python -m app_patch.outbox` show them."""
    settings = fresh_settings(db_url=dedicated_pg.url, redis_url=redis_url, data_dir=tmp_path)
    async with running_app(settings) as live, live.client(timeout=30) as client:
        await asyncio.to_thread(dedicated_pg.stop)
        deferred = [await upload(client, unique_text(f"deferred {n}")) for n in range(4)]
        assert [d.status_code for d in deferred] == [202] * 4, [describe(d) for d in deferred]
        first = live.outbox_dir / f"{deferred[0].json()['id']}.json"
        poisoned = first.read_bytes().replace(b'"client_ref":null', b'"client_ref":"a\\u0000b"')
        assert poisoned != first.read_bytes()
        first.write_bytes(poisoned)
        os.utime(first, (1, 1))  # the oldest: replayed first
        truncated = live.outbox_dir / f"{uuid.uuid4()}.json"
        truncated.write_bytes(b'{"version": 2, "job": {"id": ')
        os.utime(truncated, (2, 2))

        await asyncio.to_thread(dedicated_pg.restart)
        _, body = await wait_for(
            lambda: ready(client),
            lambda v: v[1].get("outbox_backlog") == 0 and v[1].get("outbox_failed") == 2,
            timeout_s=30,
        )
        assert body["outbox_failed"] == 2 and body["checks"]["outbox"] == "degraded", body
        landed = {uuid.UUID(d.json()["id"]) for d in deferred[1:]}
        assert landed <= set(await job_rows(dedicated_pg.url)), "the good entries landed"
        metrics = (await client.get("/metrics")).text
        assert metric_values(metrics, "ma_outbox_failed") == {"ma_outbox_failed": 2.0}

    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "app_patch.outbox", "list", "--json"),
        env={**os.environ, "MA_STORAGE_ROOT": str(settings.storage.root)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert str(deferred[0].json()["id"]) in out.decode() and truncated.stem in out.decode()


async def test_media_deleted_by_retention_is_404_at_once(
    api: LiveApp, client: httpx.AsyncClient
) -> None:
    content = unique_text("short-lived")
    stored = await upload(client, content)
    assert stored.status_code == 201, describe(stored)
    sha = stored.json()["result"]["result"]["sha256"]
    warm = await client.get(f"/media/{sha}")
    assert warm.status_code == 200, describe(warm)  # now cached for an hour
    expired = await scalar(
        api.db_url,
        "UPDATE media_files SET expires_at = now() - interval '1 day' RETURNING 1",
    )
    assert expired == 1

    from app_patch.cache import Kind, RedisCache
    from app_patch.server_urls import redis_url as configured_redis

    cache = RedisCache(api.settings, configured_redis(api.settings))

    async def forget(digests: list[str]) -> None:
        for digest in digests:
            await cache.invalidate(Kind.media, digest)

    engine = create_engine(api.settings.db, api.db_url)
    try:
        storage = await Storage.open(api.settings.storage, clean_tmp=False)
        report = await Sweeper(engine, storage, RetentionSettings(), on_media_deleted=forget).sweep(
            policies=[Policy.uploads]
        )
    finally:
        await engine.dispose()
        await cache.close()
    assert report.policies[Policy.uploads].objects == 1
    gone = await client.get(f"/media/{sha}")
    assert gone.status_code == 404, describe(gone)
    content_gone = await client.get(f"/media/{sha}/content")
    assert content_gone.status_code == 404, describe(content_gone)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_content_reads_abandoned_by_the_client_leak_no_descriptor(
    api: LiveApp, client: httpx.AsyncClient
) -> None:
    big = os.urandom(3 * 1024 * 1024)  # several chunks: the client leaves mid-body
    stored = await upload(client, big)
    assert stored.status_code == 201, describe(stored)
    sha = stored.json()["result"]["result"]["sha256"]
    url = urlparse(api.base_url)
    request = f"GET /media/{sha}/content HTTP/1.1\r\nHost: x\r\n\r\n".encode()

    def abandon() -> None:
        with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
            sock.sendall(request)
            sock.recv(1024)  # headers arrive, then we hang up

    await asyncio.sleep(0.2)
    before = _open_fds()
    for _ in range(30):
        await asyncio.to_thread(abandon)
    settled = await wait_for(
        lambda: asyncio.sleep(0, _open_fds()), lambda n: n <= before + 2, timeout_s=10
    )
    assert settled <= before + 2, f"{settled - before} descriptors leaked by 30 abandoned reads"
