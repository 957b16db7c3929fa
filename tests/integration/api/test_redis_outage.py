"""Redis goes away under a mixed load: the cache is bypassed and no request fails."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from app_patch.embedded import EmbeddedRedis
from tests.integration.api.harness import (
    describe,
    job_rows,
    make_settings,
    ready,
    running_app,
    unique_text,
    upload,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("clean_db")

PHASE_REQUESTS = 40
CONCURRENCY = 8


class MixedLoad:
    """Uploads plus reads of jobs, history and media; remembers what it created."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.job_ids: list[str] = []
        self.shas: list[str] = []
        self.responses: list[httpx.Response] = []
        self.wrong: list[str] = []
        self._gate = asyncio.Semaphore(CONCURRENCY)

    async def upload_one(self, label: str) -> None:
        content = unique_text(label)
        response = await upload(self.client, content)
        self.responses.append(response)
        if response.status_code == 201:
            self.job_ids.append(response.json()["id"])
            self.shas.append(hashlib.sha256(content).hexdigest())

    async def one(self, i: int, label: str) -> None:
        async with self._gate:
            kind = i % 4
            if kind == 0 or not self.job_ids:
                await self.upload_one(f"{label}-{i}")
                return
            job_id = self.job_ids[i % len(self.job_ids)]
            if kind == 1:
                response = await self.client.get(f"/analyses/{job_id}")
                if response.status_code == 200 and response.json()["id"] != job_id:
                    self.wrong.append(f"asked {job_id}, got {response.json()['id']}")
            elif kind == 2:
                response = await self.client.get("/analyses", params={"limit": 200})
            else:
                sha = self.shas[i % len(self.shas)]
                response = await self.client.get(f"/media/{sha}")
                if response.status_code == 200 and response.json()["sha256"] != sha:
                    self.wrong.append(f"asked media {sha}, got {response.json()['sha256']}")
            self.responses.append(response)

    async def phase(self, label: str, count: int = PHASE_REQUESTS) -> None:
        await asyncio.wait_for(asyncio.gather(*(self.one(i, label) for i in range(count))), 120)

    def failures(self) -> list[str]:
        return [describe(r) for r in self.responses if not 200 <= r.status_code < 300]


async def test_redis_outage_under_mixed_load(
    dedicated_redis: EmbeddedRedis, migrated_url: str, tmp_path: Path
) -> None:
    settings = make_settings(db_url=migrated_url, redis_url=dedicated_redis.url, data_dir=tmp_path)
    async with running_app(settings) as live, live.client(timeout=30) as client:
        load = MixedLoad(client)
        for i in range(4):
            await load.upload_one(f"seed-{i}")
        await load.phase("warm")  # the cache fills up

        status, body = await ready(client)
        assert status == 200 and body["checks"]["redis"] == "ok", body

        # Redis is stopped while the load runs, then the load goes on without it
        await asyncio.gather(load.phase("during"), asyncio.to_thread(dedicated_redis.stop))
        assert dedicated_redis.pid() is None, "redis-server still running"
        before_down = len(load.job_ids)
        await load.phase("down")
        assert len(load.job_ids) > before_down

        failed = load.failures()
        assert failed == [], f"{len(failed)} requests failed:\n" + "\n".join(failed[:20])
        assert load.wrong == []

        status, body = await ready(client)
        assert status == 200, f"readiness with Redis down must stay 200: {status} {body}"
        assert body["checks"]["redis"] in {"degraded", "down"}, body
        assert body["checks"]["postgres"] == "ok", body
        assert body["status"] != "down", body

        # with the cache bypassed, history shows the jobs created while Redis was down
        page = await client.get("/analyses", params={"limit": 200})
        assert page.status_code == 200, describe(page)
        listed = {item["id"] for item in page.json()["items"]}
        assert set(load.job_ids) <= listed, set(load.job_ids) - listed

        # Redis back: readiness returns to ok within a bounded wait, no request failed meanwhile
        await asyncio.to_thread(dedicated_redis.start)
        await load.phase("back", count=12)

        async def read_then_ready() -> tuple[int, dict[str, Any]]:
            # readiness reports the cache breaker, which only learns from cache traffic
            await load.one(1, "probe")
            return await ready(client)

        status, body = await wait_for(
            read_then_ready,
            lambda v: v[1].get("checks", {}).get("redis") == "ok",
            timeout_s=15,
            interval_s=0.3,
        )
        assert status == 200 and body["checks"]["redis"] == "ok", body
        failed = load.failures()
        assert failed == [], f"{len(failed)} requests failed:\n" + "\n".join(failed[:20])

        rows = {str(job_id) for job_id in await job_rows(live.db_url)}
        assert rows == set(load.job_ids), "PostgreSQL and the answers disagree"
