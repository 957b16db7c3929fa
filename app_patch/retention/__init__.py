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

Modules: ``policies`` (the policies, object kinds, the dated-folder rule), ``report``,
``queries`` (the SQL), ``sweeper`` (``Sweeper``: identity, then the policies in order),
``run`` (one sweep's state and the shared row-deletion steps), ``expired`` (``uploads``,
``artifacts``), ``quota``, ``reconcile`` (``missing``), ``loose_files`` (``orphans``,
``tmp``), ``outbox_keys`` (the keys outbox entries still need), ``cli`` (entry points).
"""

from app_patch.retention.cli import main, run_sweep, sweep_configured
from app_patch.retention.outbox_keys import OutboxKeys
from app_patch.retention.policies import (
    ALL_POLICIES,
    ObjectType,
    Policy,
    UnknownPolicyError,
    parse_policies,
    recent_artifact_dir,
)
from app_patch.retention.queries import retention_totals
from app_patch.retention.report import PolicyTotals, ProgressCallback, SweepReport
from app_patch.retention.run import MediaDeleted
from app_patch.retention.sweeper import Sweeper

__all__ = [
    "ALL_POLICIES",
    "MediaDeleted",
    "ObjectType",
    "OutboxKeys",
    "Policy",
    "PolicyTotals",
    "ProgressCallback",
    "SweepReport",
    "Sweeper",
    "UnknownPolicyError",
    "main",
    "parse_policies",
    "recent_artifact_dir",
    "retention_totals",
    "run_sweep",
    "sweep_configured",
]
