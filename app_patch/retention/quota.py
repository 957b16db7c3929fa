"""The ``quota`` policy: above ``quota_bytes``, expired rows first, then least recently used."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from app_patch.retention.policies import ARTIFACTS_KIND, MEDIA, Policy, Victim
from app_patch.retention.queries import live_totals, quota_candidates

if TYPE_CHECKING:
    from app_patch.retention.run import Run


async def quota(run: Run) -> None:
    limit = run.settings.quota_bytes
    if limit is None:
        run.progress(Policy.quota, 0, 0)
        return
    async with run.engine.connect() as conn:
        used, live = await live_totals(conn)
        if run.dry_run:
            # bytes the expiry policies of this same run would free do not count
            for kind in (MEDIA, ARTIFACTS_KIND):
                if kind.policy in run.selected:
                    used -= run.report.policies[kind.policy].bytes
    excess = used - limit
    run.progress(Policy.quota, 0, None)
    if excess <= 0:
        return
    reason = f"over quota ({used} > {limit} bytes)"
    skip_expired = run.dry_run and bool({Policy.uploads, Policy.artifacts} & set(run.selected))
    passed: set[uuid.UUID] = set()  # locked by another sweeper: not candidates again
    freed = 0
    for page in range(live // run.batch + 2):
        if freed >= excess:
            break
        async with run.engine.begin() as conn:
            candidates = await quota_candidates(
                conn, run.settings, run.batch, passed, page if run.dry_run else None
            )
            if not candidates:
                break
            if run.dry_run:
                for c in candidates:
                    if freed >= excess:
                        break
                    if skip_expired and c.expired:
                        continue
                    freed += c.size_bytes
                    run.report.add(Policy.quota, 1, c.size_bytes)
                continue
            locked: set[uuid.UUID] = set()
            for tag, kind in (("m", MEDIA), ("a", ARTIFACTS_KIND)):
                mine = [c for c in candidates if c.src == tag]
                if mine:
                    locked |= {r.id for r in await run.lock(conn, kind, mine, passed)}
            victims: list[Victim] = []
            for c in candidates:
                if freed >= excess:
                    break
                if c.id not in locked:
                    continue
                kind = MEDIA if c.src == "m" else ARTIFACTS_KIND
                why = "expired" if c.expired else "least recently used"
                victims.append(Victim(kind, c.id, c.storage_key, c.size_bytes, f"{reason}; {why}"))
                freed += c.size_bytes
            await run.delete_rows(conn, Policy.quota, victims, passed)
        await run.committed()
        run.progress(Policy.quota, run.report.policies[Policy.quota].objects, None)
        await run.pause()
