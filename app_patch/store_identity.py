"""Which storage root belongs to which database: a marker file in the root, a row in the database.

A root gets a random id in ``<root>/.store-id`` the first time a writer opens it; the database
records the id of the root its rows point into (``store_identity``, one row) the first time a
writer uses the pair. From then on:

* a writer (the API, ``MediaStore``) refuses to store into a root whose id differs (507), so two
  roots never fill one database;
* retention's reconciling policies (missing, orphans, quota) refuse, with one line, a root
  whose id is not the recorded one, and a database that has live rows but no recorded root.
  A host-side sweep pointed at the wrong directory therefore removes nothing.

Only writers claim an unrecorded database (they run where the files are), and only a root that
is provably its own (``_may_claim``). A sweeper never claims: with no recorded root it goes on
only where nothing could be lost (no live file rows and no stored files), and refuses otherwise.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from app_patch.errors import OperatorError
from app_patch.models import Artifact, MediaFile, StoreIdentity
from app_patch.storage import ARTIFACTS, UPLOADS, create_durably

MARKER_NAME = ".store-id"
_CLAIM_LOCK = 0x6D61_7374  # "mast": media-analysis store claim (advisory lock id)


class StoreMismatchError(OperatorError):
    """The storage root is not the one the database's rows point into."""


def marker_path(root: Path) -> Path:
    return Path(root) / MARKER_NAME


def read_marker(root: Path) -> uuid.UUID | None:
    """The root's id, or None when it has no (readable) marker. Never creates anything."""
    try:
        return uuid.UUID(marker_path(root).read_text(encoding="ascii").strip())
    except (FileNotFoundError, NotADirectoryError, ValueError, UnicodeDecodeError):
        return None


def ensure_marker(root: Path) -> uuid.UUID:
    """The root's id, writing a new one if it has none (operators and tests adopting a root)."""
    existing = read_marker(root)
    if existing is not None:
        return existing
    _create_marker(root, uuid.uuid4())
    found = read_marker(root)
    if found is None:
        raise StoreMismatchError(f"cannot read the storage marker {MARKER_NAME} just written")
    return found


async def recorded_id(conn: AsyncConnection) -> uuid.UUID | None:
    value: uuid.UUID | None = await conn.scalar(select(StoreIdentity.store_id))
    return value


async def claim(conn: AsyncConnection, store_id: uuid.UUID) -> uuid.UUID:
    """Record ``store_id`` unless an id is recorded already; returns the recorded id."""
    await conn.execute(insert(StoreIdentity).values(store_id=store_id).on_conflict_do_nothing())
    recorded = await recorded_id(conn)
    assert recorded is not None
    return recorded


def _mismatch(root: Path, marker: uuid.UUID | None, recorded: uuid.UUID) -> StoreMismatchError:
    found = "has no storage marker" if marker is None else "belongs to another database"
    return StoreMismatchError(
        f"storage root {root} {found} (the database records store {str(recorded)[:8]}); "
        "check MA_STORAGE_ROOT and the database URL, or run retention where the volume is"
    )


async def check_for_writer(conn: AsyncConnection, root: Path) -> uuid.UUID:
    """For code that stores files: require the recorded root, or record this one when the
    database records none and the root is provably its own (see ``_may_claim``).

    The claim is inserted before the marker is created (``link``: first one wins) and both
    commit together with the caller's transaction, so a lost race changes nothing.
    """
    recorded = await recorded_id(conn)
    marker = read_marker(root)
    if recorded is None:  # claim under a lock: concurrent first writers see one outcome
        await conn.execute(select(func.pg_advisory_xact_lock(_CLAIM_LOCK)))
        recorded = await recorded_id(conn)
        marker = read_marker(root)
    if recorded is not None:
        if marker != recorded:
            raise _mismatch(root, marker, recorded)
        return recorded
    await _may_claim(conn, root, marker)
    store_id = marker or uuid.uuid4()
    recorded = await claim(conn, store_id)
    if recorded != store_id:  # another writer claimed meanwhile: check against theirs
        raise _mismatch(root, marker, recorded)
    if marker is None and not _create_marker(root, store_id):
        raise StoreMismatchError("another process wrote the storage marker at the same time; retry")
    return store_id


async def _may_claim(conn: AsyncConnection, root: Path, marker: uuid.UUID | None) -> None:
    """An unrecorded database may take a root only where nothing of anyone's can be lost:
    its live rows' files are there (a root of before 0.2, or our own half-finished claim), or
    it has no live rows and the root has no marker of another database's and no stored files.
    """
    sample = await _live_keys_sample(conn)
    if sample:
        present = sum(1 for key in sample if (Path(root) / key).is_file())
        if present * 2 < len(sample):
            raise StoreMismatchError(
                f"storage root {root} holds {present} of {len(sample)} sampled files of the "
                "database's live rows: it is not this database's store; check MA_STORAGE_ROOT"
            )
        return
    if marker is not None and _has_stored_files(root):
        raise StoreMismatchError(
            f"storage root {root} already belongs to another database (it has a storage "
            "marker and stored files); give this database a store of its own"
        )


async def _live_keys_sample(conn: AsyncConnection, size: int = 20) -> list[str]:
    keys: list[str] = []
    for model in (MediaFile, Artifact):
        rows = await conn.scalars(
            select(model.storage_key).where(model.deleted_at.is_(None)).limit(size)
        )
        keys += list(rows)
    return keys


def _create_marker(root: Path, store_id: uuid.UUID) -> bool:
    """Write the marker unless one exists; False when one did."""
    return create_durably(marker_path(root), f"{store_id}\n".encode("ascii"))


async def check_for_sweeper(conn: AsyncConnection, root: Path) -> uuid.UUID | None:
    """For retention: the root must be the recorded one. Read only: with no recorded root, a
    sweep may go on only where nothing could be lost (no live file rows, no stored files)."""
    marker = read_marker(root)
    recorded = await recorded_id(conn)
    if recorded is not None:
        if marker != recorded:
            raise _mismatch(root, marker, recorded)
        return recorded
    if await _live_keys_sample(conn, size=1) or _has_stored_files(root):
        raise StoreMismatchError(
            "the database records no storage root yet, so this root cannot be proven to be "
            "its own: start the API on its storage once (it records the root), then rerun"
        )
    return None


def _has_stored_files(root: Path) -> bool:
    """Any regular file under uploads/ or artifacts/ (stops at the first one)."""
    for area in (UPLOADS, ARTIFACTS):
        for _dirpath, _dirs, files in os.walk(Path(root) / area):
            if files:
                return True
    return False
