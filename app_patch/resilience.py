"""Graceful degradation: a circuit breaker per dependency, a durable outbox and its replayer.

While PostgreSQL is down the API keeps analysing; each finished job is written as one
fsync'd JSON file under ``outbox/``. The replayer upserts those files by job id once the
database answers again, then deletes them, so a replay that crashes halfway is simply
repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import orjson
from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app_patch.media import MediaStore
from app_patch.repository import MediaSnapshot, upsert_job_snapshot
from app_patch.schemas import JobOut
from app_patch.storage import fsync_dir

log = logging.getLogger(__name__)
T = TypeVar("T")
BreakerState = Literal["closed", "open", "half-open"]


class DependencyUnavailableError(RuntimeError):
    """The dependency is down (or its breaker is open); callers degrade instead of failing."""

    def __init__(self, name: str, cause: BaseException | None = None) -> None:
        super().__init__(f"{name} unavailable" + (f": {cause}" if cause else " (breaker open)"))
        self.name = name


def is_database_outage(exc: BaseException) -> bool:
    """Connection-level failures count against the breaker; bad queries and conflicts do not."""
    if isinstance(exc, sa_exc.DBAPIError):
        return bool(exc.connection_invalidated) or isinstance(
            exc, sa_exc.OperationalError | sa_exc.InterfaceError
        )
    return isinstance(exc, OSError | ConnectionError | asyncio.TimeoutError)


class Breaker:
    """One named circuit (purgatory) that only counts the failures ``is_outage`` accepts."""

    def __init__(
        self,
        name: str,
        *,
        threshold: int,
        recovery_s: float,
        is_outage: Callable[[BaseException], bool],
    ) -> None:
        self.name = name
        self._is_outage = is_outage
        self._factory = AsyncCircuitBreakerFactory(
            default_threshold=threshold,
            default_ttl=recovery_s,
            exclude=[(Exception, lambda exc: not is_outage(exc))],
        )
        self._state: BreakerState = "closed"
        self.opened_total = 0

    @property
    def state(self) -> BreakerState:
        return self._state

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run ``operation``; an outage or an open circuit raises DependencyUnavailableError."""
        breaker = await self._factory.get_breaker(self.name)
        try:
            async with breaker:
                result = await operation()
        except OpenedState:
            self._set_state(breaker.context.state)
            raise DependencyUnavailableError(self.name) from None
        except Exception as exc:
            self._set_state(breaker.context.state)
            if self._is_outage(exc):
                raise DependencyUnavailableError(self.name, exc) from exc
            raise
        self._set_state(breaker.context.state)
        return result

    def _set_state(self, purgatory_state: str) -> None:
        state: BreakerState = {"opened": "open", "half-opened": "half-open"}.get(
            purgatory_state, "closed"
        )  # type: ignore[assignment]
        if state != self._state:
            log.warning("breaker %s: %s -> %s", self.name, self._state, state)
            if state == "open":
                self.opened_total += 1
        self._state = state


@dataclass(frozen=True)
class OutboxEntry:
    """A finished (or failed) job as the API answered it, plus the media row it needs."""

    job: JobOut
    media: MediaSnapshot | None

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "version": 1,
                "job": self.job.model_dump(mode="json"),
                "media": None if self.media is None else self.media.__dict__,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> OutboxEntry:
        data = orjson.loads(raw)
        media = data.get("media")
        return cls(
            job=JobOut.model_validate(data["job"]),
            media=MediaSnapshot(**media) if media else None,
        )


class Outbox:
    """Durable job snapshots: ``<dir>/<job_id>.json``, written tmp + fsync + rename + dir fsync."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def _path(self, job_id: uuid.UUID) -> Path:
        return self.directory / f"{job_id}.json"

    def append(self, entry: OutboxEntry) -> None:
        final = self._path(entry.job.id)
        tmp = final.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as handle:
            handle.write(entry.to_json())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
        fsync_dir(self.directory)

    def get(self, job_id: uuid.UUID) -> OutboxEntry | None:
        try:
            return OutboxEntry.from_json(self._path(job_id).read_bytes())
        except FileNotFoundError:
            return None

    def pending(self) -> list[Path]:
        """Entries oldest first (by mtime), ignoring unfinished temp files."""
        files = [p for p in self.directory.glob("*.json") if p.is_file()]
        return sorted(files, key=lambda p: p.stat().st_mtime_ns)

    def backlog(self) -> int:
        return sum(1 for _ in self.directory.glob("*.json"))

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)


class OutboxReplayer:
    """Drains the outbox into PostgreSQL; idempotent (upsert by job id), so it may rerun."""

    def __init__(
        self,
        outbox: Outbox,
        session_factory: async_sessionmaker[AsyncSession],
        breaker: Breaker,
        media: MediaStore,
        *,
        interval_s: float,
        on_replayed: Callable[[JobOut], Awaitable[None]] | None = None,
    ) -> None:
        self.outbox = outbox
        self.session_factory = session_factory
        self.breaker = breaker
        self.interval_s = interval_s
        self.on_replayed = on_replayed
        self.media = media
        self.replayed_total = 0
        self._task: asyncio.Task[None] | None = None

    async def drain_once(self, max_entries: int = 1000) -> int:
        """Replay up to ``max_entries``; stops at the first outage. Returns how many landed."""
        done = 0
        for path in self.outbox.pending()[:max_entries]:
            try:
                entry = OutboxEntry.from_json(path.read_bytes())
            except FileNotFoundError:
                continue  # another replayer took it
            except (ValueError, KeyError) as exc:
                log.error("outbox entry %s unreadable, moved aside: %s", path.name, exc)
                path.rename(path.with_suffix(".corrupt"))
                continue
            try:
                await self.breaker.call(lambda e=entry: self._write(e))  # type: ignore[misc]
            except DependencyUnavailableError:
                break
            self.outbox.remove(path)
            done += 1
            if self.on_replayed is not None:
                await self.on_replayed(entry.job)
        self.replayed_total += done
        return done

    async def _write(self, entry: OutboxEntry) -> None:
        async with self.session_factory.begin() as session:
            media_id = None
            if entry.media is not None:
                media_id = await self.media.register_placed(session, entry.media)
                if media_id is None:
                    log.warning("replayed job %s without its media: file gone", entry.job.id)
            if not await upsert_job_snapshot(session, entry.job, media_id):
                log.warning("replayed job %s without its idempotency key (taken)", entry.job.id)

    async def _run(self) -> None:
        while True:
            try:
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
