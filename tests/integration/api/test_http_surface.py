"""The HTTP surface: API keys, what /metrics and the docs expose, what error bodies echo, and
how stored bytes are served."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from app_patch.access import key_digest
from app_patch.settings import ApiSettings
from tests.integration.api.harness import (
    LiveApp,
    describe,
    fresh_settings,
    running_app,
    unique_text,
    upload,
)

pytestmark = pytest.mark.usefixtures("clean_db")
KEY = "a-long-random-api-key-for-tests"


@pytest.fixture
async def keyed(migrated_url: str, redis_url: str, tmp_path: Path) -> AsyncIterator[LiveApp]:
    settings = fresh_settings(db_url=migrated_url, redis_url=redis_url, data_dir=tmp_path)
    keys_file = tmp_path / "api-keys"
    keys_file.write_text(f"{key_digest('another-key')}\nsha256:{key_digest(KEY)}\n")
    settings.api = ApiSettings(keys_file=keys_file, metrics_access="key", docs_access="off")
    async with running_app(settings) as live:
        yield live


async def test_routes_need_a_key_except_health(keyed: LiveApp) -> None:
    async with keyed.client() as client:
        for path in ("/health/live", "/health/ready"):
            assert (await client.get(path)).status_code == 200, path
        for path in ("/analyses", "/metrics"):
            denied = await client.get(path)
            assert denied.status_code == 401, describe(denied)
            assert denied.headers["www-authenticate"] == "ApiKey"
            wrong = await client.get(path, headers={"X-API-Key": "not-the-key"})
            assert wrong.status_code == 401, describe(wrong)
            ok = await client.get(path, headers={"X-API-Key": KEY})
            assert ok.status_code == 200, describe(ok)
            bearer = await client.get(path, headers={"Authorization": f"Bearer {KEY}"})
            assert bearer.status_code == 200, describe(bearer)
        refused_upload = await upload(client, unique_text("no key"))
        assert refused_upload.status_code == 401, describe(refused_upload)
        for path in ("/docs", "/openapi.json", "/redoc"):
            off = await client.get(path, headers={"X-API-Key": KEY})
            assert off.status_code == 404, describe(off)


async def test_open_by_default(client: httpx.AsyncClient) -> None:
    assert (await client.get("/analyses")).status_code == 200
    assert (await client.get("/openapi.json")).status_code == 200
    assert (await client.get("/metrics")).status_code == 200


async def test_validation_errors_never_echo_the_input(client: httpx.AsyncClient) -> None:
    marker = "Q" * 100_000
    response = await upload(client, unique_text("ref"), client_ref=marker)
    assert response.status_code == 422, describe(response)
    assert len(response.content) < 2000 and "QQQQQQQQ" not in response.text
    bad_limit = await client.get("/analyses", params={"limit": "9" * 5000})
    assert bad_limit.status_code == 422 and "99999999" not in bad_limit.text


async def test_stored_bytes_are_served_as_an_inert_attachment(client: httpx.AsyncClient) -> None:
    html = b"<html><script>alert(1)</script></html>" + unique_text("page")
    stored = await upload(client, html, filename="page.html", content_type="text/html")
    assert stored.status_code == 201, describe(stored)
    sha = stored.json()["result"]["result"]["sha256"]
    served = await client.get(f"/media/{sha}/content")
    assert served.status_code == 200 and served.content == html
    assert served.headers["x-content-type-options"] == "nosniff"
    assert served.headers["content-disposition"].startswith("attachment")
    assert served.headers["content-security-policy"] == "sandbox"


async def test_listings_never_show_idempotency_keys(client: httpx.AsyncClient) -> None:
    mine = await upload(client, unique_text("keyed"), idempotency_key="private-key-123")
    assert mine.status_code == 201 and mine.json()["idempotency_key"] == "private-key-123"
    page = await client.get("/analyses")
    assert page.status_code == 200
    assert [item["idempotency_key"] for item in page.json()["items"]] == [None]
    assert "private-key-123" not in page.text
