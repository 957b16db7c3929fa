"""Pure parts of the cache: keys, TTL policy with jitter, envelopes, client configuration."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr
from redis.asyncio.connection import SSLConnection

from app_patch.cache import (
    Envelope,
    Kind,
    RedisCache,
    TtlPolicy,
    cache_key,
    decode,
    encode_body,
    history_digest,
    history_key,
    jittered_ttl_ms,
    job_placement,
    make_client,
    parse_envelope,
    ttl_range_ms,
)
from app_patch.models import JobStatus
from app_patch.schemas import HistoryFilter, JobOut, ResultOut
from app_patch.settings import CacheSettings, RedisSettings, Settings


def a_job(status: JobStatus = JobStatus.queued) -> JobOut:
    now = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    finished = status.finished
    return JobOut(
        id=uuid.uuid4(),
        media_file_id=None,
        analysis_type="basic",
        status=status,
        params={"depth": 2, "tags": ["a", "b"], "nested": {"x": 1.5}},
        client_ref="c-1",
        idempotency_key=None,
        created_at=now,
        started_at=now if status is not JobStatus.queued else None,
        finished_at=now if finished else None,
        error=None,
        attempts=1,
        result=ResultOut(
            result={"ok": True},
            summary="fine",
            engine_name="basic",
            engine_version="1",
            duration_ms=2.5,
            created_at=now,
        )
        if status is JobStatus.succeeded
        else None,
    )


def test_keys_follow_the_namespace() -> None:
    assert cache_key(Kind.job, "abc") == "ma:v1:job:abc"
    assert cache_key(Kind.media, "ff" * 32) == f"ma:v1:media:{'ff' * 32}"
    assert history_key(42, "d" * 32) == f"ma:v1:history:42:{'d' * 32}"


def test_history_digest_names_exactly_one_page() -> None:
    base = history_digest(50, None, None)
    assert base == history_digest(50, None, HistoryFilter())
    assert len(base) == 32
    others = {
        history_digest(51, None, None),
        history_digest(50, "cursor", None),
        history_digest(50, None, HistoryFilter(status=JobStatus.failed)),
        history_digest(50, None, HistoryFilter(analysis_type="image")),
    }
    assert base not in others and len(others) == 4


@given(
    ttl=st.floats(min_value=0.01, max_value=10 * 86400),
    jitter=st.floats(min_value=0, max_value=0.99),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_jittered_ttl_stays_in_its_range(ttl: float, jitter: float, seed: int) -> None:
    cfg = CacheSettings(ttl_media_s=ttl, jitter=jitter)
    low, high = ttl_range_ms(cfg, TtlPolicy.media)
    assert 1 <= low <= high
    assert low <= ttl * 1000 * (1 - jitter) + 1 and high >= ttl * 1000 * (1 + jitter) - 1
    assert low <= jittered_ttl_ms(cfg, TtlPolicy.media, random.Random(seed)) <= high


def test_each_policy_reads_its_own_setting() -> None:
    cfg = CacheSettings(
        ttl_job_running_s=1,
        ttl_job_finished_s=2,
        ttl_result_s=3,
        ttl_history_page_s=4,
        ttl_media_s=5,
        jitter=0,
    )
    got = [ttl_range_ms(cfg, p)[0] for p in TtlPolicy]
    assert got == [1000, 2000, 3000, 4000, 5000]


def test_job_placement_ranks_finished_highest() -> None:
    queued, running = job_placement(a_job()), job_placement(a_job(JobStatus.running))
    succeeded, failed = (
        job_placement(a_job(JobStatus.succeeded)),
        job_placement(a_job(JobStatus.failed)),
    )
    assert queued.rank < running.rank < succeeded.rank == failed.rank
    assert queued.policy is running.policy is TtlPolicy.job_running
    assert succeeded.policy is failed.policy is TtlPolicy.job_finished


@pytest.mark.parametrize("status", list(JobStatus))
def test_envelope_round_trip(status: JobStatus) -> None:
    job = a_job(status)
    raw = b"2:7:" + encode_body(job)
    assert parse_envelope(raw).rank == 2 and parse_envelope(raw).gen == 7
    assert decode(raw, JobOut) == job


def test_tombstones_and_garbage_are_not_values() -> None:
    assert parse_envelope(b"1:3:") == Envelope(rank=1, gen=3, body=b"")
    with pytest.raises(ValueError):
        decode(b"1:3:", JobOut)
    for garbage in (b"", b"{}", b"x:1:{}", b"1:{}", b"1:-2:{}"):
        with pytest.raises(ValueError):
            parse_envelope(garbage)


def test_client_has_short_timeouts_no_retries_tls_and_password_override() -> None:
    cfg = RedisSettings(
        tls=True,
        password=SecretStr("from-settings"),
        socket_timeout_s=0.1,
        connect_timeout_s=0.2,
        op_timeout_s=0.3,
        max_connections=7,
    )
    client = make_client(cfg, "redis://:from-url@127.0.0.1:6390/0")
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    assert pool.connection_class is SSLConnection
    assert kwargs["password"] == "from-settings"
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (0.1, 0.2)
    assert kwargs["retry"].get_retries() == 0
    assert pool.max_connections == 7


def test_without_url_the_cache_is_disabled() -> None:
    cache = RedisCache(Settings(cache=CacheSettings()), None)
    assert (cache.enabled, cache.state) == (False, "down")
    assert cache.stats.snapshot()["enabled"] is False
    off = RedisCache(Settings(cache=CacheSettings(enabled=False)), "redis://127.0.0.1:1/0")
    assert off.enabled is False
