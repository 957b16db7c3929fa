"""``invoke restore``: a backup set into the current (recorded) stack.

Nothing changes until the set has been verified byte for byte against its manifest, the
target found empty (no job, media or artifact row, no stored file; ``force`` overrides),
the backup's schema revision found among this checkout's migrations and the dump read by the
target's own ``pg_restore --list``. Then, as the target's schema owner:

1. the schema is emptied and ``pg_restore --no-owner --no-acl`` fills it in one transaction
   (objects belong to the target's owner role);
2. migrations run when the backup's revision is older than head;
3. the files are written into the target's storage root and read back, each against the
   manifest;
4. one transaction: the app role's table and sequence grants, ``store_identity`` pointed at
   the target root's own ``.store-id`` (created when the root has none), and rows whose file
   was deleted while the backup ran marked deleted;
5. :func:`app_patch.db_roles.role_problems` as the app role: the API's role can use every
   table and no more.

The target keeps its own store id rather than taking the backup's: a restored copy next to
its source never shares an id with it, so neither database can be paired with the other's
root. A running API keeps the check it made at start (same root, same id) and a restarted
one finds the pair it expects.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError

from app_patch import migrate as migrations
from app_patch.db_roles import role_problems
from infra.backup import database, sets
from infra.backup.manifest import DUMP, BackupError, Manifest, verify_set
from infra.backup.progress import BackupProgress, Counter
from infra.backup.stack_site import StackSite, current


@dataclass
class RestoreResult:
    set_path: Path
    manifest: Manifest
    migrated_from: str | None
    migrated_to: str | None
    store_id: uuid.UUID
    seconds: float


def restore_backup(
    argument: str, directory: Path, progress: BackupProgress, force: bool = False
) -> RestoreResult:
    started = time.monotonic()
    set_dir = sets.resolve(argument, directory)
    stack = current()
    progress.step(f"verifying {set_dir.name} against its manifest")
    manifest = verify_set(set_dir, _bar(progress, "verify set"))
    _refuse_unless_empty(stack, force, progress)
    head = _check_revision(stack.owner_url, manifest.schema_revision)
    db = stack.site.tools_target(stack.owner_url)
    stack.site.check_dump(db, set_dir / DUMP)
    progress.step(f"set verified: {len(manifest.files)} files, {manifest.file_bytes:,} bytes")

    # --- changes start here
    dropped = database.empty_schema(stack.owner_url)
    progress.step(f"emptied the target schema ({len(dropped)} objects)")
    stack.site.restore_dump(db, set_dir / DUMP)
    progress.step(f"database restored at revision {manifest.schema_revision}")
    migrated_to = manifest.schema_revision
    if manifest.schema_revision != head:
        report = migrations.upgrade(stack.owner_url)
        migrated_to = report.to_revision
        progress.step(f"migrated {manifest.schema_revision} -> {migrated_to}")
    stack.site.write_files(set_dir, manifest.files, Counter(progress, "files", manifest.file_bytes))
    _check_copies(stack, manifest, progress)
    store_id = stack.site.read_marker()
    if store_id is None:
        stack.site.write_marker(uuid.uuid4())
        store_id = stack.site.read_marker()
        if store_id is None:
            raise BackupError(f"cannot read the storage marker just written in {stack.site.name}")
    database.finish_restore(stack.owner_url, stack.app_role, store_id, manifest.missing)
    if manifest.missing:
        progress.step(f"{len(manifest.missing)} row(s) whose file was gone marked deleted")
    if stack.app_url is not None:
        problems = role_problems(stack.app_url)
        if problems:
            raise BackupError(f"restored, but the API's role is not right: {problems[0]}")
    progress.step(f"store {store_id} (the target root's) recorded in the restored database")
    return RestoreResult(
        set_dir,
        manifest,
        manifest.schema_revision,
        migrated_to,
        store_id,
        time.monotonic() - started,
    )


def _bar(progress: BackupProgress, phase: str) -> Callable[[int, int], None]:
    def advance(done: int, total: int) -> None:
        progress.advance(phase, done, total)

    return advance


def _refuse_unless_empty(stack: StackSite, force: bool, progress: BackupProgress) -> None:
    rows = {name: count for name, count in database.target_rows(stack.owner_url).items() if count}
    files = stack.site.has_stored_files()
    if not rows and not files:
        return
    what = ", ".join(f"{count} {name} rows" for name, count in rows.items())
    if files:
        what = f"{what}, stored files" if what else "stored files"
    if not force:
        raise BackupError(
            f"the target stack is not empty ({what}): restore replaces its database; "
            "rerun with --force to overwrite it"
        )
    progress.step(f"--force: overwriting a target that holds {what}")


def _check_revision(owner_url: str, revision: str | None) -> str | None:
    """The head of this checkout's migrations; the backup's revision must be one of them
    (a backup from a newer version cannot be restored by this one)."""
    script = ScriptDirectory.from_config(migrations.alembic_config(owner_url))
    head = script.get_current_head()
    if revision is None:
        raise BackupError("the backup records no schema revision: it is not a migrated database")
    try:
        script.get_revision(revision)
    except CommandError:
        raise BackupError(
            f"the backup is at revision {revision}, unknown to this checkout's migrations "
            f"(head {head}): restore it with the version that made it"
        ) from None
    return head


def _check_copies(stack: StackSite, manifest: Manifest, progress: BackupProgress) -> None:
    """Every file read back from the target's storage and checked against the manifest."""
    expected = {record.path: record for record in manifest.files}
    count = Counter(progress, "check files", manifest.file_bytes)
    seen: set[str] = set()
    for key, chunks in stack.site.read_files(set(expected)):
        digest, size = hashlib.sha256(), 0
        for chunk in chunks:
            digest.update(chunk)
            size += len(chunk)
            count(len(chunk))
        record = expected[key]
        if size != record.size or digest.hexdigest() != record.sha256:
            raise BackupError(f"{key} differs from the manifest after it was copied")
        seen.add(key)
    absent = sorted(set(expected) - seen)
    if absent:
        raise BackupError(f"{len(absent)} files missing after the copy, first {absent[0]}")
