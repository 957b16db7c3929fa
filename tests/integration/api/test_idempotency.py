"""Idempotency-Key: a retried or raced upload yields one job, never two."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from tests.integration.api.harness import LiveApp, describe, job_rows, unique_text, upload

pytestmark = pytest.mark.usefixtures("clean_db")


async def test_same_key_twice_returns_the_same_job(api: LiveApp, client: httpx.AsyncClient) -> None:
    key = f"retry-{uuid.uuid4()}"
    content = unique_text("idem")
    first = await upload(client, content, idempotency_key=key)
    second = await upload(client, content, idempotency_key=key)

    assert first.status_code == 201, describe(first)
    assert second.status_code == 200, describe(second)
    assert second.json()["id"] == first.json()["id"]
    assert first.json()["idempotency_key"] == key
    assert second.json()["idempotency_key"] == key
    assert second.json()["status"] == first.json()["status"]

    rows = await job_rows(api.db_url, "idempotency_key = %s", (key,))
    assert rows == [uuid.UUID(first.json()["id"])]
    assert len(await job_rows(api.db_url)) == 1

    # a different key makes a different job, even for the same bytes
    other = await upload(client, content, idempotency_key=f"{key}-other")
    assert other.status_code == 201, describe(other)
    assert other.json()["id"] != first.json()["id"]
    assert len(await job_rows(api.db_url)) == 2


async def test_ten_concurrent_requests_with_one_key_make_one_job(
    api: LiveApp, client: httpx.AsyncClient
) -> None:
    key = f"race-{uuid.uuid4()}"
    content = unique_text("race")
    responses = await asyncio.wait_for(
        asyncio.gather(*(upload(client, content, idempotency_key=key) for _ in range(10))), 60
    )

    failed = [describe(r) for r in responses if not 200 <= r.status_code < 300]
    assert failed == [], "\n".join(failed)
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1, f"{len(ids)} different jobs for one key: {sorted(ids)}"
    rows = await job_rows(api.db_url, "idempotency_key = %s", (key,))
    assert rows == [uuid.UUID(ids.pop())]
    assert len(await job_rows(api.db_url)) == 1

    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 9 + [201], f"expected one 201 and nine 200, got {codes}"
