"""The one lock discipline for anything that deletes or revives a stored file.

Order, everywhere:

1. **the storage-key advisory lock** (``key_lock_id(key)``): writers wait for it
   (``lock_key``: an upload placing its file, an outbox replay reviving a row for a file placed
   earlier); sweepers only try it and skip a busy key (``try_lock_keys``,
   ``try_lock_keys_for_session``), so a sweep never waits behind an upload and never deadlocks;
2. **the row lock** (``FOR UPDATE``, sweepers with ``SKIP LOCKED``) on the ``media_files`` /
   ``artifacts`` row that names the key;
3. **a re-check under both**: a writer checks the file is (still) there before it makes the row
   live; a sweeper re-reads the row (still live, still expired or still without its file) and,
   for loose files, that the file is still there, still old and still without a live row.

Transaction-scoped locks (``pg_advisory_xact_lock``) serve the row paths: they end with the
commit that marks the row. Loose files (orphans, tmp) have no row and are audited before they
are unlinked, so they hold session locks across that commit and release them afterwards.
A file named by an outbox entry (pending or failed) belongs to a job that was answered while
PostgreSQL was down: reconciliation leaves it alone until the entry is replayed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession


def key_lock_id(key: str) -> int:
    """The PostgreSQL advisory-lock id that serialises placing and reaping one key."""
    digest = hashlib.sha256(f"ma-storage:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def lock_key(session: AsyncSession | AsyncConnection, key: str) -> None:
    """Step 1 for writers: wait for the key's lock, held until the transaction ends."""
    await session.execute(select(func.pg_advisory_xact_lock(key_lock_id(key))))


async def try_lock_keys(conn: AsyncConnection, keys: Iterable[str]) -> set[str]:
    """Step 1 for row sweepers: the keys whose lock this transaction got (busy ones skipped)."""
    by_id = {key_lock_id(key): key for key in keys}
    if not by_id:
        return set()
    got = await conn.execute(
        text(
            "SELECT k FROM unnest(CAST(:ids AS bigint[])) AS k WHERE pg_try_advisory_xact_lock(k)"
        ),
        {"ids": list(by_id)},
    )
    return {by_id[int(k)] for k in got.scalars()}


async def try_lock_keys_for_session(conn: AsyncConnection, keys: Iterable[str]) -> set[str]:
    """Step 1 for loose files: session locks that outlive the audit commit. Release them with
    ``unlock_session_keys`` (or by closing the connection)."""
    by_id = {key_lock_id(key): key for key in keys}
    if not by_id:
        return set()
    got = await conn.execute(
        text("SELECT k FROM unnest(CAST(:ids AS bigint[])) AS k WHERE pg_try_advisory_lock(k)"),
        {"ids": list(by_id)},
    )
    return {by_id[int(k)] for k in got.scalars()}


async def unlock_session_keys(conn: AsyncConnection, keys: Iterable[str]) -> None:
    ids = [key_lock_id(key) for key in keys]
    if ids:
        await conn.execute(
            text("SELECT pg_advisory_unlock(k) FROM unnest(CAST(:ids AS bigint[])) AS k"),
            {"ids": ids},
        )
