"""Upload -> analysis -> history -> media -> stored file, over real HTTP with real services."""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.integration.api.harness import (
    LiveApp,
    describe,
    job_rows,
    png_bytes,
    unique_text,
    upload,
    wav_bytes,
)

pytestmark = pytest.mark.usefixtures("clean_db")

JOB_KEYS = {
    "id",
    "media_file_id",
    "analysis_type",
    "status",
    "params",
    "client_ref",
    "idempotency_key",
    "created_at",
    "started_at",
    "finished_at",
    "error",
    "attempts",
    "result",
}
RESULT_KEYS = {
    "result",
    "summary",
    "engine_name",
    "engine_version",
    "duration_ms",
    "created_at",
}
MEDIA_KEYS = {
    "id",
    "sha256",
    "size_bytes",
    "content_type",
    "original_name",
    "storage_key",
    "created_at",
    "last_accessed_at",
}


def assert_job_shape(job: dict[str, Any]) -> None:
    assert set(job) >= JOB_KEYS, f"job JSON misses {JOB_KEYS - set(job)}: {job}"
    uuid.UUID(job["id"])
    datetime.fromisoformat(job["created_at"])
    assert job["status"] in {"queued", "running", "succeeded", "failed"}


async def test_png_image_analysis_end_to_end(api: LiveApp, client: httpx.AsyncClient) -> None:
    content = png_bytes(37, 21, seed=1)
    sha = hashlib.sha256(content).hexdigest()

    created = await upload(
        client,
        content,
        analysis_type="image",
        filename="pixel.png",
        content_type="image/png",
        client_ref="e2e-png",
    )
    assert created.status_code == 201, describe(created)
    job = created.json()
    assert_job_shape(job)
    assert job["status"] == "succeeded", job
    assert job["analysis_type"] == "image"
    assert job["client_ref"] == "e2e-png"
    assert job["error"] is None
    assert job["finished_at"] is not None
    assert set(job["result"]) >= RESULT_KEYS, job["result"]
    facts = job["result"]["result"]
    assert facts["sha256"] == sha
    assert facts["size_bytes"] == len(content)
    assert facts["content_type"] == "image/png"
    assert facts["image"]["width"] == 37
    assert facts["image"]["height"] == 21
    assert facts["image"]["format"] == "PNG"

    # the job reads back with its result
    fetched = await client.get(f"/analyses/{job['id']}")
    assert fetched.status_code == 200, describe(fetched)
    again = fetched.json()
    assert again["id"] == job["id"]
    assert again["status"] == "succeeded"
    assert again["result"]["result"]["image"] == facts["image"]

    # history lists it, also through the filters
    history = await client.get("/analyses", params={"limit": 10})
    assert history.status_code == 200, describe(history)
    page = history.json()
    assert set(page) >= {"items", "next_cursor"}
    assert [item["id"] for item in page["items"]] == [job["id"]]
    filtered = await client.get(
        "/analyses", params={"status": "succeeded", "analysis_type": "image"}
    )
    assert filtered.status_code == 200, describe(filtered)
    assert job["id"] in [item["id"] for item in filtered.json()["items"]]
    other = await client.get("/analyses", params={"status": "failed"})
    assert other.status_code == 200, describe(other)
    assert job["id"] not in [item["id"] for item in other.json()["items"]]

    # the media row points at the content-addressed file, byte for byte
    media = await client.get(f"/media/{sha}")
    assert media.status_code == 200, describe(media)
    row = media.json()
    assert set(row) >= MEDIA_KEYS, row
    assert row["sha256"] == sha
    assert row["size_bytes"] == len(content)
    assert row["id"] == job["media_file_id"]
    assert row["storage_key"] == f"uploads/{sha[:2]}/{sha[2:4]}/{sha}"
    stored = api.storage_root / row["storage_key"]
    assert stored.is_file(), f"{stored} missing"
    assert stored.read_bytes() == content

    body = await client.get(f"/media/{sha}/content")
    assert body.status_code == 200, describe(body)
    assert body.content == content

    # and it is really in PostgreSQL
    assert await job_rows(api.db_url) == [uuid.UUID(job["id"])]


async def test_wav_audio_analysis(client: httpx.AsyncClient) -> None:
    content = wav_bytes(seconds=1.0, sample_rate=8000, channels=1)
    created = await upload(
        client, content, analysis_type="audio", filename="tone.wav", content_type="audio/wav"
    )
    assert created.status_code == 201, describe(created)
    job = created.json()
    assert job["status"] == "succeeded", job
    audio = job["result"]["result"]["audio"]
    assert {"codec", "duration_s", "sample_rate", "channels", "bitrate", "mime"} <= set(audio)
    assert audio["duration_s"] == pytest.approx(1.0, abs=0.01)
    assert audio["sample_rate"] == 8000
    assert audio["channels"] == 1

    fetched = await client.get(f"/analyses/{job['id']}")
    assert fetched.status_code == 200, describe(fetched)
    assert fetched.json()["result"]["result"]["audio"]["sample_rate"] == 8000


async def test_auto_detects_image(client: httpx.AsyncClient) -> None:
    created = await upload(client, png_bytes(8, 9, seed=2), analysis_type="auto")
    assert created.status_code == 201, describe(created)
    facts = created.json()["result"]["result"]
    assert facts["content_type"] == "image/png"
    assert (facts["image"]["width"], facts["image"]["height"]) == (8, 9)


async def test_default_analysis_type_is_auto(client: httpx.AsyncClient) -> None:
    created = await upload(client, unique_text(), analysis_type=None)
    assert created.status_code == 201, describe(created)
    assert created.json()["analysis_type"] == "auto"


async def test_text_as_image_fails_with_readable_error(client: httpx.AsyncClient) -> None:
    created = await upload(
        client, b"just some text, not pixels\n", analysis_type="image", content_type="text/plain"
    )
    assert created.status_code == 201, describe(created)
    job = created.json()
    assert job["status"] == "failed", job
    assert isinstance(job["error"], str) and job["error"].strip(), job
    assert job["finished_at"] is not None

    fetched = await client.get(f"/analyses/{job['id']}")
    assert fetched.status_code == 200, describe(fetched)
    assert fetched.json()["status"] == "failed"
    assert fetched.json()["error"] == job["error"]

    failed = await client.get("/analyses", params={"status": "failed"})
    assert job["id"] in [item["id"] for item in failed.json()["items"]]


async def test_same_content_is_stored_once(api: LiveApp, client: httpx.AsyncClient) -> None:
    content = unique_text("dedup")
    first = await upload(client, content)
    second = await upload(client, content)
    assert first.status_code == 201, describe(first)
    assert second.status_code == 201, describe(second)
    assert first.json()["id"] != second.json()["id"]
    assert first.json()["media_file_id"] == second.json()["media_file_id"]
    sha = hashlib.sha256(content).hexdigest()
    assert [p.name for p in api.storage_root.glob("uploads/*/*/*")] == [sha]


async def test_history_pagination_walks_every_job_once(client: httpx.AsyncClient) -> None:
    ids = []
    for _ in range(7):
        created = await upload(client, unique_text("page"))
        assert created.status_code == 201, describe(created)
        ids.append(created.json()["id"])

    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(10):  # bounded: 7 jobs / 3 per page = 3 pages
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        response = await client.get("/analyses", params=params)
        assert response.status_code == 200, describe(response)
        page = response.json()
        assert len(page["items"]) <= 3
        seen.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert cursor is None, "pagination did not end"
    seen_ids = [item["id"] for item in seen]
    assert len(seen_ids) == len(set(seen_ids)), "a job appeared on two pages"
    assert seen_ids == list(reversed(ids)), "history is not newest first"
    stamps = [datetime.fromisoformat(item["created_at"]) for item in seen]
    assert stamps == sorted(stamps, reverse=True)


async def test_history_created_range_filter(client: httpx.AsyncClient) -> None:
    created = await upload(client, unique_text("range"))
    assert created.status_code == 201, describe(created)
    job = created.json()
    stamp = datetime.fromisoformat(job["created_at"])

    async def listed(**params: str) -> list[str]:
        response = await client.get("/analyses", params={**params, "limit": "200"})
        assert response.status_code == 200, describe(response)
        return [item["id"] for item in response.json()["items"]]

    # the range is half-open: created_from <= created_at < created_to
    inside = await listed(
        created_from=stamp.isoformat(), created_to=(stamp + timedelta(seconds=1)).isoformat()
    )
    assert job["id"] in inside
    assert job["id"] not in await listed(created_to=stamp.isoformat())
    assert job["id"] in await listed(created_from=stamp.isoformat())
    after = await client.get("/analyses", params={"created_from": "2999-01-01T00:00:00+00:00"})
    assert after.status_code == 200, describe(after)
    assert after.json()["items"] == []


async def test_health_and_metrics(client: httpx.AsyncClient) -> None:
    live = await client.get("/health/live")
    assert live.status_code == 200, describe(live)
    assert live.json()["status"] == "ok"
    assert len(live.json()["instance"]) == 32, "an id that tells this process from another"

    ready = await client.get("/health/ready")
    assert ready.status_code == 200, describe(ready)
    body = ready.json()
    assert body["status"] == "ok", body
    assert body["checks"] == {
        "postgres": "ok",
        "redis": "ok",
        "storage": "ok",
        "outbox": "ok",
    }, body
    assert body["outbox_backlog"] == 0
    assert isinstance(body["storage_usage"], dict)

    await upload(client, unique_text("metrics"))
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200, describe(metrics)
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "# TYPE" in metrics.text
    assert "ma_http_request_duration_seconds" in metrics.text
