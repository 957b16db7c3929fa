"""Everything the patched API holds while it runs, built once in the lifespan."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app_patch.breaker import Breaker, DependencyUnavailableError
from app_patch.cache import RedisCache
from app_patch.db import create_engine, create_session_factory, is_database_outage, observe_pool
from app_patch.media import MediaStore
from app_patch.media_lookup import MediaLookup
from app_patch.metrics import LiveSources, Metrics, PoolFigures, RetentionTotals
from app_patch.outbox import Outbox, OutboxReplayer
from app_patch.retention import queries as retention_queries
from app_patch.server_urls import database_url, redis_url
from app_patch.service import HistoryService
from app_patch.settings import Settings
from app_patch.storage import Storage
from app_patch.store_identity import StoreMismatchError
from app_patch.submission import Analyser, AnalysisService

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    db_breaker: Breaker
    cache: RedisCache
    history: HistoryService
    media_lookup: MediaLookup
    storage: Storage
    media: MediaStore
    outbox: Outbox
    replayer: OutboxReplayer
    submissions: AnalysisService
    metrics: Metrics
    analyse: Analyser
    analysis_types: Sequence[str]
    analysis_errors: tuple[type[Exception], ...]
    retention_totals: RetentionTotals

    async def db(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run a database operation behind the PostgreSQL breaker."""
        return await self.db_breaker.call(operation)

    async def refresh_retention_totals(self) -> None:
        """Sum retention_events per policy (for /metrics); keeps the last figures if PG is down."""

        async def load() -> RetentionTotals:
            return RetentionTotals(await retention_queries.retention_totals(self.engine))

        try:
            self.retention_totals = await self.db(load)
        except Exception as exc:  # a scrape must never fail because PG is away
            log.debug("retention totals not refreshed: %s", exc)

    def pool_figures(self) -> PoolFigures:
        pool: Any = self.engine.pool
        return PoolFigures(
            size=int(pool.size()),
            checked_out=int(pool.checkedout()),
            overflow=max(0, int(pool.overflow())),
            max_connections=self.settings.db.max_connections,
        )

    def cache_counters(self) -> dict[str, dict[str, int]]:
        kinds: dict[str, dict[str, int]] = self.cache.stats.snapshot()["kinds"]
        return {
            kind: {
                "hit": c["hits"],
                "miss": c["misses"],
                "error": c["errors"],
                "bypass": c["bypassed"],
            }
            for kind, c in kinds.items()
        }

    def live_sources(self) -> LiveSources:
        return LiveSources(
            pool=self.pool_figures,
            breakers=lambda: {
                "postgres": self.db_breaker.state,
                "redis": self.cache.breaker.state,
            },
            cache_counters=self.cache_counters,
            outbox_backlog=self.outbox.backlog,
            outbox_failed=self.outbox.failed_count,
            storage_usage=lambda: {
                area: (files, nbytes)
                for area, (files, nbytes) in self.storage.usage(max_age_s=5).items()
            },
            retention=lambda: self.retention_totals,
        )


async def open_runtime(
    settings: Settings,
    *,
    analyse: Analyser,
    analysis_types: Sequence[str],
    analysis_errors: tuple[type[Exception], ...],
    metrics: Metrics,
) -> Runtime:
    engine = create_engine(settings.db, database_url(settings))
    observe_pool(engine, metrics.observe_pool_checkout)
    sessions = create_session_factory(engine)
    cache = RedisCache(settings, redis_url(settings))
    db_breaker = Breaker(
        "postgres",
        threshold=settings.resilience.db_failure_threshold,
        recovery_s=settings.resilience.db_recovery_s,
        is_outage=is_database_outage,
    )
    history = HistoryService(sessions, cache, guard=db_breaker.call)
    media_lookup = MediaLookup(sessions, cache, guard=db_breaker.call)
    storage = await Storage.open(settings.storage)
    outbox = Outbox(storage.outbox_dir)

    async def after_replay(job_id: uuid.UUID) -> None:
        await history.invalidate_job(job_id)

    media = MediaStore(sessions, storage, settings.retention)

    async def record_store_identity() -> bool:
        """Claim (or check) the storage root for this database once PostgreSQL answers
        (the replayer checks it too before every drain)."""
        if media.identity_checked:
            return True
        try:
            await db_breaker.call(media.check_identity)
        except DependencyUnavailableError:
            return False  # retried on the next tick
        except StoreMismatchError as exc:
            if media.identity_problem != str(exc):  # said once, not every tick
                log.error("%s", exc)
            media.identity_problem = str(exc)
            return False
        except Exception as exc:  # e.g. not migrated yet: never fail start-up, retry later
            log.warning("storage identity not recorded yet: %s", type(exc).__name__)
            return False
        media.identity_problem = None
        return True

    await record_store_identity()
    replayer = OutboxReplayer(
        outbox,
        sessions,
        db_breaker,
        media,
        interval_s=settings.resilience.replay_interval_s,
        on_replayed=after_replay,
        on_tick=record_store_identity,  # says why the store is refused, once
    )
    submissions = AnalysisService(
        storage=storage,
        media=media,
        history=history,
        media_lookup=media_lookup,
        outbox=outbox,
        guard=db_breaker.call,
        analyse=analyse,
        analysis_errors=analysis_errors,
    )
    runtime = Runtime(
        settings=settings,
        engine=engine,
        sessions=sessions,
        db_breaker=db_breaker,
        cache=cache,
        history=history,
        media_lookup=media_lookup,
        storage=storage,
        media=media,
        outbox=outbox,
        replayer=replayer,
        submissions=submissions,
        metrics=metrics,
        analyse=analyse,
        analysis_types=tuple(analysis_types),
        analysis_errors=analysis_errors,
        retention_totals=RetentionTotals(),
    )
    metrics.attach(runtime.live_sources())
    replayer.start()
    return runtime


async def close_runtime(runtime: Runtime) -> None:
    await runtime.replayer.stop()
    await runtime.cache.close()
    await runtime.engine.dispose()
