"""The sweeper's SQL: expiry, quota candidates, live-row lookups, the mark-and-audit statement."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Row,
    and_,
    bindparam,
    false,
    func,
    literal,
    or_,
    select,
    text,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.types import ARRAY, Uuid

from app_patch.models import Artifact, MediaFile, RetentionEvent
from app_patch.retention.policies import ARTIFACTS_KIND, MEDIA, ObjectType, Policy, RowKind, Victim
from app_patch.settings import RetentionSettings
from app_patch.storage import ARTIFACTS, sha256_of_upload_key

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


def uuid_array(ids: list[uuid.UUID]) -> Any:
    """One array parameter instead of an IN list of as many parameters as ids."""
    return bindparam("ids", ids, type_=ARRAY(Uuid()))


async def mark_and_audit(
    conn: AsyncConnection, kind: RowKind, policy: Policy, victims: list[Victim]
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


async def live_count(conn: AsyncConnection, model: type[MediaFile] | type[Artifact]) -> int:
    return int(await conn.scalar(select(func.count()).where(model.deleted_at.is_(None))) or 0)


async def live_totals(conn: AsyncConnection) -> tuple[int, int]:
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


def expired_clause(kind: RowKind, settings: RetentionSettings) -> ColumnElement[bool]:
    """Past its stamped expiry, or (no stamp) past the policy since last use."""
    if kind is MEDIA:
        used_at, ttl = MediaFile.last_accessed_at, timedelta(days=settings.uploads_days)
    else:
        used_at, ttl = Artifact.created_at, timedelta(days=settings.artifacts_days)
    model = kind.model
    return or_(
        model.expires_at <= func.now(),
        and_(model.expires_at.is_(None), used_at <= func.now() - ttl),
    )


async def quota_candidates(
    conn: AsyncConnection,
    settings: RetentionSettings,
    limit: int,
    exclude: set[uuid.UUID],
    page: int | None,
) -> Sequence[Row[Any]]:
    """Live rows of both tables, expired first, then least recently used."""
    parts = []
    for tag, kind, used_at in (
        ("m", MEDIA, MediaFile.last_accessed_at),
        ("a", ARTIFACTS_KIND, Artifact.created_at),
    ):
        model = kind.model
        parts.append(
            select(
                literal(tag).label("src"),
                model.id,
                model.storage_key,
                model.size_bytes,
                func.coalesce(expired_clause(kind, settings), false()).label("expired"),
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


async def without_live_row(conn: AsyncConnection, keys: list[str]) -> set[str]:
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


async def audit_times(
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
