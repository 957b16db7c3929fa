"""The replayer: claims each outbox entry by advisory lock and replays it into PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from app_patch.breaker import Breaker, DependencyUnavailableError
from app_patch.db import is_database_outage
from app_patch.media import MediaStore
from app_patch.outbox.directory import Outbox
from app_patch.outbox.entry import OutboxEntry, OutboxEntryError, one_line
from app_patch.repository import ReplayOutcome, replay_finished
from app_patch.storage import StorageUnavailableError
from app_patch.store_identity import StoreMismatchError
from app_patch.threads import in_thread

log = logging.getLogger(__name__)


def is_entry_failure(exc: BaseException) -> bool:
    """Failures that belong to one entry (quarantine it) rather than to the environment.

    A schema that is not migrated, missing privileges, a read-only standby, a store that is
    not the database's or an unwritable volume would fail every entry alike: those stop the
    drain (retried on the next tick) instead of emptying the outbox into ``failed/``.
    """
    environment = (
        sa_exc.ProgrammingError,
        sa_exc.InternalError,
        sa_exc.NotSupportedError,
        sa_exc.OperationalError,
        StoreMismatchError,
        StorageUnavailableError,
        OSError,
    )
    return not isinstance(exc, environment)


def entry_lock_id(name: str) -> int:
    """The PostgreSQL advisory-lock id of one outbox entry (by file name): its replay claim."""
    digest = hashlib.sha256(f"ma-outbox:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class OutboxReplayer:
    """Drains the outbox into PostgreSQL, entry by entry (see the package docstring)."""

    def __init__(
        self,
        outbox: Outbox,
        session_factory: async_sessionmaker[AsyncSession],
        breaker: Breaker,
        media: MediaStore,
        *,
        interval_s: float,
        on_replayed: Callable[[uuid.UUID], Awaitable[None]] | None = None,
        on_tick: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        engine = session_factory.kw.get("bind")
        if not isinstance(engine, AsyncEngine):
            raise TypeError("the outbox replayer needs a session factory bound to an AsyncEngine")
        self.outbox = outbox
        self.session_factory = session_factory
        self.engine = engine
        self.breaker = breaker
        self.interval_s = interval_s
        self.on_replayed = on_replayed
        self.on_tick = on_tick
        self.media = media
        self.replayed_total = 0
        self.quarantined_total = 0
        self._task: asyncio.Task[None] | None = None

    async def drain_once(self, max_entries: int = 1000) -> int:
        """Replay up to ``max_entries``; stops at the first outage. Returns how many landed
        (replayed by this process: entries another replayer holds or finished are skipped).

        Nothing is replayed into a database that does not record this store (a wrong
        ``MA_DB_URL`` would take the jobs and leave their files to the other store's orphans).
        """
        try:
            await self.breaker.call(self.media.check_identity)
        except Exception as exc:  # outage, not migrated, or not this database's store
            log.debug("outbox replay waits: %s", type(exc).__name__)
            return 0
        done = 0
        for path in self.outbox.pending()[:max_entries]:
            try:
                job_id = await self.breaker.call(lambda p=path: self._replay_claimed(p))  # type: ignore[misc]
            except DependencyUnavailableError:
                break
            except Exception as exc:  # the database or the store, not this entry
                log.warning("outbox replay paused: %s", type(exc).__name__)
                break
            if job_id is None:
                continue
            done += 1
            if self.on_replayed is not None:
                await self.on_replayed(job_id)
        self.replayed_total += done
        return done

    @contextlib.asynccontextmanager
    async def _claim(self, name: str) -> AsyncIterator[AsyncConnection | None]:
        """The entry's replay claim: a connection holding its session advisory lock (None when
        another replayer holds it). Session-level, so it outlives the replay's commit and
        covers the removal of the file after it; released before the connection is pooled."""
        lock = entry_lock_id(name)
        async with self.engine.connect() as conn:
            claimed = bool(await conn.scalar(select(func.pg_try_advisory_lock(lock))))
            await conn.commit()
            if not claimed:
                yield None
                return
            try:
                yield conn
            finally:
                try:
                    await conn.rollback()
                    await conn.execute(select(func.pg_advisory_unlock(lock)))
                    await conn.commit()
                except BaseException:
                    await conn.invalidate()  # closing it releases the lock; never pool it
                    raise

    async def _replay_claimed(self, path: Path) -> uuid.UUID | None:
        """Replay one entry under its claim: the job id when it landed here, else None
        (held or finished by another replayer, or quarantined). Raises only what is not
        this entry's fault (an outage, the environment)."""
        async with self._claim(path.name) as conn:
            if conn is None:
                return None
            try:
                raw = await in_thread(path.read_bytes)
            except FileNotFoundError:
                return None  # another replayer finished it (or its request withdrew it)
            try:
                entry = OutboxEntry.from_json(raw)
            except OutboxEntryError as exc:
                await in_thread(self._quarantine, path, str(exc))
                return None
            try:
                outcome, stands_for = await self._write(conn, entry)
            except Exception as exc:
                if is_database_outage(exc) or not is_entry_failure(exc):
                    raise
                await in_thread(self._quarantine, path, f"{type(exc).__name__}: {exc}")
                return None
            await in_thread(self._finish, path, entry, outcome, stands_for)
            return entry.job_id

    def _finish(
        self, path: Path, entry: OutboxEntry, outcome: ReplayOutcome, stands_for: uuid.UUID
    ) -> None:
        if outcome is ReplayOutcome.merged:
            self.outbox.record_merge(entry.job_id, stands_for)
        self.outbox.remove(path)
        if entry.job.new.idempotency_key is not None:
            self.outbox.release_key(entry.job.new.idempotency_key, entry.job_id)

    def _quarantine(self, path: Path, error: str) -> None:
        if self.outbox.quarantine(path, error):
            log.error("outbox entry %s quarantined: %s", path.name, one_line(error))
            self.quarantined_total += 1

    async def _write(
        self, conn: AsyncConnection, entry: OutboxEntry
    ) -> tuple[ReplayOutcome, uuid.UUID]:
        async with self.session_factory(bind=conn) as session, session.begin():
            media_id = None
            if entry.media is not None:
                media_id = await self.media.register_placed(session, entry.media)
                if media_id is None:
                    log.warning("replayed job %s without its media: file gone", entry.job_id)
            outcome, stands_for = await replay_finished(session, entry.job, media_id)
        if outcome is ReplayOutcome.key_dropped:
            log.warning("replayed job %s without its idempotency key (another request's)",
                        entry.job_id)  # fmt: skip
        return outcome, stands_for

    async def _run(self) -> None:
        while True:
            try:
                if self.on_tick is not None:
                    await self.on_tick()
                if self.outbox.backlog():
                    await self.drain_once()
            except Exception:  # keep the loop alive; the next tick retries
                log.exception("outbox replay failed")
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="outbox-replayer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
