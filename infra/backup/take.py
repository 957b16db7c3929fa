"""``invoke backup``: one backup set of the current stack (see :mod:`infra.backup`).

Order: the database first, then the files. The snapshot transaction
(:func:`infra.backup.database.exported_snapshot`) gives the dump and the list of live files
one point in time; the files named by that list are then copied and hashed into the set;
a file gone by then is recorded as missing (and reported), never silently skipped.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from app_patch.store_identity import MARKER_NAME
from infra.backup import database, sets
from infra.backup.manifest import (
    DUMP,
    FILES,
    MANIFEST,
    BackupError,
    FileRecord,
    Manifest,
    MissingFile,
)
from infra.backup.progress import BackupProgress, Counter
from infra.backup.stack_site import StackSite, current


@dataclass
class BackupResult:
    path: Path
    manifest: Manifest
    pruned: list[Path] = field(default_factory=list)
    seconds: float = 0.0


class _HashingWriter:
    """Writes through to a file, hashing and counting on the way."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.handle.write(data)


def take_backup(directory: Path, progress: BackupProgress, keep: int | None = None) -> BackupResult:
    """Write one complete set under ``directory`` (aside, then renamed into place); then,
    with ``keep``, prune older sets beyond the newest ``keep`` and stale partial ones."""
    if keep is not None and keep < 1:
        raise BackupError("--keep must be at least 1 (the set just written)")
    started = time.monotonic()
    stack = current()
    progress.step(f"backing up the {stack.engine} stack (files in {stack.site.name})")
    with sets.partial_set(directory) as partial:
        manifest = _write_set(stack, partial.path, partial.name, progress)
        final = partial.complete()
    progress.step(f"complete: {final}")
    pruned = sets.prune(directory, keep) if keep is not None else []
    return BackupResult(final, manifest, pruned, time.monotonic() - started)


def _write_set(stack: StackSite, root: Path, name: str, progress: BackupProgress) -> Manifest:
    site = stack.site
    with database.exported_snapshot(stack.owner_url) as view:
        marker = site.read_marker()
        if view.store_id is not None and marker != view.store_id:
            found = "has no storage marker" if marker is None else f"is store {marker}"
            raise BackupError(
                f"the storage root ({site.name}) {found}, but the database records store "
                f"{view.store_id}: not backing up a mismatched pair"
            )
        if view.store_id is None and view.files:
            raise BackupError(
                "the database records no storage root yet (start the API on its storage "
                "once), so its files cannot be proven to be this store's"
            )
        progress.step(
            f"snapshot {view.snapshot} at {view.taken_at}: revision {view.revision}, "
            f"{sum(view.rows.values())} rows, {len(view.files)} live files"
        )
        with (root / DUMP).open("xb") as out:
            sink = _HashingWriter(out)
            version = site.dump(
                site.tools_target(stack.owner_url),
                view.snapshot,
                sink,  # type: ignore[arg-type]
                Counter(progress, "database", None),
            )
            out.flush()
            os.fsync(out.fileno())
        progress.advance("database", sink.size, sink.size)
        progress.step(f"database: {sink.size:,} bytes ({version})")
    records, missing, changed = _copy_files(stack, root, view.files, progress)
    manifest = Manifest(
        name=name,
        created_at=view.taken_at,
        engine=stack.engine,
        schema_revision=view.revision,
        store_id=str(view.store_id) if view.store_id else None,
        dump_sha256=sink.sha.hexdigest(),
        dump_size=sink.size,
        server_version=view.server_version,
        rows=view.rows,
        files=tuple(records),
        missing=tuple(missing),
        changed=tuple(changed),
        extra={"pg_dump": version, "marker": MARKER_NAME},
    )
    from app_patch.storage import write_durably

    write_durably(root / MANIFEST, manifest.to_json().encode("utf-8"))
    return manifest


def _copy_files(
    stack: StackSite,
    root: Path,
    live: dict[str, database.LiveFile],
    progress: BackupProgress,
) -> tuple[list[FileRecord], list[MissingFile], list[str]]:
    """Copy every live file into ``root/files/<key>``, hashing; report those gone."""
    count = Counter(progress, "files", sum(f.size for f in live.values()))
    records: list[FileRecord] = []
    changed: list[str] = []
    for key, chunks in stack.site.read_files(set(live)):
        target = root / FILES / key
        target.parent.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        with target.open("xb") as out:
            for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
                count(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        sha = digest.hexdigest()
        records.append(FileRecord(key, sha, size))
        if sha != live[key].sha256:
            changed.append(key)
    copied = {r.path for r in records}
    missing = [
        MissingFile(f.key, f.table, f.row_id) for k, f in sorted(live.items()) if k not in copied
    ]
    for gone in missing:
        progress.step(
            f"warning: {gone.path} ({gone.table} {gone.row_id}) was gone when the files were "
            "copied (deleted by retention after the snapshot?): restore marks that row deleted"
        )
    for key in changed:
        progress.step(f"warning: {key} does not match its row's sha256 (kept as found)")
    records.sort(key=lambda r: r.path)
    progress.step(f"files: {len(records)} copied, {sum(r.size for r in records):,} bytes")
    return records, missing, changed
