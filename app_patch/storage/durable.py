"""Durable directory changes: fsync'd directories and mkdir, atomic replace, first-wins create."""

from __future__ import annotations

import os
import secrets
from contextlib import suppress
from pathlib import Path

from app_patch.storage.keys import MAX_DEPTH


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def mkdir_synced(directory: Path) -> None:
    """``mkdir -p`` that fsyncs the parent of every directory it creates."""
    missing: list[Path] = []
    current = directory
    for _ in range(MAX_DEPTH + 2):
        if current.is_dir() or current == current.parent:
            break
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        with suppress(FileExistsError):
            path.mkdir()
            fsync_dir(path.parent)


def _write_tmp(final: Path, body: bytes) -> Path:
    """A fully written, fsync'd sibling of ``final`` under a name no other writer uses."""
    tmp = final.with_name(f"{final.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(body)
        handle.flush()
        os.fsync(handle.fileno())
    return tmp


def write_durably(final: Path, body: bytes) -> None:
    """Replace ``final`` with ``body`` atomically and durably (temp, fsync, rename, dir fsync)."""
    tmp = _write_tmp(final, body)
    try:
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)


def create_durably(final: Path, body: bytes) -> bool:
    """Create ``final`` holding ``body`` unless it exists; False when it did. The file is
    complete before ``link()`` makes it visible, and ``link()`` fails if the name exists, so
    of several processes sharing the volume exactly one wins."""
    tmp = _write_tmp(final, body)
    try:
        os.link(tmp, final)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(final.parent)
    return True
