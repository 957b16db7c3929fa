"""200 concurrent requests against the 50-connection pool (20 + 30 overflow)."""

from __future__ import annotations

import asyncio
import hashlib
import time

import httpx
import pytest

from tests.integration.api.harness import (
    LiveApp,
    describe,
    job_rows,
    metric_values,
    ready,
    timeout_counters,
    unique_text,
    upload,
)

pytestmark = pytest.mark.usefixtures("clean_db")

TOTAL = 200
UPLOADS = 100
SEEDS = 5


async def test_200_concurrent_requests_fit_the_pool(api: LiveApp) -> None:
    assert api.settings.db.pool_size == 20
    assert api.settings.db.max_overflow == 30
    async with api.client(timeout=90, connections=TOTAL + 20) as client:
        seeds: list[tuple[str, str]] = []
        for i in range(SEEDS):
            content = unique_text(f"seed-{i}")
            created = await upload(client, content)
            assert created.status_code == 201, describe(created)
            seeds.append((created.json()["id"], hashlib.sha256(content).hexdigest()))

        start = asyncio.Event()

        async def one(i: int) -> tuple[str, httpx.Response]:
            await start.wait()  # everyone leaves at once
            if i < UPLOADS:
                return "upload", await upload(client, unique_text(f"load-{i}"))
            job_id, sha = seeds[i % SEEDS]
            match i % 4:
                case 0:
                    return "job", await client.get(f"/analyses/{job_id}")
                case 1:
                    return "history", await client.get("/analyses", params={"limit": 50})
                case 2:
                    return "media", await client.get(f"/media/{sha}")
                case _:
                    return "history-filtered", await client.get(
                        "/analyses", params={"status": "succeeded", "limit": 20}
                    )

        tasks = [asyncio.create_task(one(i)) for i in range(TOTAL)]
        await asyncio.sleep(0.05)
        started = time.monotonic()
        start.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks), 120)
        elapsed = time.monotonic() - started

        failed = [
            f"[{kind}] {describe(r)}" for kind, r in results if not 200 <= r.status_code < 300
        ]
        assert failed == [], f"{len(failed)}/{TOTAL} failed in {elapsed:.1f} s:\n" + "\n".join(
            failed[:20]
        )
        # an upload answered from the outbox would hide a pool timeout: all must be stored
        deferred = [describe(r) for kind, r in results if kind == "upload" and r.status_code != 201]
        assert deferred == [], "\n".join(deferred[:20])

        assert len(await job_rows(api.db_url)) == SEEDS + UPLOADS
        status, body = await ready(client)
        assert status == 200 and body["outbox_backlog"] == 0, body

        metrics = await client.get("/metrics")
        assert metrics.status_code == 200, describe(metrics)
        pool_timeouts = metric_values(metrics.text, "ma_db_pool_timeouts_total")
        assert pool_timeouts, "/metrics has no ma_db_pool_timeouts_total"
        assert set(pool_timeouts.values()) == {0.0}, pool_timeouts
        timeouts = timeout_counters(metrics.text)
        assert timeouts == {}, f"pool/operation timeouts reported: {timeouts}"
        max_conn = metric_values(metrics.text, "ma_db_pool_max_connections")
        if max_conn:
            assert set(max_conn.values()) == {50.0}, max_conn
