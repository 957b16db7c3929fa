"""The history facade the API calls: PostgreSQL transactions first, then the cache.

Every write commits in its own transaction and only then touches Redis (write-through of the
new job state, history version bump). A write-through that cannot reach Redis never fails the
request: ``RedisCache`` remembers the key as dirty and reads bypass it until it is repaired.
"""

from __future__ import annotations

import asyncio
import uuid

from app_patch import repository as repo
from app_patch.cache import (
    RESULT_PLACEMENT,
    Kind,
    job_placement,
)
from app_patch.guarded_sessions import CachedService
from app_patch.repository import NewJob
from app_patch.schemas import (
    HistoryFilter,
    HistoryPage,
    JobOut,
    ResultIn,
    ResultOut,
    decode_cursor,
)


class HistoryService(CachedService):
    """Cached reads and write-through writes of jobs, results and history pages.

    Every database operation (writes and cache-miss loads) runs through ``guard``, so with a
    breaker an outage surfaces as ``DependencyUnavailableError`` while cached reads still hit.
    """

    # ---- writes --------------------------------------------------------------------------

    async def create_job(self, new: NewJob) -> tuple[JobOut, bool]:
        """Insert a queued job (or return the one its idempotency key names)."""
        job, created = await self._db.write(lambda s: repo.create_job(s, new))
        if created:
            await self._written(job)
        return job, created

    async def record_finished(self, finished: repo.FinishedJob) -> tuple[JobOut, bool]:
        """An analysis that already ran, written finished in one transaction."""
        job, created = await self._db.write(lambda s: repo.record_finished(s, finished))
        if created:
            await self._written(job)
        return job, created

    async def mark_running(self, job_id: uuid.UUID) -> JobOut:
        job = await self._db.write(lambda s: repo.mark_running(s, job_id))
        await self._written(job)
        return job

    async def mark_succeeded(self, job_id: uuid.UUID, result: ResultIn) -> JobOut:
        """Once this returns, every read of the job in this process sees it succeeded."""
        job = await self._db.write(lambda s: repo.mark_succeeded(s, job_id, result))
        await self._written(job)
        return job

    async def mark_failed(self, job_id: uuid.UUID, error: str) -> JobOut:
        job = await self._db.write(lambda s: repo.mark_failed(s, job_id, error))
        await self._written(job)
        return job

    async def remember(self, job: JobOut) -> None:
        """Cache a job that was not written here (accepted into the outbox while PG is down)."""
        await self._written(job)

    async def invalidate_job(self, job_id: uuid.UUID) -> None:
        """For writers that change a job outside this service (retention, replays)."""
        await asyncio.gather(
            self.cache.invalidate(Kind.job, str(job_id)),
            self.cache.invalidate(Kind.result, str(job_id)),
            self.cache.bump_history(),
        )

    async def _written(self, job: JobOut) -> None:
        ident = str(job.id)
        updates = [
            self.cache.put(Kind.job, ident, job, job_placement(job)),
            self.cache.bump_history(),
        ]
        if job.result is not None:
            updates.append(self.cache.put(Kind.result, ident, job.result, RESULT_PLACEMENT))
        await asyncio.gather(*updates)

    # ---- reads ---------------------------------------------------------------------------

    async def get_job(self, job_id: uuid.UUID) -> JobOut | None:
        async def load() -> JobOut | None:
            return await self._db.read(lambda s: repo.get_job(s, job_id))

        return await self.cache.get_or_load(Kind.job, str(job_id), JobOut, load, job_placement)

    async def job_by_key(self, key: str) -> tuple[JobOut, str | None] | None:
        """The job an Idempotency-Key names and its request fingerprint (not cached)."""
        return await self._db.read(lambda s: repo.job_by_key(s, key))

    async def get_result(self, job_id: uuid.UUID) -> ResultOut | None:
        """A finished job's result (immutable, so cached with the long result TTL)."""

        async def load() -> ResultOut | None:
            job = await self._db.read(lambda s: repo.get_job(s, job_id))
            return job.result if job is not None else None

        return await self.cache.get_or_load(
            Kind.result, str(job_id), ResultOut, load, lambda _: RESULT_PLACEMENT
        )

    async def list_history(
        self,
        limit: int = 50,
        cursor: str | None = None,
        filters: HistoryFilter | None = None,
    ) -> HistoryPage:
        """Newest first; raises ``InvalidCursorError`` before touching Redis or PostgreSQL."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if cursor is not None:
            decode_cursor(cursor)

        async def load() -> HistoryPage:
            return await self._db.read(
                lambda s: repo.list_history(s, limit=limit, cursor=cursor, filters=filters)
            )

        return await self.cache.get_history_page(
            limit=limit, cursor=cursor, filters=filters, loader=load
        )
