"""The sweeper: checks the root's identity, then applies the selected policies in order.

Rows (``uploads``, ``artifacts``, and the batches of ``quota`` and ``missing``): one
transaction per batch locks rows with ``FOR UPDATE SKIP LOCKED``, unlinks their files (an
already missing file is fine), marks them deleted and inserts their audit rows, then commits.
A crash before the commit leaves rows live whose files may be gone; the rerun selects them
again (they are still expired), tolerates the missing files and commits the mark and the audit
once. Concurrent sweepers never see the same locked row, and a row committed as deleted no
longer matches, so each deletion is audited exactly once. Uploads wait on the same row lock.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncEngine

from app_patch import store_identity
from app_patch.retention.expired import expired
from app_patch.retention.loose_files import loose_files
from app_patch.retention.policies import (
    ALL_POLICIES,
    ARTIFACTS_KIND,
    MEDIA,
    Policy,
    recent_artifact_dir,
)
from app_patch.retention.quota import quota
from app_patch.retention.reconcile import missing
from app_patch.retention.report import ProgressCallback, SweepReport
from app_patch.retention.run import MediaDeleted, Run
from app_patch.settings import RetentionSettings
from app_patch.storage import ARTIFACTS, TMP, UPLOADS, Storage
from app_patch.threads import in_thread


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
        run = Run(
            engine or self.engine,
            self.storage,
            self.settings,
            self.on_media_deleted,
            dry_run,
            on_progress or (lambda *_: None),
            selected,
        )
        started = time.monotonic()
        for policy in selected:
            await self._apply(run, policy)
        if not dry_run and {Policy.artifacts, Policy.orphans} & set(selected):
            await in_thread(self.storage.prune_empty_dirs, ARTIFACTS, recent_artifact_dir)
        run.report.elapsed_s = time.monotonic() - started
        return run.report

    @staticmethod
    async def _apply(run: Run, policy: Policy) -> None:
        if policy is Policy.uploads:
            await expired(run, MEDIA)
        elif policy is Policy.artifacts:
            await expired(run, ARTIFACTS_KIND)
        elif policy is Policy.quota:
            await quota(run)
        elif policy is Policy.missing:
            await missing(run)
        elif policy is Policy.orphans:
            await loose_files(run, Policy.orphans, (UPLOADS, ARTIFACTS))
        else:
            await loose_files(run, Policy.tmp, (TMP,))
