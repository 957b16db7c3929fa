"""One sweep's state (``Run``) and the row-deletion steps every policy shares."""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, any_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app_patch.file_locks import try_lock_keys
from app_patch.outbox import Outbox
from app_patch.retention.outbox_keys import OutboxKeys
from app_patch.retention.policies import ARTIFACTS_KIND, MEDIA, Policy, RowKind, Victim
from app_patch.retention.queries import live_totals, mark_and_audit, uuid_array
from app_patch.retention.report import PolicyTotals, ProgressCallback, SweepReport
from app_patch.settings import RetentionSettings
from app_patch.storage import (
    Storage,
    StorageError,
    StorageUnavailableError,
    sha256_of_upload_key,
)
from app_patch.threads import in_thread

log = logging.getLogger(__name__)

RECONCILE_MIN = 100  # reconciliation may always remove this many, whatever the fraction


MediaDeleted = Callable[[list[str]], Awaitable[None]]
"""Called after each commit with the sha256 of the media files it deleted (cache upkeep)."""


@dataclass(eq=False)
class Run:
    """The state of one sweep and the steps every policy shares: lock candidate rows, unlink
    their files and mark-and-audit them, tell the cache, pause between batches, and the
    reconciliation guard."""

    engine: AsyncEngine
    storage: Storage
    settings: RetentionSettings
    on_media_deleted: MediaDeleted | None
    dry_run: bool
    progress: ProgressCallback
    selected: tuple[Policy, ...]
    batch: int = field(init=False)
    report: SweepReport = field(init=False)
    deleted_media: list[str] = field(init=False, default_factory=list)
    outbox: OutboxKeys = field(init=False)

    def __post_init__(self) -> None:
        self.batch = self.settings.batch_size
        self.report = SweepReport(self.dry_run, {p: PolicyTotals() for p in self.selected})
        self.outbox = OutboxKeys(Outbox(self.storage.outbox_dir, create=False))

    async def pause(self) -> None:
        if self.settings.batch_pause_s:
            await asyncio.sleep(self.settings.batch_pause_s)

    async def lock(
        self,
        conn: AsyncConnection,
        kind: RowKind,
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
                    .where(model.id == any_(uuid_array(ids)), model.deleted_at.is_(None), *still)
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
        if gone and self.on_media_deleted is not None:
            try:
                await self.on_media_deleted(gone)
            except Exception as exc:  # the cache is never the source of truth
                log.warning("retention: cache not told about %d deletions: %s", len(gone), exc)

    async def delete_rows(
        self,
        conn: AsyncConnection,
        policy: Policy,
        victims: list[Victim],
        failed: set[uuid.UUID],
    ) -> int:
        """Unlink the files of locked rows, then mark them deleted and audit them (same txn)."""
        outcomes = await in_thread(self.unlink_all, [v.key for v in victims])
        done: list[Victim] = []
        unavailable = 0
        for victim, outcome in zip(victims, outcomes, strict=True):
            if isinstance(outcome, StorageError):
                failed.add(victim.id)
                unavailable += isinstance(outcome, StorageUnavailableError)
                self.report.error(f"{victim.kind.object_type} {victim.id}: {outcome}")
                continue
            note = "" if outcome or policy is Policy.missing else " (file was already gone)"
            done.append(
                Victim(victim.kind, victim.id, victim.key, victim.size, victim.reason + note)
            )
        if unavailable and not done:
            raise StorageUnavailableError(f"storage unavailable: {self.report.errors[-1]}")
        for kind in (MEDIA, ARTIFACTS_KIND):
            mine = [v for v in done if v.kind is kind]
            if mine:
                await mark_and_audit(conn, kind, policy, mine)
        self.report.add(policy, len(done), sum(v.size for v in done))
        self.deleted_media += [
            sha for v in done if v.kind is MEDIA and (sha := sha256_of_upload_key(v.key))
        ]
        return len(done)

    def unlink_all(self, keys: list[str]) -> list[bool | StorageError]:
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
            _, live = await live_totals(conn)
        return max(RECONCILE_MIN, int(live * fraction))

    def refuse(self, policy: Policy, found: int, limit: int) -> None:
        self.report.error(
            f"{policy}: refused, {found}+ objects would go (limit {limit}); check "
            "MA_STORAGE_ROOT and the database URL, or raise MA_RETENTION_RECONCILE_MAX_FRACTION"
        )

    async def outbox_keys(self) -> set[str]:
        """Files of jobs answered while PostgreSQL was down: they get their rows at replay.
        Read once per sweep, re-read only when an outbox directory changed (``OutboxKeys``)."""
        return await in_thread(self.outbox.current)
