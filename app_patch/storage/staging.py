"""Staged writes: a flock'd tmp file filled while hashing, fsync'd, then placed under a key."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import secrets
import stat
import threading
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from app_patch.storage.durable import fsync_dir, mkdir_synced
from app_patch.storage.errors import (
    StorageError,
    StorageKeyError,
    StorageUnavailableError,
    UploadTooLargeError,
)
from app_patch.storage.keys import TMP_PREFIX, TMP_SUFFIX
from app_patch.threads import in_thread

_CREATE_ATTEMPTS = 5


@dataclass
class StagedFile:
    """A fully written, fsync'd tmp file (flock'd by us) waiting to be placed under a key."""

    path: Path
    sha256: str
    size_bytes: int
    fd: int
    placed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _write(self, data: bytes | bytearray, hasher: hashlib._Hash) -> None:
        with self._lock:
            hasher.update(data)
            view = memoryview(data)
            for _ in range(len(view) + 1):  # os.write returns >= 1 byte per call
                if not view:
                    return
                view = view[os.write(self.fd, view) :]
            raise StorageUnavailableError("storage unavailable: write made no progress")

    def _release(self) -> None:
        """Remove the tmp file unless placed, then drop the fd (and with it the flock)."""
        with self._lock:
            if not self.placed:
                with suppress(FileNotFoundError):
                    os.unlink(self.path)
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1


@asynccontextmanager
async def staged_tmp(
    tmp_dir: Path, chunks: AsyncIterable[bytes], limit: int, chunk_bytes: int
) -> AsyncIterator[StagedFile]:
    """``Storage.stage``: a new tmp file filled from ``chunks``, released on exit unless placed."""
    staged = await in_thread(create_tmp, tmp_dir)
    try:
        await _fill(staged, chunks, limit, chunk_bytes)
        yield staged
    finally:
        await asyncio.shield(in_thread(staged._release))


async def _fill(
    staged: StagedFile, chunks: AsyncIterable[bytes], limit: int, chunk_bytes: int
) -> None:
    hasher = hashlib.sha256()
    buffer = bytearray()
    total = 0
    try:
        async for chunk in chunks:
            total += len(chunk)
            if total > limit:
                raise UploadTooLargeError(limit)
            buffer += chunk
            if len(buffer) >= chunk_bytes:
                data, buffer = buffer, bytearray()
                await in_thread(staged._write, data, hasher)
        if buffer:
            await in_thread(staged._write, buffer, hasher)
        await in_thread(os.fsync, staged.fd)
    except OSError as exc:
        raise StorageUnavailableError.from_os(exc, "write to tmp/") from exc
    staged.sha256 = hasher.hexdigest()
    staged.size_bytes = total


def create_tmp(tmp_dir: Path) -> StagedFile:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    for _ in range(_CREATE_ATTEMPTS):
        path = tmp_dir / f"{TMP_PREFIX}{secrets.token_hex(16)}{TMP_SUFFIX}"
        try:
            fd = os.open(path, flags, 0o640)
        except OSError as exc:
            raise StorageUnavailableError.from_os(exc, "create a file in tmp/") from exc
        if lock_and_verify(fd, path):
            return StagedFile(path=path, sha256="", size_bytes=0, fd=fd)
        os.close(fd)  # a start-up cleaner took it between open and lock: try a new name
    raise StorageUnavailableError("storage unavailable: cannot keep a file in tmp/")


def lock_and_verify(fd: int, path: Path) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
    except OSError:
        return False


def place_staged(staged: StagedFile, final: Path, key: str, replace: bool) -> bool:
    """``Storage.place`` once ``key`` is checked and turned into the path ``final``."""
    with staged._lock:
        if staged.placed or staged.fd < 0:
            raise StorageError("staged file was already placed or released")
        try:
            existing = os.lstat(final)
        except FileNotFoundError:
            existing = None
        except OSError as exc:
            raise StorageUnavailableError.from_os(exc, f"inspect {key}") from exc
        if existing is not None and not stat.S_ISREG(existing.st_mode):
            raise StorageKeyError(f"refusing to write over a non-regular file at {key}")
        if existing is not None and not replace and existing.st_size == staged.size_bytes:
            return False
        try:
            mkdir_synced(final.parent)
            os.rename(staged.path, final)
            staged.placed = True
            fsync_dir(final.parent)
        except OSError as exc:
            raise StorageUnavailableError.from_os(exc, f"place {key}") from exc
        return True


def probe(tmp_dir: Path, root: Path) -> None:
    """Create, fsync and remove a file in tmp/: the store is really writable."""
    try:
        staged = create_tmp(tmp_dir)
        try:
            staged._write(b"probe", hashlib.sha256())
            os.fsync(staged.fd)
        finally:
            staged._release()
    except OSError as exc:
        raise StorageUnavailableError.from_os(exc, f"write under {root}") from exc
