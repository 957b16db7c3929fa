"""The expiry policies (``uploads``, ``artifacts``): expired rows deleted batch by batch under
row and key locks, each deletion audited once (see ``sweeper`` for the crash rules)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from app_patch.retention.policies import RowKind, Victim
from app_patch.retention.queries import expired_clause

if TYPE_CHECKING:
    from app_patch.retention.run import Run


async def expired(run: Run, kind: RowKind) -> None:
    """The ``uploads`` and ``artifacts`` policies: rows past their expiry, batch by batch."""
    model = kind.model
    where = (model.deleted_at.is_(None), expired_clause(kind, run.settings))
    async with run.engine.connect() as conn:
        count, nbytes = (
            await conn.execute(
                select(func.count(), func.coalesce(func.sum(model.size_bytes), 0)).where(*where)
            )
        ).one()
    run.progress(kind.policy, 0, count)
    if run.dry_run:
        run.report.add(kind.policy, count, int(nbytes))
        run.progress(kind.policy, count, count)
        return
    passed: set[uuid.UUID] = set()  # failed, or its key busy: not a candidate again
    done = 0
    for _ in range(count // run.batch + 2):
        async with run.engine.begin() as conn:
            query = select(model.id, model.storage_key).where(*where).limit(run.batch)
            if passed:
                query = query.where(model.id.not_in(passed))
            candidates = (await conn.execute(query)).all()
            if not candidates:
                break
            rows = await run.lock(conn, kind, candidates, passed, *where)
            victims = [Victim(kind, r.id, r.storage_key, r.size_bytes, "expired") for r in rows]
            deleted = await run.delete_rows(conn, kind.policy, victims, passed)
        await run.committed()
        done += deleted
        run.progress(kind.policy, done, count)
        await run.pause()
