"""The ``missing`` policy: live rows whose file is gone are marked deleted ("file missing").

Every live row is checked first; above the reconciliation limit (``Run.guard_limit``) the
policy refuses and marks nothing: a wrong storage root makes every row look missing.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from sqlalchemy import Row, select

from app_patch.retention.policies import ARTIFACTS_KIND, MEDIA, Policy, RowKind, Victim
from app_patch.retention.queries import live_count
from app_patch.storage import StorageKeyError
from app_patch.threads import in_thread

if TYPE_CHECKING:
    from app_patch.retention.run import Run


async def missing(run: Run) -> None:
    """Scan every live row for its file, then mark the ones without (unless refused)."""
    limit = await run.guard_limit()
    found: dict[RowKind, list[uuid.UUID]] = {MEDIA: [], ARTIFACTS_KIND: []}
    checked = 0
    async with run.engine.connect() as conn:
        total = sum([await live_count(conn, kind.model) for kind in found])
    for kind, gone in found.items():
        async for page in live_pages(run, kind, total):
            gone.extend(await in_thread(without_file, run, page))
            checked += len(page)
            run.progress(Policy.missing, checked, total)
            if sum(map(len, found.values())) > limit:
                run.refuse(Policy.missing, sum(map(len, found.values())), limit)
                return
    if run.dry_run:
        run.report.add(Policy.missing, sum(map(len, found.values())), 0)
        return
    for kind, gone in found.items():
        for start in range(0, len(gone), run.batch):
            await mark_missing(run, kind, gone[start : start + run.batch])
            await run.pause()


async def live_pages(
    run: Run, kind: RowKind, total: int
) -> AsyncIterator[list[Row[uuid.UUID, str]]]:
    """Live (id, storage_key) rows in id order, a batch at a time (keyset pagination)."""
    model = kind.model
    last: uuid.UUID | None = None
    for _ in range(total // run.batch + 2):
        query = (
            select(model.id, model.storage_key)
            .where(model.deleted_at.is_(None))
            .order_by(model.id)
            .limit(run.batch)
        )
        if last is not None:
            query = query.where(model.id > last)
        async with run.engine.connect() as conn:
            page = list((await conn.execute(query)).all())
        if not page:
            return
        last = page[-1].id
        yield page


def without_file(run: Run, rows: Sequence[Row[uuid.UUID, str]]) -> list[uuid.UUID]:
    gone: list[uuid.UUID] = []
    for row in rows:
        try:
            if not run.storage.exists(row.storage_key):
                gone.append(row.id)
        except StorageKeyError as exc:
            run.report.error(f"row {row.id}: {exc}")
    return gone


async def mark_missing(run: Run, kind: RowKind, ids: list[uuid.UUID]) -> None:
    model = kind.model
    async with run.engine.begin() as conn:
        candidates = (
            await conn.execute(
                select(model.id, model.storage_key).where(
                    model.id.in_(ids), model.deleted_at.is_(None)
                )
            )
        ).all()
        run.report.skipped += len(ids) - len(candidates)
        rows = await run.lock(conn, kind, candidates, set())
        # stable now: an upload or a replay of the key waits for our locks
        still_gone = set(await in_thread(without_file, run, rows))
        victims = [
            Victim(kind, r.id, r.storage_key, 0, "file missing") for r in rows if r.id in still_gone
        ]
        await run.delete_rows(conn, Policy.missing, victims, set())
    await run.committed()
