"""The peer: the same loader cached the cashews way (``@cache(ttl=...)``, same JSON body)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app_patch import repository as repo
from app_patch.cache import encode_body
from app_patch.schemas import JobOut
from app_patch.settings import Settings

PEER_PREFIX = "ma:v1:cashews"  # the peer's keys: ma:v1:cashews:<job id>, beside ours


def missing_peer() -> str | None:
    """Why the peer cannot run here (its package is in the dev extra only), or None."""
    try:
        import cashews  # noqa: F401
    except ImportError:
        return "peer not measured: cashews is not installed (pip install -e '.[dev]')"
    return None


class CashewsPeer:
    """The same loader as ``HistoryService.get_job``'s, cached the cashews way."""

    def __init__(
        self, settings: Settings, redis_url: str, sessions: async_sessionmaker[AsyncSession]
    ) -> None:
        from cashews import Cache
        from cashews.serialize import register_type

        async def encode(value: JobOut, *args: Any, **kwargs: Any) -> bytes:
            return encode_body(value)  # the JSON body ours stores, byte for byte

        async def decode(value: bytes, *args: Any, **kwargs: Any) -> JobOut:
            return JobOut.model_validate_json(value)

        register_type(JobOut, encode, decode)
        self.cache = Cache()
        self.cache.setup(redis_url, max_connections=settings.redis.max_connections)
        self.loads = 0
        ttl = timedelta(seconds=settings.cache.ttl_job_finished_s)

        @self.cache(ttl=ttl, key=PEER_PREFIX + ":{job_id}")
        async def get_job(job_id: uuid.UUID) -> JobOut | None:
            self.loads += 1
            async with sessions() as session:
                return await repo.get_job(session, job_id)

        self.get_job = get_job

    def key(self, job_id: uuid.UUID) -> str:
        return f"{PEER_PREFIX}:{job_id}"

    async def close(self) -> None:
        await self.cache.close()
