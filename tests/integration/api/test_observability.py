"""/metrics exposes every family with live values; logs carry request ids and no secrets."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app_patch.logs import configure_logging, redact_text

FAMILIES = {
    "ma_http_request_duration_seconds",
    "ma_db_pool_size",
    "ma_db_pool_checked_out",
    "ma_db_pool_overflow",
    "ma_db_pool_max_connections",
    "ma_db_pool_wait_seconds",
    "ma_db_pool_timeouts",
    "ma_breaker_state",
    "ma_cache_operations",
    "ma_outbox_backlog",
    "ma_storage_files",
    "ma_storage_bytes",
    "ma_retention_deletions",
    "ma_retention_bytes_freed",
}


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        out[family.name] = [(s.labels, s.value) for s in family.samples]
    return out


async def test_metrics_expose_every_family_with_live_values(
    client: httpx.AsyncClient, migrated_url: str
) -> None:
    for i in range(5):  # a short load: uploads, reads (cache hits on the second read)
        body = f"metrics sample {i} {uuid.uuid4()}".encode()
        created = await client.post("/analyses", files={"file": ("a.txt", body)})
        assert created.status_code == 201
        for _ in range(2):
            assert (await client.get(f"/analyses/{created.json()['id']}")).status_code == 200
    assert (await client.get("/analyses?limit=3")).status_code == 200

    echoed = await client.get("/health/live", headers={"X-Request-ID": "req-echo-1"})
    assert echoed.headers["X-Request-ID"] == "req-echo-1"
    assert (await client.get("/no-such-route")).headers["X-Request-ID"]  # generated

    scrape = await client.get("/metrics")
    assert scrape.status_code == 200
    found = samples(scrape.text)
    assert set(found) >= FAMILIES, FAMILIES - set(found)

    latency = {
        labels["route"]
        for labels, value in found["ma_http_request_duration_seconds"]
        if labels.get("route") and value > 0
    }
    assert {"/analyses", "/analyses/{job_id}"} <= latency
    pool = dict(
        (n, v) for n, values in found.items() for _, v in values if n.startswith("ma_db_pool_max")
    )
    assert pool["ma_db_pool_max_connections"] == 50
    breakers = {labels["dependency"]: value for labels, value in found["ma_breaker_state"]}
    assert breakers == {"postgres": 0.0, "redis": 0.0}
    hits = sum(
        value
        for labels, value in found["ma_cache_operations"]
        if labels["kind"] == "job" and labels["outcome"] == "hit"
    )
    assert hits >= 5
    uploads = {labels["area"]: value for labels, value in found["ma_storage_files"]}
    assert uploads["uploads"] >= 0 and "outbox" in uploads
    checkouts = next(
        v
        for labels, v in found["ma_db_pool_wait_seconds"]
        if "le" in labels and labels["le"] == "+Inf"
    )
    assert checkouts >= 5  # every upload took connections from the pool
    assert [v for _, v in found["ma_db_pool_timeouts"]] == [0.0]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers, root.level = handlers, level


@pytest.mark.usefixtures("restore_logging")
def test_logs_are_json_with_request_id_and_no_secrets() -> None:
    stream = io.StringIO()
    configure_logging(json=True, level="INFO", stream=stream)
    import structlog

    structlog.contextvars.bind_contextvars(request_id="req-123")
    try:
        log = structlog.get_logger("test")
        log.info(
            "connecting", url="postgresql+psycopg://media:hunter2@db:5432/x", password="hunter2"
        )
        logging.getLogger("stdlib").warning("redis at redis://:s3cret@af-redis-1:6379/0 is down")
    finally:
        structlog.contextvars.unbind_contextvars("request_id")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 2
    assert all(line["request_id"] == "req-123" for line in lines)
    text = stream.getvalue()
    assert "hunter2" not in text and "s3cret" not in text
    assert lines[0]["url"] == "postgresql+psycopg://media:***@db:5432/x"
    assert redact_text("redis://:pw@h:1/0") == "redis://:***@h:1/0"
