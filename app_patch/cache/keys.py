"""Cache keys and the TTL policy: what each key is called and how long it lives.

Keys are ``ma:v1:<kind>:<id>``; history pages live under ``ma:v1:history:<version>:<digest>``
and are invalidated all at once by bumping ``ma:v1:history:version``. Every TTL comes from
one policy in ``CacheSettings`` with +/- jitter.
"""

from __future__ import annotations

import enum
import hashlib
import random
from dataclasses import dataclass
from typing import Final

import orjson

from app_patch.models import JobStatus
from app_patch.schemas import HistoryFilter, HistoryPage, JobOut
from app_patch.settings import CacheSettings

PREFIX: Final = "ma:v1"
HISTORY_VERSION_KEY: Final = f"{PREFIX}:history:version"
HISTORY_PREFIX: Final = f"{PREFIX}:history:"


class Kind(enum.StrEnum):
    """What a key holds; the ``<kind>`` part of the key and the unit of the counters."""

    job = "job"
    result = "result"
    history = "history"
    media = "media"


class TtlPolicy(enum.StrEnum):
    job_running = "job_running"
    job_finished = "job_finished"
    result = "result"
    history_page = "history_page"
    media = "media"


@dataclass(frozen=True)
class Placement:
    """How a value is stored: its TTL policy and its rank (higher rank wins a write race)."""

    policy: TtlPolicy
    rank: int = 0


RESULT_PLACEMENT: Final = Placement(TtlPolicy.result)
HISTORY_PLACEMENT: Final = Placement(TtlPolicy.history_page)
MEDIA_PLACEMENT: Final = Placement(TtlPolicy.media)
KIND_POLICIES: Final = {
    Kind.job: (TtlPolicy.job_running, TtlPolicy.job_finished),
    Kind.result: (TtlPolicy.result,),
    Kind.history: (TtlPolicy.history_page,),
    Kind.media: (TtlPolicy.media,),
}


def job_placement(job: JobOut) -> Placement:
    """queued < running < finished; a finished job keeps the long TTL."""
    if job.status.finished:
        return Placement(TtlPolicy.job_finished, rank=2)
    return Placement(TtlPolicy.job_running, rank=1 if job.status is JobStatus.running else 0)


def history_placement(_: HistoryPage) -> Placement:
    return HISTORY_PLACEMENT


def cache_key(kind: Kind, ident: str) -> str:
    return f"{PREFIX}:{kind.value}:{ident}"


def history_digest(limit: int, cursor: str | None, filters: HistoryFilter | None) -> str:
    """A stable hash of everything that selects one history page."""
    spec = {
        "limit": limit,
        "cursor": cursor,
        "filters": (filters or HistoryFilter()).model_dump(mode="json"),
    }
    return hashlib.sha256(orjson.dumps(spec, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


def history_key(version: int, digest: str) -> str:
    return f"{HISTORY_PREFIX}{version}:{digest}"


def ttl_seconds(settings: CacheSettings, policy: TtlPolicy) -> float:
    return {
        TtlPolicy.job_running: settings.ttl_job_running_s,
        TtlPolicy.job_finished: settings.ttl_job_finished_s,
        TtlPolicy.result: settings.ttl_result_s,
        TtlPolicy.history_page: settings.ttl_history_page_s,
        TtlPolicy.media: settings.ttl_media_s,
    }[policy]


def ttl_range_ms(settings: CacheSettings, policy: TtlPolicy) -> tuple[int, int]:
    """Inclusive bounds of the jittered TTL, in milliseconds."""
    base = ttl_seconds(settings, policy) * 1000
    return max(1, int(base * (1 - settings.jitter))), max(1, int(base * (1 + settings.jitter)))


def jittered_ttl_ms(settings: CacheSettings, policy: TtlPolicy, rng: random.Random) -> int:
    low, high = ttl_range_ms(settings, policy)
    return rng.randint(low, high)


def max_ttl_s(settings: CacheSettings, kind: Kind) -> float:
    """Longer than any entry of ``kind`` can live: how long a tombstone or a dirty mark lasts."""
    longest = max(ttl_seconds(settings, p) for p in KIND_POLICIES[kind])
    return longest * (1 + settings.jitter) + 1
