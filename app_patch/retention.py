"""Retention policies and the sweeper that applies them, auditing every deletion.

Policies, applied in this order (``--policy`` picks a subset):

``uploads``    live ``media_files`` whose ``expires_at`` passed (last access + uploads_days,
               stamped by media.py on every upload and access); a row written without an
               expiry (NULL) expires uploads_days after ``last_accessed_at``
``artifacts``  live ``artifacts`` whose ``expires_at`` passed (creation + artifacts_days); NULL:
               artifacts_days after ``created_at``
``quota``      with ``quota_bytes`` set and live bytes above it: expired rows first, then the
               least recently used (uploads by last access, artifacts by creation)
``missing``    live rows whose file is gone: marked deleted, audited with reason "file missing"
``orphans``    files under uploads/ and artifacts/ with no live row, older than orphan_grace_s
``tmp``        files in tmp/ older than tmp_days that no live writer holds

A stamped ``expires_at`` wins: changing uploads_days or artifacts_days applies to such a row
the next time it is written or accessed.

Rows: one transaction per batch locks rows with ``FOR UPDATE SKIP LOCKED``, unlinks their files
(an already missing file is fine), marks them deleted and inserts their audit rows, then commits.
A crash before the commit leaves rows live whose files may be gone; the rerun selects them again
(they are still expired), tolerates the missing files and commits the mark and the audit once.
Concurrent sweepers never see the same locked row, and a row committed as deleted no longer
matches, so each deletion is audited exactly once. Uploads wait on the same row lock.

Loose files (orphans, tmp): per batch, session advisory locks on the keys (shared with uploads),
a re-check (still no live row, still there), the audit rows are committed, *then* the files are
unlinked, then the locks are released. A crash after the audit commit leaves a file whose audit
row is newer than the file, and the rerun only unlinks it. Analysis history (``analysis_jobs``,
``analysis_results``) is never touched.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import islice
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Row,
    and_,
    any_,
    bindparam,
    false,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.types import ARRAY, Uuid

from app_patch import store_identity
from app_patch.errors import OperatorError
from app_patch.file_locks import try_lock_keys, try_lock_keys_for_session, unlock_session_keys
from app_patch.models import Artifact, MediaFile, RetentionEvent
from app_patch.outbox import FAILED, Outbox
from app_patch.settings import RetentionSettings, Settings
from app_patch.storage import (
    ARTIFACTS,
    TMP,
    UPLOADS,
    FileEntry,
    Storage,
    StorageError,
    StorageKeyError,
    StorageUnavailableError,
    sha256_of_upload_key,
)
from app_patch.threads import in_thread

log = logging.getLogger(__name__)

T = TypeVar("T")
_MAX_ERRORS_KEPT = 20
_ARTIFACT_DIR_KEEP_DAYS = 2  # empty artifact folders of recent days stay: writers use them
_RECONCILE_MIN = 100  # reconciliation may always remove this many, whatever the fraction


class Policy(enum.StrEnum):
    uploads = "uploads"
    artifacts = "artifacts"
    quota = "quota"
    missing = "missing"
    orphans = "orphans"
    tmp = "tmp"


ALL_POLICIES: tuple[Policy, ...] = tuple(Policy)


class ObjectType(enum.StrEnum):
    """``retention_events.object_type`` values."""

    media_file = "media_file"
    artifact = "artifact"
    orphan_file = "orphan_file"
    tmp_file = "tmp_file"


class UnknownPolicyError(OperatorError, ValueError):
    pass


def parse_policies(spec: str | Iterable[str] | None) -> tuple[Policy, ...]:
    """``"uploads,tmp"`` (or a list) -> policies in application order; empty means all."""
    names = spec.split(",") if isinstance(spec, str) else list(spec or ())
    wanted = {name.strip().lower() for name in names if name.strip()}
    unknown = sorted(wanted - set(Policy))
    if unknown:
        raise UnknownPolicyError(
            f"unknown retention policy {', '.join(map(repr, unknown))}; "
            f"choose from: {', '.join(ALL_POLICIES)}"
        )
    return tuple(p for p in ALL_POLICIES if p in wanted) if wanted else ALL_POLICIES


@dataclass
class PolicyTotals:
    objects: int = 0
    bytes: int = 0


@dataclass
class SweepReport:
    dry_run: bool
    policies: dict[Policy, PolicyTotals]
    skipped: int = 0  # held by another sweeper/writer, or not old enough yet
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    elapsed_s: float = 0.0

    @property
    def total_objects(self) -> int:
        return sum(t.objects for t in self.policies.values())

    @property
    def total_bytes(self) -> int:
        return sum(t.bytes for t in self.policies.values())

    def add(self, policy: Policy, objects: int, nbytes: int) -> None:
        totals = self.policies[policy]
        totals.objects += objects
        totals.bytes += nbytes

    def error(self, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < _MAX_ERRORS_KEPT:
            self.errors.append(message)
        log.warning("retention: %s", message)

    def summary_rows(self) -> list[tuple[str, int, int]]:
        """(policy, objects, bytes) per policy plus a ``total`` row, for tables."""
        rows = [(p.value, t.objects, t.bytes) for p, t in self.policies.items()]
        return [*rows, ("total", self.total_objects, self.total_bytes)]

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "policies": {p.value: vars(t) for p, t in self.policies.items()},
            "total_objects": self.total_objects,
            "total_bytes": self.total_bytes,
            "skipped": self.skipped,
            "error_count": self.error_count,
            "errors": self.errors,
            "elapsed_s": round(self.elapsed_s, 3),
        }


ProgressCallback = Callable[[Policy, int, int | None], None]
"""Called with (policy, objects done so far, expected total or None)."""


@dataclass(frozen=True)
class _RowKind:
    model: type[MediaFile] | type[Artifact]
    object_type: ObjectType
    policy: Policy


_MEDIA = _RowKind(MediaFile, ObjectType.media_file, Policy.uploads)
_ARTIFACTS = _RowKind(Artifact, ObjectType.artifact, Policy.artifacts)


@dataclass(frozen=True)
class _Victim:
    kind: _RowKind
    id: uuid.UUID
    key: str
    size: int
    reason: str


MediaDeleted = Callable[[list[str]], Awaitable[None]]
"""Called after each commit with the sha256 of the media files it deleted (cache upkeep)."""


class Sweeper:
    """Applies the policies to one database and one storage root, which must belong together
    (``store_identity``): a sweep against a root the database does not record refuses."""

    def __init__(
        self,
        engine: AsyncEngine,
        storage: Storage,
        settings: RetentionSettings,
        *,
        on_media_deleted: MediaDeleted | None = None,
    ) -> None:
        self.engine = engine
        self.storage = storage
        self.settings = settings
        self.on_media_deleted = on_media_deleted

    async def check_identity(self) -> None:
        """Raise ``StoreMismatchError`` unless the root is the one the database records
        (``check_for_sweeper`` only reads, so dry and real runs ask the same way)."""
        async with self.engine.connect() as conn:
            await store_identity.check_for_sweeper(conn, self.storage.root)

    async def sweep(
        self,
        *,
        dry_run: bool = False,
        policies: Sequence[Policy] | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> SweepReport:
        selected = tuple(p for p in ALL_POLICIES if policies is None or p in policies)
        await self.check_identity()
        # a dry run's connections are READ ONLY: PostgreSQL itself refuses any write
        engine = self.engine.execution_options(postgresql_readonly=True) if dry_run else None
        run = _Run(self, engine, dry_run, on_progress or (lambda *_: None), selected)
        started = time.monotonic()
        for policy in selected:
            await run.apply(policy)
        if not dry_run and {Policy.artifacts, Policy.orphans} & set(selected):
            await in_thread(self.storage.prune_empty_dirs, ARTIFACTS, _recent_artifact_dir)
        run.report.elapsed_s = time.monotonic() - started
        return run.report


class _Run:
    """The state of one sweep."""

    def __init__(
        self,
        sweeper: Sweeper,
        engine: AsyncEngine | None,
        dry_run: bool,
        progress: ProgressCallback,
        selected: tuple[Policy, ...],
    ) -> None:
        self.engine = engine or sweeper.engine
        self.sweeper = sweeper
        self.storage = sweeper.storage
        self.settings = sweeper.settings
        self.dry_run = dry_run
        self.progress = progress
        self.selected = selected
        self.batch = self.settings.batch_size
        self.report = SweepReport(dry_run, {p: PolicyTotals() for p in selected})
        self.deleted_media: list[str] = []
        self.outbox = _OutboxKeys(Outbox(self.storage.outbox_dir, create=False))

    async def apply(self, policy: Policy) -> None:
        if policy is Policy.uploads:
            await self.expired(_MEDIA)
        elif policy is Policy.artifacts:
            await self.expired(_ARTIFACTS)
        elif policy is Policy.quota:
            await self.quota()
        elif policy is Policy.missing:
            await self.missing()
        elif policy is Policy.orphans:
            await self.loose_files(Policy.orphans, (UPLOADS, ARTIFACTS))
        else:
            await self.loose_files(Policy.tmp, (TMP,))

    async def pause(self) -> None:
        if self.settings.batch_pause_s:
            await asyncio.sleep(self.settings.batch_pause_s)

    # ---------------------------------------------------------- expired rows

    async def expired(self, kind: _RowKind) -> None:
        model = kind.model
        where = (model.deleted_at.is_(None), _expired(kind, self.settings))
        async with self.engine.connect() as conn:
            count, nbytes = (
                await conn.execute(
                    select(func.count(), func.coalesce(func.sum(model.size_bytes), 0)).where(*where)
                )
            ).one()
        self.progress(kind.policy, 0, count)
        if self.dry_run:
            self.report.add(kind.policy, count, int(nbytes))
            self.progress(kind.policy, count, count)
            return
        passed: set[uuid.UUID] = set()  # failed, or its key busy: not a candidate again
        done = 0
        for _ in range(count // self.batch + 2):
            async with self.engine.begin() as conn:
                query = select(model.id, model.storage_key).where(*where).limit(self.batch)
                if passed:
                    query = query.where(model.id.not_in(passed))
                candidates = (await conn.execute(query)).all()
                if not candidates:
                    break
                rows = await self.lock(conn, kind, candidates, passed, *where)
                victims = [
                    _Victim(kind, r.id, r.storage_key, r.size_bytes, "expired") for r in rows
                ]
                deleted = await self.delete_rows(conn, kind.policy, victims, passed)
            await self.committed()
            done += deleted
            self.progress(kind.policy, done, count)
            await self.pause()

    async def lock(
        self,
        conn: AsyncConnection,
        kind: _RowKind,
        candidates: Sequence[Any],
        passed: set[uuid.UUID],
        *still: ColumnElement[bool],
    ) -> Sequence[Any]:
        """``file_locks`` steps 1 and 2 for rows: key locks (busy keys, and keys a pending or
        failed outbox entry names, skipped), then row locks (locked rows skipped), re-reading
        each row under both (``still`` must hold)."""
        free = await try_lock_keys(conn, [c.storage_key for c in candidates])
        free -= await self.outbox_keys()  # a job answered during an outage still needs it
        model = kind.model
        ids = [c.id for c in candidates if c.storage_key in free]
        rows: Sequence[Any] = []
        if ids:
            rows = (
                await conn.execute(
                    select(model.id, model.storage_key, model.size_bytes)
                    .where(model.id == any_(_uuid_array(ids)), model.deleted_at.is_(None), *still)
                    .with_for_update(skip_locked=True)
                )
            ).all()
        got = {r.id for r in rows}
        busy = [c.id for c in candidates if c.id not in got]
        passed.update(busy)
        self.report.skipped += len(busy)
        return rows

    async def committed(self) -> None:
        """After a commit: tell the cache which media files are gone."""
        gone, self.deleted_media = self.deleted_media, []
        if gone and self.sweeper.on_media_deleted is not None:
            try:
                await self.sweeper.on_media_deleted(gone)
            except Exception as exc:  # the cache is never the source of truth
                log.warning("retention: cache not told about %d deletions: %s", len(gone), exc)

    async def delete_rows(
        self,
        conn: AsyncConnection,
        policy: Policy,
        victims: list[_Victim],
        failed: set[uuid.UUID],
    ) -> int:
        """Unlink the files of locked rows, then mark them deleted and audit them (same txn)."""
        outcomes = await in_thread(self._unlink_all, [v.key for v in victims])
        done: list[_Victim] = []
        unavailable = 0
        for victim, outcome in zip(victims, outcomes, strict=True):
            if isinstance(outcome, StorageError):
                failed.add(victim.id)
                unavailable += isinstance(outcome, StorageUnavailableError)
                self.report.error(f"{victim.kind.object_type} {victim.id}: {outcome}")
                continue
            note = "" if outcome or policy is Policy.missing else " (file was already gone)"
            done.append(
                _Victim(victim.kind, victim.id, victim.key, victim.size, victim.reason + note)
            )
        if unavailable and not done:
            raise StorageUnavailableError(f"storage unavailable: {self.report.errors[-1]}")
        for kind in (_MEDIA, _ARTIFACTS):
            mine = [v for v in done if v.kind is kind]
            if mine:
                await _mark_and_audit(conn, kind, policy, mine)
        self.report.add(policy, len(done), sum(v.size for v in done))
        self.deleted_media += [
            sha for v in done if v.kind is _MEDIA and (sha := sha256_of_upload_key(v.key))
        ]
        return len(done)

    def _unlink_all(self, keys: list[str]) -> list[bool | StorageError]:
        """Per key: True removed, False already gone, or the refusal/failure (keys of the
        store's own shape are checked without a ``realpath``, each directory once per batch:
        ``Storage.generated_path_for``)."""
        results: list[bool | StorageError] = []
        with self.storage.dirs_checked_once():
            for key in keys:
                try:
                    results.append(self.storage.remove(key))
                except StorageError as exc:
                    results.append(exc)
        return results

    # ---------------------------------------------------------- quota

    async def quota(self) -> None:
        limit = self.settings.quota_bytes
        if limit is None:
            self.progress(Policy.quota, 0, 0)
            return
        async with self.engine.connect() as conn:
            used, live = await _live_totals(conn)
            if self.dry_run:
                # bytes the expiry policies of this same run would free do not count
                for kind in (_MEDIA, _ARTIFACTS):
                    if kind.policy in self.selected:
                        used -= self.report.policies[kind.policy].bytes
        excess = used - limit
        self.progress(Policy.quota, 0, None)
        if excess <= 0:
            return
        reason = f"over quota ({used} > {limit} bytes)"
        skip_expired = self.dry_run and bool(
            {Policy.uploads, Policy.artifacts} & set(self.selected)
        )
        passed: set[uuid.UUID] = set()  # locked by another sweeper: not candidates again
        freed = 0
        for page in range(live // self.batch + 2):
            if freed >= excess:
                break
            async with self.engine.begin() as conn:
                candidates = await _quota_candidates(
                    conn, self.settings, self.batch, passed, page if self.dry_run else None
                )
                if not candidates:
                    break
                if self.dry_run:
                    for c in candidates:
                        if freed >= excess:
                            break
                        if skip_expired and c.expired:
                            continue
                        freed += c.size_bytes
                        self.report.add(Policy.quota, 1, c.size_bytes)
                    continue
                locked: set[uuid.UUID] = set()
                for tag, kind in (("m", _MEDIA), ("a", _ARTIFACTS)):
                    mine = [c for c in candidates if c.src == tag]
                    if mine:
                        locked |= {r.id for r in await self.lock(conn, kind, mine, passed)}
                victims: list[_Victim] = []
                for c in candidates:
                    if freed >= excess:
                        break
                    if c.id not in locked:
                        continue
                    kind = _MEDIA if c.src == "m" else _ARTIFACTS
                    why = "expired" if c.expired else "least recently used"
                    victims.append(
                        _Victim(kind, c.id, c.storage_key, c.size_bytes, f"{reason}; {why}")
                    )
                    freed += c.size_bytes
                await self.delete_rows(conn, Policy.quota, victims, passed)
            await self.committed()
            self.progress(Policy.quota, self.report.policies[Policy.quota].objects, None)
            await self.pause()

    # ---------------------------------------------------------- reconciliation guard

    async def guard_limit(self) -> int:
        """How many rows/files reconciliation may remove in one run before it refuses.

        A wrong MA_STORAGE_ROOT makes every row look "missing" and a wrong database makes
        every file look "orphaned"; both scan first and refuse above this, removing nothing.
        """
        fraction = self.settings.reconcile_max_fraction
        if fraction >= 1:
            return sys.maxsize  # the operator disabled the guard
        async with self.engine.connect() as conn:
            _, live = await _live_totals(conn)
        return max(_RECONCILE_MIN, int(live * fraction))

    def refuse(self, policy: Policy, found: int, limit: int) -> None:
        self.report.error(
            f"{policy}: refused, {found}+ objects would go (limit {limit}); check "
            "MA_STORAGE_ROOT and the database URL, or raise MA_RETENTION_RECONCILE_MAX_FRACTION"
        )

    # ---------------------------------------------------------- rows without files

    async def missing(self) -> None:
        """Scan every live row for its file, then mark the ones without (unless refused)."""
        limit = await self.guard_limit()
        found: dict[_RowKind, list[uuid.UUID]] = {_MEDIA: [], _ARTIFACTS: []}
        checked = 0
        async with self.engine.connect() as conn:
            total = sum([await _live_count(conn, kind.model) for kind in found])
        for kind, gone in found.items():
            async for page in self._live_pages(kind, total):
                gone.extend(await in_thread(self._without_file, page))
                checked += len(page)
                self.progress(Policy.missing, checked, total)
                if sum(map(len, found.values())) > limit:
                    self.refuse(Policy.missing, sum(map(len, found.values())), limit)
                    return
        if self.dry_run:
            self.report.add(Policy.missing, sum(map(len, found.values())), 0)
            return
        for kind, gone in found.items():
            for start in range(0, len(gone), self.batch):
                await self._mark_missing(kind, gone[start : start + self.batch])
                await self.pause()

    async def _live_pages(
        self, kind: _RowKind, total: int
    ) -> AsyncIterator[list[Row[uuid.UUID, str]]]:
        """Live (id, storage_key) rows in id order, a batch at a time (keyset pagination)."""
        model = kind.model
        last: uuid.UUID | None = None
        for _ in range(total // self.batch + 2):
            query = (
                select(model.id, model.storage_key)
                .where(model.deleted_at.is_(None))
                .order_by(model.id)
                .limit(self.batch)
            )
            if last is not None:
                query = query.where(model.id > last)
            async with self.engine.connect() as conn:
                page = list((await conn.execute(query)).all())
            if not page:
                return
            last = page[-1].id
            yield page

    def _without_file(self, rows: Sequence[Row[uuid.UUID, str]]) -> list[uuid.UUID]:
        gone: list[uuid.UUID] = []
        for row in rows:
            try:
                if not self.storage.exists(row.storage_key):
                    gone.append(row.id)
            except StorageKeyError as exc:
                self.report.error(f"row {row.id}: {exc}")
        return gone

    async def _mark_missing(self, kind: _RowKind, ids: list[uuid.UUID]) -> None:
        model = kind.model
        async with self.engine.begin() as conn:
            candidates = (
                await conn.execute(
                    select(model.id, model.storage_key).where(
                        model.id.in_(ids), model.deleted_at.is_(None)
                    )
                )
            ).all()
            self.report.skipped += len(ids) - len(candidates)
            rows = await self.lock(conn, kind, candidates, set())
            # stable now: an upload or a replay of the key waits for our locks
            still_gone = set(await in_thread(self._without_file, rows))
            victims = [
                _Victim(kind, r.id, r.storage_key, 0, "file missing")
                for r in rows
                if r.id in still_gone
            ]
            await self.delete_rows(conn, Policy.missing, victims, set())
        await self.committed()

    # ---------------------------------------------------------- loose files

    async def loose_files(self, policy: Policy, areas: tuple[str, ...]) -> None:
        """Scan the areas for old files without a live row, then audit and remove them."""
        tmp = policy is Policy.tmp
        grace = self.settings.tmp_days * 86400 if tmp else self.settings.orphan_grace_s
        limit = None if tmp else await self.guard_limit()
        cutoff = time.time() - grace
        found: list[FileEntry] = []
        seen = 0
        deferred = set() if tmp else await self.outbox_keys()
        for area in areas:
            files = self.storage.iter_files(area)
            for _ in range(1 << 40):  # bounded by the files in the area
                chunk = await in_thread(_take, files, self.batch)
                if not chunk:
                    break
                seen += len(chunk)
                old = [f for f in chunk if _age_mark(policy, f) <= cutoff and f.key not in deferred]
                self.report.skipped += len(chunk) - len(old)
                if old:
                    async with self.engine.connect() as conn:
                        unreferenced = await _without_live_row(conn, [f.key for f in old])
                    found.extend(f for f in old if f.key in unreferenced)
                self.progress(policy, seen, None)
                if limit is not None and len(found) > limit:
                    self.refuse(policy, len(found), limit)
                    return
        if self.dry_run:
            free = await in_thread(self._not_held, found) if tmp else found
            self.report.add(policy, len(free), sum(f.size for f in free))
            return
        object_type = ObjectType.tmp_file if tmp else ObjectType.orphan_file
        for start in range(0, len(found), self.batch):
            async with self.engine.connect() as conn:
                batch = found[start : start + self.batch]
                await _LooseBatch(self, conn, policy, object_type, batch, cutoff).run()
            await self.pause()

    async def outbox_keys(self) -> set[str]:
        """Files of jobs answered while PostgreSQL was down: they get their rows at replay.
        Read once per sweep, re-read only when an outbox directory changed (``_OutboxKeys``)."""
        return await in_thread(self.outbox.current)

    def _not_held(self, files: list[FileEntry]) -> list[FileEntry]:
        """The tmp files that no live writer holds (flock probe)."""
        free: list[FileEntry] = []
        for entry in files:
            fd = self.storage.lock_tmp(entry.key)
            if fd is not None:
                free.append(entry)
                _close(fd)
        return free


class _LooseBatch:
    """Audit-then-unlink of files that have no row, under session advisory locks."""

    def __init__(
        self,
        run: _Run,
        conn: AsyncConnection,
        policy: Policy,
        object_type: ObjectType,
        files: list[FileEntry],
        cutoff: float,
    ) -> None:
        self.run_ = run
        self.conn = conn
        self.policy = policy
        self.object_type = object_type
        self.files = files
        self.cutoff = cutoff
        self.locked: set[str] = set()
        self.tmp_fds: list[int] = []

    async def run(self) -> None:
        conn = self.conn
        try:
            self.locked = await try_lock_keys_for_session(conn, [f.key for f in self.files])
            await conn.commit()
            mine = [f for f in self.files if f.key in self.locked]
            self.run_.report.skipped += len(self.files) - len(mine)
            await self._reap(mine)
        finally:
            await self._release()

    async def _reap(self, mine: list[FileEntry]) -> None:
        conn, report = self.conn, self.run_.report
        # re-check under the locks: no live row (committed), file still there and still old
        orphans = await _without_live_row(conn, [f.key for f in mine])
        if self.policy is Policy.orphans:
            orphans -= await self.run_.outbox_keys()
        current = await in_thread(self._restat, [f for f in mine if f.key in orphans])
        audited = await _audit_times(conn, self.object_type, [f.key for f in current])
        new = [f for f in current if audited.get(f.key, -1.0) < f.changed_at]
        if new:
            reason = (
                "in tmp/ longer than the policy"
                if self.policy is Policy.tmp
                else ("orphan file: no live row references it")
            )
            await conn.execute(
                insert(RetentionEvent),
                [
                    {
                        "object_type": self.object_type.value,
                        "object_id": f.key,
                        "storage_key": f.key,
                        "bytes_freed": f.size,
                        "policy": self.policy.value,
                        "reason": reason,
                    }
                    for f in new
                ],
            )
        await conn.commit()  # audit first: a crash from here on leaves only an unlink to redo
        outcomes = await in_thread(self.run_._unlink_all, [f.key for f in current])
        for entry, outcome in zip(current, outcomes, strict=True):
            if isinstance(outcome, StorageError):
                report.error(f"{entry.key}: {outcome}")
            elif outcome:
                report.add(self.policy, 1, entry.size)

    def _restat(self, files: list[FileEntry]) -> list[FileEntry]:
        keep: list[FileEntry] = []
        for entry in files:
            try:
                now = self.run_.storage.stat_key(entry.key)
            except StorageKeyError as exc:
                self.run_.report.error(f"{entry.key}: {exc}")
                continue
            if now is None or _age_mark(self.policy, now) > self.cutoff:
                continue
            if self.policy is Policy.tmp:
                fd = self.run_.storage.lock_tmp(entry.key)
                if fd is None:  # a live writer holds it
                    self.run_.report.skipped += 1
                    continue
                self.tmp_fds.append(fd)
            keep.append(now)
        return keep

    async def _release(self) -> None:
        for fd in self.tmp_fds:
            _close(fd)
        if not self.locked:
            return
        try:
            await self.conn.rollback()
            await unlock_session_keys(self.conn, self.locked)
            await self.conn.commit()
        except Exception:
            await self.conn.invalidate()  # never pool a connection that may keep the locks
            raise


class _OutboxKeys:
    """The keys pending and failed outbox entries name, read once per sweep and re-checked
    before every use by two ``stat`` calls instead of reading every entry again.

    An entry appears, moves to ``failed/`` or comes back only by a rename into ``outbox/`` or
    ``outbox/failed/``, which changes that directory's inode times. The stamps are taken
    *before* the entries are read, so a change during the read shows at the next check. File
    times are coarse (a clock tick), so a change in the same tick as an earlier one could keep
    the stamp: stamps younger than ``SETTLE_NS`` at the read are never trusted (read again).
    """

    SETTLE_NS = 2_000_000_000

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.dirs = (outbox.directory, outbox.directory / FAILED)
        self.keys: set[str] = set()
        self.stamps: tuple[tuple[int, int, int] | None, ...] | None = None
        self.trusted = False
        self.reads = 0

    def _stamps(self) -> tuple[tuple[int, int, int] | None, ...]:
        stamps: list[tuple[int, int, int] | None] = []
        for directory in self.dirs:
            try:
                st = os.stat(directory)
            except FileNotFoundError:
                stamps.append(None)
                continue
            stamps.append((st.st_ino, st.st_mtime_ns, st.st_ctime_ns))
        return tuple(stamps)

    def current(self) -> set[str]:
        stamps = self._stamps()
        if self.trusted and stamps == self.stamps:
            return self.keys
        now = time.time_ns()
        self.keys = self.outbox.referenced_keys()
        self.stamps = stamps
        self.trusted = all(s is None or max(s[1], s[2]) < now - self.SETTLE_NS for s in stamps)
        self.reads += 1
        return self.keys


# ---------------------------------------------------------------- queries


_MARK_AND_AUDIT = """
WITH victim AS (
    SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:sizes AS bigint[]), CAST(:reasons AS text[]))
        WITH ORDINALITY AS v(id, bytes_freed, reason, n)
), gone AS (
    UPDATE {table} AS t SET deleted_at = now() FROM victim
    WHERE t.id = victim.id AND t.deleted_at IS NULL
    RETURNING t.id, t.storage_key, victim.bytes_freed, victim.reason, victim.n
)
INSERT INTO retention_events (object_type, object_id, storage_key, bytes_freed, policy, reason)
SELECT :object_type, CAST(gone.id AS text), gone.storage_key, gone.bytes_freed, :policy,
       gone.reason
FROM gone ORDER BY gone.n
"""  # audit rows in the victims' order (expired before least recently used, for quota)


def _uuid_array(ids: list[uuid.UUID]) -> Any:
    """One array parameter instead of an IN list of as many parameters as ids."""
    return bindparam("ids", ids, type_=ARRAY(Uuid()))


async def _mark_and_audit(
    conn: AsyncConnection, kind: _RowKind, policy: Policy, victims: list[_Victim]
) -> None:
    """One statement per batch: mark the (locked) rows deleted and write their audit rows."""
    statement = _MARK_AND_AUDIT.format(table=kind.model.__tablename__)
    await conn.execute(
        text(statement),
        {
            "ids": [v.id for v in victims],
            "sizes": [v.size for v in victims],
            "reasons": [v.reason for v in victims],
            "object_type": kind.object_type.value,
            "policy": policy.value,
        },
    )


async def _live_count(conn: AsyncConnection, model: type[MediaFile] | type[Artifact]) -> int:
    return int(await conn.scalar(select(func.count()).where(model.deleted_at.is_(None))) or 0)


async def _live_totals(conn: AsyncConnection) -> tuple[int, int]:
    """(bytes, rows) of live media files and artifacts together."""
    total_bytes, total_rows = 0, 0
    for model in (MediaFile, Artifact):
        nbytes, rows = (
            await conn.execute(
                select(func.coalesce(func.sum(model.size_bytes), 0), func.count()).where(
                    model.deleted_at.is_(None)
                )
            )
        ).one()
        total_bytes += int(nbytes)
        total_rows += int(rows)
    return total_bytes, total_rows


def _expired(kind: _RowKind, settings: RetentionSettings) -> ColumnElement[bool]:
    """Past its stamped expiry, or (no stamp) past the policy since last use."""
    if kind is _MEDIA:
        used_at, ttl = MediaFile.last_accessed_at, timedelta(days=settings.uploads_days)
    else:
        used_at, ttl = Artifact.created_at, timedelta(days=settings.artifacts_days)
    model = kind.model
    return or_(
        model.expires_at <= func.now(),
        and_(model.expires_at.is_(None), used_at <= func.now() - ttl),
    )


async def _quota_candidates(
    conn: AsyncConnection,
    settings: RetentionSettings,
    limit: int,
    exclude: set[uuid.UUID],
    page: int | None,
) -> Sequence[Row[Any]]:
    """Live rows of both tables, expired first, then least recently used."""
    parts = []
    for tag, kind, used_at in (
        ("m", _MEDIA, MediaFile.last_accessed_at),
        ("a", _ARTIFACTS, Artifact.created_at),
    ):
        model = kind.model
        parts.append(
            select(
                literal(tag).label("src"),
                model.id,
                model.storage_key,
                model.size_bytes,
                func.coalesce(_expired(kind, settings), false()).label("expired"),
                used_at.label("used_at"),
            ).where(model.deleted_at.is_(None))
        )
    both = union_all(*parts).subquery()
    query = select(both).order_by(both.c.expired.desc(), both.c.used_at, both.c.id).limit(limit)
    if page is not None:  # dry run: nothing gets deleted, so page through
        query = query.offset(page * limit)
    elif exclude:
        query = query.where(both.c.id.not_in(exclude))
    return (await conn.execute(query)).all()


async def _without_live_row(conn: AsyncConnection, keys: list[str]) -> set[str]:
    """The keys that no live media file or artifact references (each lookup by an index:
    canonical upload keys by sha256, artifact keys by storage_key)."""
    by_sha = {sha: key for key in keys if (sha := sha256_of_upload_key(key))}
    artifact_keys = [k for k in keys if k.startswith(f"{ARTIFACTS}/")]
    odd = [k for k in keys if k not in by_sha.values() and k not in artifact_keys]
    live: set[str] = set()
    if by_sha:
        rows = await conn.execute(
            select(MediaFile.sha256, MediaFile.storage_key).where(
                MediaFile.sha256.in_(list(by_sha)), MediaFile.deleted_at.is_(None)
            )
        )
        live.update(by_sha[r.sha256] for r in rows if r.storage_key == by_sha[r.sha256])
    for model, subset in ((Artifact, artifact_keys + odd), (MediaFile, odd)):
        if subset:
            found = await conn.execute(
                select(model.storage_key).where(
                    model.storage_key.in_(subset), model.deleted_at.is_(None)
                )
            )
            live.update(found.scalars())
    return set(keys) - live


async def _audit_times(
    conn: AsyncConnection, object_type: ObjectType, keys: list[str]
) -> dict[str, float]:
    """Latest audit time per key (epoch seconds)."""
    if not keys:
        return {}
    rows = await conn.execute(
        select(RetentionEvent.object_id, func.max(RetentionEvent.occurred_at))
        .where(RetentionEvent.object_type == object_type.value, RetentionEvent.object_id.in_(keys))
        .group_by(RetentionEvent.object_id)
    )
    return {key: when.timestamp() for key, when in rows}


async def retention_totals(engine: AsyncEngine) -> dict[str, tuple[int, int]]:
    """Per policy: (objects deleted, bytes freed) from the audit table, for metrics."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(
                RetentionEvent.policy,
                func.count(),
                func.coalesce(func.sum(RetentionEvent.bytes_freed), 0),
            ).group_by(RetentionEvent.policy)
        )
        return {policy: (int(n), int(b)) for policy, n, b in rows}


# ---------------------------------------------------------------- helpers


def _age_mark(policy: Policy, entry: FileEntry) -> float:
    """tmp/ ages by last write (an in-flight write is flock-protected anyway); orphans by
    their last change, so a file just renamed onto its key looks new."""
    return entry.modified_at if policy is Policy.tmp else entry.changed_at


def _take(files: Iterator[FileEntry], n: int) -> list[FileEntry]:
    return list(islice(files, n))


def _close(fd: int) -> None:
    with suppress(OSError):
        os.close(fd)


def _recent_artifact_dir(key: str) -> bool:
    """Keep folders that may hold a day >= today - 2 (writers create them without locks)."""
    cutoff = datetime.now(UTC).date() - timedelta(days=_ARTIFACT_DIR_KEEP_DAYS)
    parts = key.split("/")[1:4]
    try:
        numbers = tuple(int(p) for p in parts)
    except ValueError:
        return True  # not the dated layout: leave it alone
    if not numbers:
        return True
    start = (cutoff.year, cutoff.month, cutoff.day)[: len(numbers)]
    if len(numbers) == 3:
        try:
            return date(*numbers) >= cutoff
        except ValueError:
            return True
    return numbers >= start


# ---------------------------------------------------------------- entry points


async def run_sweep(
    settings: Settings,
    url: str,
    *,
    dry_run: bool = False,
    policies: Sequence[Policy] | None = None,
    on_progress: ProgressCallback | None = None,
) -> SweepReport:
    """Sweep the configured database and storage root (what ``invoke retention`` runs).

    The root's identity is checked before anything is created in it. A dry run builds the
    store without ``open()``: nothing is created, probed or cleaned. A real run does not clean
    tmp/ on open either: its ``tmp`` policy removes old leftovers with an audit row, so a dry
    run announces exactly what the real run does. Deleted media leave the cache at once.
    """
    from app_patch.bootstrap import redis_url
    from app_patch.cache import Kind, RedisCache
    from app_patch.db import engine_scope
    from app_patch.metrics import record_sweep

    cache = RedisCache(settings, redis_url(settings))

    async def forget(sha256s: list[str]) -> None:
        await asyncio.gather(*(cache.invalidate(Kind.media, sha) for sha in sha256s))

    try:
        async with engine_scope(settings.db, url) as engine:
            sweeper = Sweeper(
                engine, Storage(settings.storage), settings.retention, on_media_deleted=forget
            )
            await sweeper.check_identity()
            if not dry_run:
                sweeper.storage = await Storage.open(settings.storage, clean_tmp=False)
            report = await sweeper.sweep(
                dry_run=dry_run, policies=policies, on_progress=on_progress
            )
            if not dry_run:  # for /metrics: this process is never scraped
                record_sweep(sweeper.storage.root, report.error_count)
            return report
    finally:
        await cache.close()


def sweep_configured(
    settings: Settings,
    url: str,
    *,
    dry_run: bool = False,
    policies: Sequence[Policy] | None = None,
    on_progress: ProgressCallback | None = None,
) -> SweepReport:
    """``run_sweep`` for command lines: an unusable store becomes a one-line ``OperatorError``
    (a store that is not the database's raises ``StoreMismatchError``, one line too)."""
    try:
        return asyncio.run(
            run_sweep(settings, url, dry_run=dry_run, policies=policies, on_progress=on_progress)
        )
    except StorageUnavailableError as exc:
        raise OperatorError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m app_patch.retention [--dry-run] [--policy NAMES] [--progress]``.

    Prints JSON lines: with ``--progress`` one ``{"event": "progress", ...}`` per update, then
    always ``{"event": "report", ...}``. A refusal is one ``error:`` line on stderr, exit 1.
    ``invoke retention`` runs this inside the API container for a container stack.
    """
    from app_patch.errors import one_line_errors
    from app_patch.settings import get_settings
    from app_patch.target import resolve_target

    parser = argparse.ArgumentParser(prog="python -m app_patch.retention")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--policy", default="")
    parser.add_argument("--progress", action="store_true", help="JSON progress lines")
    args = parser.parse_args(argv)

    def progress(policy: Policy, done: int, total: int | None) -> None:
        event = {"event": "progress", "policy": str(policy), "done": done, "total": total}
        print(json.dumps(event), flush=True)

    with one_line_errors():
        policies = parse_policies(args.policy)
        settings = get_settings()
        target = resolve_target(settings)
        report = sweep_configured(
            settings,
            target.database_url,
            dry_run=args.dry_run,
            policies=policies,
            on_progress=progress if args.progress else None,
        )
    print(json.dumps({"event": "report", **report.as_dict()}), flush=True)
    return 1 if report.error_count else 0


if __name__ == "__main__":
    raise SystemExit(main())
