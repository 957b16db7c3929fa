"""Backup sets on disk: written aside, renamed into place when complete, listed and pruned.

A backup writes into ``<dir>/.partial-<name>/`` while it holds an ``flock`` on
``<dir>/.partial-<name>.lock``; only when the dump, every file and the manifest are written
and fsync'd is the directory renamed to ``<dir>/<name>`` (one ``rename``, then the parent is
fsync'd). A backup killed at any point (SIGKILL included) leaves a ``.partial-`` directory,
never a set that looks complete; the kernel drops its lock, so :func:`prune` can tell a
dead writer's leftovers from a backup that is still running.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from app_patch.storage import fsync_dir
from infra.backup.manifest import MANIFEST, BackupError, Manifest, read_manifest

DEFAULT_DIR = Path(".data") / "backups"
PARTIAL = ".partial-"
_NAME = re.compile(r"ma-backup-\d{8}T\d{6}Z(-\d+)?")


def new_name(now: datetime | None = None) -> str:
    """``ma-backup-20250101T120000Z``: sorts by time."""
    return f"ma-backup-{(now or datetime.now(UTC)):%Y%m%dT%H%M%SZ}"


@dataclass
class PartialSet:
    """A set being written: ``path`` is the ``.partial-`` directory; :meth:`complete` renames
    it into place and returns the final path."""

    directory: Path
    name: str
    path: Path
    _lock_fd: int

    def complete(self) -> Path:
        final = self.directory / self.name
        if final.exists():
            raise BackupError(f"{final} exists already: not overwriting a backup set")
        fsync_dir(self.path)
        os.rename(self.path, final)
        fsync_dir(self.directory)
        return final


@contextmanager
def partial_set(directory: Path, name: str | None = None) -> Iterator[PartialSet]:
    """A fresh ``.partial-<name>`` directory under ``directory``, locked while the block runs.
    On an exception it is removed; on SIGKILL it stays, unlocked, for :func:`prune`."""
    directory.mkdir(parents=True, exist_ok=True)
    base = name or new_name()
    for attempt in range(100):  # two backups in the same second get -1, -2, ...
        candidate = base if attempt == 0 else f"{base}-{attempt}"
        lock = directory / f"{PARTIAL}{candidate}.lock"
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        path = directory / f"{PARTIAL}{candidate}"
        if path.exists() or (directory / candidate).exists():
            _unlock(fd, lock)
            continue
        path.mkdir(mode=0o700)
        break
    else:
        raise BackupError(f"cannot find a free backup name under {directory}")
    written = PartialSet(directory, candidate, path, fd)
    try:
        yield written
    finally:
        shutil.rmtree(path, ignore_errors=True)  # gone already once complete() renamed it
        _unlock(fd, lock)


def _unlock(fd: int, lock: Path) -> None:
    with suppress(FileNotFoundError):
        lock.unlink()
    os.close(fd)


@dataclass(frozen=True)
class SetInfo:
    path: Path
    manifest: Manifest

    @property
    def name(self) -> str:
        return self.path.name


def list_sets(directory: Path) -> list[SetInfo]:
    """The complete sets under ``directory`` (a name of ours with a readable manifest),
    oldest first. ``.partial-`` directories are never listed."""
    if not directory.is_dir():
        return []
    found: list[SetInfo] = []
    for entry in sorted(directory.iterdir()):
        if not entry.is_dir() or not _NAME.fullmatch(entry.name):
            continue
        if not (entry / MANIFEST).is_file():
            continue
        try:
            found.append(SetInfo(entry, read_manifest(entry)))
        except BackupError:
            continue
    found.sort(key=lambda s: (s.manifest.created_at, s.name))
    return found


def stale_partials(directory: Path) -> list[Path]:
    """``.partial-`` directories whose writer is gone (their lock is free or missing)."""
    if not directory.is_dir():
        return []
    stale: list[Path] = []
    for entry in sorted(directory.iterdir()):
        if not entry.name.startswith(PARTIAL) or not entry.is_dir():
            continue
        lock = directory / f"{entry.name}.lock"
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            stale.append(entry)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a backup is writing it right now
        finally:
            os.close(fd)
        stale.append(entry)
    return stale


def prune(directory: Path, keep: int) -> list[Path]:
    """Delete complete sets beyond the ``keep`` newest, and stale ``.partial-`` directories
    (with their lock files). Returns what it deleted."""
    if keep < 1:
        raise BackupError("--keep must be at least 1 (the set just written)")
    deleted: list[Path] = []
    complete = list_sets(directory)
    for info in complete[: max(0, len(complete) - keep)]:
        shutil.rmtree(info.path)
        deleted.append(info.path)
    for partial in stale_partials(directory):
        shutil.rmtree(partial, ignore_errors=True)
        with suppress(FileNotFoundError):
            (directory / f"{partial.name}.lock").unlink()
        deleted.append(partial)
    return deleted


def resolve(argument: str, directory: Path) -> Path:
    """A set named on the command line: a path to it, or its name under ``directory``."""
    given = Path(argument)
    for candidate in (given, directory / argument):
        if candidate.is_dir():
            if candidate.name.startswith(PARTIAL):
                raise BackupError(f"{candidate} is an incomplete backup (a .partial- directory)")
            return candidate
    raise BackupError(f"no backup set {argument!r} (looked in . and {directory})")
