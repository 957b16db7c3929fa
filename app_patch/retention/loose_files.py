"""Loose files (the ``orphans`` and ``tmp`` policies): files that no live row references.

Per batch: session advisory locks on the keys (shared with uploads), a re-check (still no
live row, still there, still old), the audit rows are committed, *then* the files are
unlinked, then the locks are released. A crash after the audit commit leaves a file whose
audit row is newer than the file, and the rerun only unlinks it. Files named by a pending or
failed outbox entry are never orphans (``OutboxKeys``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from app_patch.file_locks import try_lock_keys_for_session, unlock_session_keys
from app_patch.models import RetentionEvent
from app_patch.retention.policies import ObjectType, Policy
from app_patch.retention.queries import audit_times, without_live_row
from app_patch.storage import FileEntry, StorageError, StorageKeyError
from app_patch.threads import in_thread

if TYPE_CHECKING:
    from app_patch.retention.run import Run


async def loose_files(run: Run, policy: Policy, areas: tuple[str, ...]) -> None:
    """Scan the areas for old files without a live row, then audit and remove them."""
    tmp = policy is Policy.tmp
    grace = run.settings.tmp_days * 86400 if tmp else run.settings.orphan_grace_s
    limit = None if tmp else await run.guard_limit()
    cutoff = time.time() - grace
    found: list[FileEntry] = []
    seen = 0
    deferred = set() if tmp else await run.outbox_keys()
    for area in areas:
        files = run.storage.iter_files(area)
        for _ in range(1 << 40):  # bounded by the files in the area
            chunk = await in_thread(take, files, run.batch)
            if not chunk:
                break
            seen += len(chunk)
            old = [f for f in chunk if age_mark(policy, f) <= cutoff and f.key not in deferred]
            run.report.skipped += len(chunk) - len(old)
            if old:
                async with run.engine.connect() as conn:
                    unreferenced = await without_live_row(conn, [f.key for f in old])
                found.extend(f for f in old if f.key in unreferenced)
            run.progress(policy, seen, None)
            if limit is not None and len(found) > limit:
                run.refuse(policy, len(found), limit)
                return
    if run.dry_run:
        free = await in_thread(not_held, run, found) if tmp else found
        run.report.add(policy, len(free), sum(f.size for f in free))
        return
    object_type = ObjectType.tmp_file if tmp else ObjectType.orphan_file
    for start in range(0, len(found), run.batch):
        async with run.engine.connect() as conn:
            batch = found[start : start + run.batch]
            await LooseBatch(run, conn, policy, object_type, batch, cutoff).run()
        await run.pause()


def not_held(run: Run, files: list[FileEntry]) -> list[FileEntry]:
    """The tmp files that no live writer holds (flock probe)."""
    free: list[FileEntry] = []
    for entry in files:
        fd = run.storage.lock_tmp(entry.key)
        if fd is not None:
            free.append(entry)
            close_fd(fd)
    return free


@dataclass(eq=False)
class LooseBatch:
    """Audit-then-unlink of files that have no row, under session advisory locks."""

    run_: Run
    conn: AsyncConnection
    policy: Policy
    object_type: ObjectType
    files: list[FileEntry]
    cutoff: float
    locked: set[str] = field(default_factory=set, init=False)
    tmp_fds: list[int] = field(default_factory=list, init=False)

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
        orphans = await without_live_row(conn, [f.key for f in mine])
        if self.policy is Policy.orphans:
            orphans -= await self.run_.outbox_keys()
        current = await in_thread(self._restat, [f for f in mine if f.key in orphans])
        audited = await audit_times(conn, self.object_type, [f.key for f in current])
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
        outcomes = await in_thread(self.run_.unlink_all, [f.key for f in current])
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
            if now is None or age_mark(self.policy, now) > self.cutoff:
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
            close_fd(fd)
        if not self.locked:
            return
        try:
            await self.conn.rollback()
            await unlock_session_keys(self.conn, self.locked)
            await self.conn.commit()
        except Exception:
            await self.conn.invalidate()  # never pool a connection that may keep the locks
            raise


def age_mark(policy: Policy, entry: FileEntry) -> float:
    """tmp/ ages by last write (an in-flight write is flock-protected anyway); orphans by
    their last change, so a file just renamed onto its key looks new."""
    return entry.modified_at if policy is Policy.tmp else entry.changed_at


def take(files: Iterator[FileEntry], n: int) -> list[FileEntry]:
    return list(islice(files, n))


def close_fd(fd: int) -> None:
    with suppress(OSError):
        os.close(fd)
