"""The durable outbox: finished jobs answered while PostgreSQL was down, and their replay.

Layout under ``<storage root>/outbox/`` (same volume as the files the entries name)::

    <job_id>.json          pending entries, oldest first (tmp + fsync + rename + dir fsync)
    failed/<job_id>.json   entries that failed for a reason other than an outage, with
    failed/<job_id>.error  the error; ``invoke outbox --retry`` moves one back
    keys/<sha256(key)>     Idempotency-Key index: which deferred job a key names, and the
                           fingerprint of its request (created with link(): first one wins)
    merged/<job_id>        a deferred job whose key turned out to name an earlier job of the
                           same request: the id of that job (so the answer given stays valid)

Replay is per entry and idempotent (insert by job id): an outage stops the drain; any other
failure quarantines that entry and the drain goes on, so one poison entry never blocks others.

Several API processes (replicas, hosts sharing the volume) each run a replayer on the same
directory. Every mutation is safe among them:

* an entry is **claimed** with a PostgreSQL session advisory lock on its file name
  (``entry_lock_id``; every replayer talks to the same database, so it holds across hosts and
  needs nothing from the filesystem's locking). The lock is tried, never waited for: a busy
  entry is skipped. Under the claim the file is read again (gone: another replayer finished
  it), replayed, then removed or quarantined, and only then is the claim released. So each
  entry is replayed, counted and reported by one replayer, and quarantined at most once;
* removal and quarantine tolerate a vanished file (``unlink(missing_ok)``, ``rename`` that
  gives up on ENOENT and takes its error note back);
* ``keys/`` is changed only under an exclusive ``flock`` of ``keys/.index.lock`` (a claim is
  ``link()``, first one wins; removing a stale or replayed claim is read-check-unlink, which
  without the lock could remove a claim another process made in between). Linux NFS clients
  map ``flock`` to NFS byte-range locks, so it holds across hosts unless the volume is mounted
  with ``local_lock=flock|all``;
* ``merged/`` aliases are written whole by rename (the same content by whoever writes it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from app_patch.breaker import Breaker, DependencyUnavailableError
from app_patch.db import is_database_outage
from app_patch.errors import OperatorError
from app_patch.media import MediaStore
from app_patch.repository import (
    FinishedJob,
    MediaSnapshot,
    NewJob,
    ReplayOutcome,
    replay_finished,
)
from app_patch.schemas import JobOut, ResultIn
from app_patch.storage import (
    StorageUnavailableError,
    create_durably,
    fsync_dir,
    write_durably,
)
from app_patch.store_identity import StoreMismatchError
from app_patch.threads import in_thread

log = logging.getLogger(__name__)
FAILED, KEYS, MERGED = "failed", "keys", "merged"
KEYS_LOCK = ".index.lock"  # in keys/: serialises changes of the key index across processes
_ERROR_CHARS = 500


class OutboxEntryError(ValueError):
    """An entry file that cannot be read back (truncated, corrupt, unknown version)."""


@dataclass(frozen=True)
class OutboxEntry:
    """A finished job the API answered while PostgreSQL was down, and the file it needs."""

    job: FinishedJob
    media: MediaSnapshot | None

    @property
    def job_id(self) -> uuid.UUID:
        assert self.job.new.job_id is not None
        return self.job.new.job_id

    def answer(self) -> JobOut:
        """The job as the API answered it (and answers it until the replay lands)."""
        return self.job.as_job()

    def to_json(self) -> bytes:
        new, job = self.job.new, self.job
        return orjson.dumps(
            {
                "version": 2,
                "job": {
                    "id": str(new.job_id),
                    "analysis_type": new.analysis_type,
                    "params": new.params,
                    "client_ref": new.client_ref,
                    "idempotency_key": new.idempotency_key,
                    "request_fingerprint": new.request_fingerprint,
                    "started_at": job.started_at.isoformat(),
                    "finished_at": job.finished_at.isoformat(),
                    "result": None if job.result is None else job.result.model_dump(mode="json"),
                    "error": job.error,
                },
                "media": None if self.media is None else asdict(self.media),
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> OutboxEntry:
        try:
            data = orjson.loads(raw)
            media = data.get("media")
            snapshot = MediaSnapshot(**media) if media else None
            if data.get("version") == 1:  # written before 0.2: a whole JobOut
                return cls(_finished_from_v1(JobOut.model_validate(data["job"])), snapshot)
            if data.get("version") != 2:
                raise OutboxEntryError(f"unknown outbox entry version {data.get('version')!r}")
            job = data["job"]
            new = NewJob(
                analysis_type=job["analysis_type"],
                params=job["params"],
                client_ref=job["client_ref"],
                idempotency_key=job["idempotency_key"],
                job_id=uuid.UUID(job["id"]),
                request_fingerprint=job["request_fingerprint"],
            )
            result = None if job["result"] is None else ResultIn.model_validate(job["result"])
            finished = FinishedJob(
                new,
                datetime.fromisoformat(job["started_at"]),
                datetime.fromisoformat(job["finished_at"]),
                result,
                job["error"],
            )
            return cls(finished, snapshot)
        except OutboxEntryError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, ValidationError) as exc:
            raise OutboxEntryError(f"unreadable outbox entry: {_one_line(exc)}") from None


def _finished_from_v1(job: JobOut) -> FinishedJob:
    new = NewJob(
        analysis_type=job.analysis_type,
        params=job.params,
        client_ref=job.client_ref,
        idempotency_key=job.idempotency_key,
        job_id=job.id,
    )
    result = None
    if job.result is not None:
        result = ResultIn.model_validate(job.result.model_dump(exclude={"created_at"}))
    started = job.started_at or job.created_at
    return FinishedJob(new, started, job.finished_at or started, result, job.error)


@dataclass(frozen=True)
class KeyClaim:
    """What the outbox knows of an Idempotency-Key: the deferred job it names."""

    job_id: uuid.UUID
    fingerprint: str | None
    age_s: float


@dataclass(frozen=True)
class FailedEntry:
    job_id: str
    error: str
    age_s: float


class Outbox:
    """Durable entries under one directory (see the module docstring for the layout)."""

    def __init__(self, directory: Path, *, create: bool = True) -> None:
        """``create=False`` reads an outbox as it is (dry runs create nothing)."""
        self.directory = directory
        if create:
            for sub in (directory, directory / FAILED, directory / KEYS, directory / MERGED):
                sub.mkdir(parents=True, exist_ok=True)

    # ---- entries

    def _path(self, job_id: uuid.UUID) -> Path:
        return self.directory / f"{job_id}.json"

    def append(self, entry: OutboxEntry) -> None:
        write_durably(self._path(entry.job_id), entry.to_json())

    def get(self, job_id: uuid.UUID) -> OutboxEntry | None:
        """The pending entry of a job; None when there is none or it cannot be read."""
        try:
            return OutboxEntry.from_json(self._path(job_id).read_bytes())
        except FileNotFoundError:
            return None
        except OutboxEntryError as exc:
            log.warning("outbox entry %s unreadable: %s", job_id, exc)
            return None

    def pending(self) -> list[Path]:
        """Entries oldest first (by mtime), ignoring unfinished temp files."""
        files = []
        for path in self.directory.glob("*.json"):
            with contextlib.suppress(FileNotFoundError):
                files.append((path.stat().st_mtime_ns, path))
        return [path for _, path in sorted(files)]

    def backlog(self) -> int:
        return sum(1 for _ in self.directory.glob("*.json"))

    def failed_count(self) -> int:
        return sum(1 for _ in (self.directory / FAILED).glob("*.json"))

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    # ---- quarantine

    def quarantine(self, path: Path, error: str) -> bool:
        """Move an entry aside with its error, so the drain goes on without it. False when the
        entry was gone already (replayed or withdrawn meanwhile): then no note is left behind."""
        failed = self.directory / FAILED
        note = failed / f"{path.stem}.error"
        write_durably(note, f"{time.time():.0f} {_one_line(error)}\n".encode())
        try:
            os.replace(path, failed / path.name)
        except FileNotFoundError:
            if not (failed / path.name).exists():
                note.unlink(missing_ok=True)
            return False
        fsync_dir(failed)
        fsync_dir(self.directory)
        return True

    def failed(self) -> list[FailedEntry]:
        found = []
        now = time.time()
        for path in sorted((self.directory / FAILED).glob("*.json")):
            try:
                stamp, _, error = path.with_suffix(".error").read_text("utf-8").partition(" ")
                age = now - float(stamp)
            except (FileNotFoundError, ValueError):
                error, age = "(no error recorded)", 0.0
            found.append(FailedEntry(path.stem, error.strip(), max(0.0, age)))
        return found

    def retry(self, name: str) -> None:
        """Move a failed entry back to pending (``OperatorError`` when there is none)."""
        stem = Path(name).name.removesuffix(".json")
        source = self.directory / FAILED / f"{stem}.json"
        if not stem or not source.is_file():
            raise OperatorError(f"no failed outbox entry {stem!r}")
        # the note goes first: once pending, a replayer may quarantine it again with a new one
        source.with_suffix(".error").unlink(missing_ok=True)
        try:
            os.replace(source, self.directory / source.name)
        except FileNotFoundError:
            raise OperatorError(f"failed outbox entry {stem!r} was just moved by another") from None
        fsync_dir(self.directory)

    # ---- idempotency keys

    def _key_path(self, key: str) -> Path:
        return self.directory / KEYS / hashlib.sha256(key.encode()).hexdigest()

    def key_claim(self, key: str) -> KeyClaim | None:
        """The claim on ``key``, or None (none, or unreadable: ``claim_key`` replaces it)."""
        path = self._key_path(key)
        try:
            data = orjson.loads(path.read_bytes())
            age = time.time() - path.stat().st_mtime
            return KeyClaim(uuid.UUID(data["job_id"]), data.get("fingerprint"), max(0.0, age))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("outbox key index unreadable, ignored: %s", exc)
            return None

    @contextlib.contextmanager
    def _keys_locked(self) -> Iterator[None]:
        """Exclusive ``flock`` of the key index: changes to ``keys/`` are read-check-write, and
        other processes (and threads: each open is its own lock) must not interleave."""
        fd = os.open(
            self.directory / KEYS / KEYS_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # drops the lock

    def withdraw(self, job_id: uuid.UUID) -> None:
        """Remove a pending entry that its request gave up (it may be gone already)."""
        with contextlib.suppress(OSError):
            self._path(job_id).unlink(missing_ok=True)

    def claim_key(self, key: str, job_id: uuid.UUID, fingerprint: str | None) -> KeyClaim | None:
        """Bind ``key`` to ``job_id``; None when this call bound it, else the existing claim.

        Atomic across processes sharing the volume (``storage.create_durably``, under the
        index lock). Callers write the entry first, so a claim whose entry is gone is stale
        (replayed, or its request withdrew) and is replaced, as is an unreadable one.
        """
        final = self._key_path(key)
        body = orjson.dumps({"job_id": str(job_id), "fingerprint": fingerprint})
        with self._keys_locked():
            for _ in range(2):  # a second try only after removing a stale claim
                if create_durably(final, body):
                    return None
                held = self.key_claim(key)
                if held is not None and self._path(held.job_id).exists():
                    return held
                final.unlink(missing_ok=True)  # stale or unreadable: nobody else changes it now
            return self.key_claim(key)

    def release_key(self, key: str, job_id: uuid.UUID) -> None:
        """Drop the claim on ``key`` if it still names ``job_id`` (never another job's)."""
        with self._keys_locked():
            held = self.key_claim(key)
            if held is not None and held.job_id == job_id:
                self._key_path(key).unlink(missing_ok=True)

    # ---- merged aliases

    def record_merge(self, job_id: uuid.UUID, into: uuid.UUID) -> None:
        write_durably(self.directory / MERGED / str(job_id), str(into).encode())

    def merged_into(self, job_id: uuid.UUID) -> uuid.UUID | None:
        try:
            return uuid.UUID((self.directory / MERGED / str(job_id)).read_text("ascii").strip())
        except (FileNotFoundError, ValueError):
            return None

    # ---- for reconciliation

    def referenced_keys(self) -> set[str]:
        """Storage keys named by pending or failed entries: files retention must keep."""
        keys: set[str] = set()
        for path in [*self.directory.glob("*.json"), *(self.directory / FAILED).glob("*.json")]:
            with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
                media = orjson.loads(path.read_bytes()).get("media")
                if media and isinstance(media.get("storage_key"), str):
                    keys.add(media["storage_key"])
        return keys


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
    """Drains the outbox into PostgreSQL, entry by entry (see the module docstring)."""

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
            log.error("outbox entry %s quarantined: %s", path.name, _one_line(error))
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


def _one_line(error: object) -> str:
    return " ".join(str(error).split())[:_ERROR_CHARS]


# ---------------------------------------------------------------- command line


@dataclass(frozen=True)
class OutboxListing:
    pending: list[dict[str, Any]]
    failed: list[dict[str, Any]]


def list_entries(storage_root: Path) -> OutboxListing:
    outbox = Outbox(Path(storage_root) / "outbox")
    now = time.time()
    pending: list[dict[str, Any]] = []
    for path in outbox.pending():
        row: dict[str, Any] = {"job_id": path.stem, "age_s": None, "idempotency_key": None}
        with contextlib.suppress(FileNotFoundError):
            row["age_s"] = round(now - path.stat().st_mtime, 1)
            entry = outbox.get(uuid.UUID(path.stem)) if _is_uuid(path.stem) else None
            row["idempotency_key"] = entry.job.new.idempotency_key if entry else None
        pending.append(row)
    failed = [
        {"job_id": f.job_id, "age_s": round(f.age_s, 1), "error": f.error} for f in outbox.failed()
    ]
    return OutboxListing(pending, failed)


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m app_patch.outbox list [--json] | retry ID`` on the configured storage root."""
    from app_patch.errors import one_line_errors
    from app_patch.settings import get_settings

    parser = argparse.ArgumentParser(prog="python -m app_patch.outbox")
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="pending and failed entries")
    listing.add_argument("--json", action="store_true")
    retry = sub.add_parser("retry", help="move a failed entry back to pending")
    retry.add_argument("entry")
    args = parser.parse_args(argv)
    with one_line_errors():
        root = get_settings().storage.root
        if not (Path(root) / "outbox").is_dir():
            raise OperatorError(f"no outbox under the storage root {root}")
        if args.command == "retry":
            Outbox(Path(root) / "outbox").retry(args.entry)
            print(f"moved {args.entry} back to pending")
            return 0
        found = list_entries(root)
    if args.json:
        print(json.dumps(asdict(found)))
    else:
        for row in found.pending:
            print(f"pending {row['job_id']} age {row['age_s']}s key {row['idempotency_key']}")
        for row in found.failed:
            print(f"failed  {row['job_id']} age {row['age_s']}s: {row['error']}")
        print(f"{len(found.pending)} pending, {len(found.failed)} failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
