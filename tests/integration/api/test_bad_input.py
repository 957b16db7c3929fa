"""Bad input gets a clear 4xx (or 507 for an unwritable store) with a ``detail`` reason."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.api.harness import (
    ANALYSIS_TYPES,
    LiveApp,
    describe,
    fresh_settings,
    job_rows,
    running_app,
    unique_text,
    upload,
)

pytestmark = pytest.mark.usefixtures("clean_db")


def detail_of(response: httpx.Response) -> Any:
    assert response.headers.get("content-type", "").startswith("application/json"), describe(
        response
    )
    body = response.json()
    assert "detail" in body, describe(response)
    assert body["detail"], describe(response)
    return body["detail"]


def stored_files(root: Path) -> list[Path]:
    return [p for area in ("uploads", "tmp") for p in (root / area).rglob("*") if p.is_file()]


async def test_upload_over_max_upload_bytes_is_413(
    migrated_url: str, redis_url: str, tmp_path: Path
) -> None:
    settings = fresh_settings(
        db_url=migrated_url, redis_url=redis_url, data_dir=tmp_path, max_upload_bytes=1024
    )
    async with running_app(settings) as live, live.client() as client:
        too_big = await upload(client, b"x" * 4096)
        assert too_big.status_code == 413, describe(too_big)
        detail_of(too_big)
        assert stored_files(live.storage_root) == [], "a refused upload left a file behind"
        assert await job_rows(migrated_url) == []

        just_fits = await upload(client, b"y" * 1024)
        assert just_fits.status_code == 201, describe(just_fits)


async def test_unsupported_analysis_type_is_422_listing_the_allowed(
    client: httpx.AsyncClient,
) -> None:
    response = await upload(client, unique_text(), analysis_type="video-magic")
    assert response.status_code == 422, describe(response)
    detail = str(detail_of(response))
    missing = [t for t in ANALYSIS_TYPES if t not in detail]
    assert missing == [], f"detail does not list {missing}: {detail}"


async def test_empty_file_is_400(api: LiveApp, client: httpx.AsyncClient) -> None:
    response = await upload(client, b"")
    assert response.status_code == 400, describe(response)
    detail_of(response)
    assert await job_rows(api.db_url) == []


async def test_missing_file_field_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/analyses", data={"analysis_type": "basic"})
    assert response.status_code == 422, describe(response)
    detail_of(response)


@pytest.mark.parametrize("job_id", ["not-a-uuid", "123", "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz"])
async def test_malformed_job_id_is_422(client: httpx.AsyncClient, job_id: str) -> None:
    response = await client.get(f"/analyses/{job_id}")
    assert response.status_code == 422, describe(response)
    detail_of(response)


async def test_unknown_job_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/analyses/{uuid.uuid4()}")
    assert response.status_code == 404, describe(response)
    detail_of(response)


@pytest.mark.parametrize("cursor", ["!!!not-base64!!!", "bm90IGEgY3Vyc29y", "AAAA", "x"])
async def test_malformed_cursor_is_422(client: httpx.AsyncClient, cursor: str) -> None:
    response = await client.get("/analyses", params={"cursor": cursor})
    assert response.status_code == 422, describe(response)
    detail_of(response)


@pytest.mark.parametrize("limit", ["0", "-1", "201", "1000", "abc"])
async def test_limit_outside_range_is_422(client: httpx.AsyncClient, limit: str) -> None:
    response = await client.get("/analyses", params={"limit": limit})
    assert response.status_code == 422, describe(response)
    detail_of(response)


@pytest.mark.parametrize("limit", ["1", "200"])
async def test_limit_edges_are_accepted(client: httpx.AsyncClient, limit: str) -> None:
    response = await client.get("/analyses", params={"limit": limit})
    assert response.status_code == 200, describe(response)


@pytest.mark.parametrize(
    ("params", "why"),
    [
        ({"status": "exploded"}, "unknown status"),
        ({"created_from": "yesterday"}, "not a datetime"),
        ({"analysis_type": "basic\x00"}, "a NUL byte, which PostgreSQL text cannot hold"),
        ({"analysis_type": "basic\n"}, "a control character"),
    ],
)
async def test_bad_history_filters_are_422(
    client: httpx.AsyncClient, params: dict[str, str], why: str
) -> None:
    response = await client.get("/analyses", params=params)
    assert response.status_code == 422, f"{why}: {describe(response)}"
    assert all(value not in response.text for value in params.values()), "echoed the input"


@pytest.mark.parametrize(
    "sha",
    [
        "abc",
        "A" * 64,  # upper case
        "g" * 64,  # not hex
        "a" * 63,
        "a" * 65,
    ],
)
async def test_bad_sha256_is_422(client: httpx.AsyncClient, sha: str) -> None:
    for path in (f"/media/{sha}", f"/media/{sha}/content"):
        response = await client.get(path)
        assert response.status_code == 422, describe(response)
        detail_of(response)


async def test_unknown_media_is_404(client: httpx.AsyncClient) -> None:
    sha = "0" * 64
    for path in (f"/media/{sha}", f"/media/{sha}/content"):
        response = await client.get(path)
        assert response.status_code == 404, describe(response)
        detail_of(response)


async def test_unwritable_storage_is_507_and_nothing_half_written(
    api: LiveApp, client: httpx.AsyncClient
) -> None:
    """``tmp/`` and ``uploads/`` replaced by plain files: no write can succeed (even as root)."""
    root = api.storage_root
    saved: list[tuple[Path, Path]] = []
    for area in ("tmp", "uploads"):
        path = root / area
        if path.exists():
            aside = root.parent / f"{area}.aside"
            shutil.move(path, aside)
            saved.append((path, aside))
        path.write_text("not a directory")
    try:
        response = await upload(client, unique_text("unwritable"))
        assert response.status_code == 507, describe(response)
        detail_of(response)
        assert await job_rows(api.db_url) == [], "a job was recorded for an unstored file"
        # uploads cannot be stored: the API cannot serve, readiness says so
        not_ready = await client.get("/health/ready")
        assert not_ready.status_code == 503, describe(not_ready)
        assert not_ready.json()["checks"]["storage"] != "ok", describe(not_ready)
    finally:
        for area in ("tmp", "uploads"):
            (root / area).unlink(missing_ok=True)
        for path, aside in saved:
            shutil.move(aside, path)
    for area in ("tmp", "uploads"):
        (root / area).mkdir(exist_ok=True)

    recovered = await upload(client, unique_text("writable-again"))
    assert recovered.status_code == 201, describe(recovered)
    ready_again = await client.get("/health/ready")
    assert ready_again.status_code == 200, describe(ready_again)
