"""Sweeps and outbox replays of the same content, interleaved: every live row keeps its file.

The replay revives a ``media_files`` row for a file placed while PostgreSQL was down; the
sweeper expires, reconciles and reaps the same key at the same moment. ``file_locks`` orders
both (key lock, row lock, re-check), so whichever wins, no live row is left without its file.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app_patch import repository as repo
from app_patch.breaker import Breaker
from app_patch.db import is_database_outage
from app_patch.media import MediaStore
from app_patch.outbox import Outbox, OutboxEntry, OutboxReplayer
from app_patch.retention import Policy, Sweeper
from app_patch.storage import Storage, upload_key
from tests.integration.test_storage_support import (
    execute,
    query,
    retention_settings,
    storage_settings,
)

pytestmark = pytest.mark.usefixtures("clean_db")
ROUNDS = 200
CONTENT = b"the same bytes, every round\n"


async def _chunks() -> AsyncIterator[bytes]:
    yield CONTENT


def _finished(snapshot: repo.MediaSnapshot) -> OutboxEntry:
    now = datetime.now(UTC)
    new = repo.NewJob("basic", job_id=uuid.uuid4())
    return OutboxEntry(repo.FinishedJob(new, now, now, None, "deferred"), snapshot)


def _live_rows_without_file(url: str, root: Path) -> list[str]:
    rows = query(url, "SELECT storage_key FROM media_files WHERE deleted_at IS NULL")
    return [str(key) for (key,) in rows if not (root / str(key)).is_file()]


async def test_interleaved_sweeps_and_replays_never_leave_a_live_row_without_its_file(
    engine: AsyncEngine,
    session_factory: async_sessionmaker[AsyncSession],
    tmp_path: Path,
    clean_db: str,
) -> None:
    storage = await Storage.open(storage_settings(tmp_path / "root"))
    settings = retention_settings(orphan_grace_s=0, reconcile_max_fraction=1)
    media = MediaStore(session_factory, storage, settings)
    await media.check_identity()
    outbox = Outbox(storage.outbox_dir)
    breaker = Breaker("postgres", threshold=3, recovery_s=1, is_outage=is_database_outage)
    replayer = OutboxReplayer(outbox, session_factory, breaker, media, interval_s=1)
    sweeper = Sweeper(engine, storage, settings)
    policies = [Policy.uploads, Policy.missing, Policy.orphans]

    replayed = swept = 0
    rng = random.Random(11)
    for n in range(ROUNDS):
        async with storage.stage(_chunks()) as staged:
            key = upload_key(staged.sha256)
            await storage.place(staged, key)  # what the API keeps while PostgreSQL is down
            snapshot = repo.MediaSnapshot(staged.sha256, staged.size_bytes, "text/plain", key)
        if rng.random() < 0.5:  # a deferred job names the file; otherwise a sweep may take it
            outbox.append(_finished(snapshot))
        execute(clean_db, "UPDATE media_files SET expires_at = now() - interval '1 second'")
        lag = rng.uniform(0, 0.04)  # the replay starts before, during or after the sweep

        async def replay(lag: float = lag) -> int:
            await asyncio.sleep(lag)
            return await replayer.drain_once()

        done, report = await asyncio.gather(replay(), sweeper.sweep(policies=policies))
        replayed += done
        swept += report.total_objects
        assert report.error_count == 0, report.errors
        assert _live_rows_without_file(clean_db, storage.root) == [], f"round {n}"
        assert outbox.failed_count() == 0
    assert replayed > ROUNDS // 4
    print(f"\n{ROUNDS} rounds: {replayed} replays, {swept} objects swept")
    assert swept > 0, "the sweeper really raced the replays"
