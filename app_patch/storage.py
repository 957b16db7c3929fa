"""The file store: layout, safe keys, streaming atomic writes, removal and usage figures.

Layout under the root (one filesystem, so a rename is atomic)::

    uploads/<sha[0:2]>/<sha[2:4]>/<sha256>                 content-addressed uploads (dedup)
    artifacts/<yyyy>/<mm>/<dd>/<job_id>/<kind>.<ext>       files derived by a job
    tmp/ma-<random>.part                                   writes in progress
    outbox/                                                owned by outbox.Outbox

Keys are generated here (``upload_key``, ``artifact_key``), never taken from user input, and
every key is checked again when it is turned into a path: a key that is absolute, holds ``..``,
``.``, an empty part, a backslash or a NUL byte, or that resolves outside the root through a
symlink, raises ``StorageKeyError``. OS failures to write (permissions, read-only, disk full)
raise ``StorageUnavailableError`` (HTTP 507).

A write streams chunks into ``tmp/`` while hashing (never the whole file in memory), fsyncs,
renames onto the final key and fsyncs the directory. Every tmp file is ``flock``'d by its writer
for its whole life; the kernel drops that lock when the writer dies, even by SIGKILL. So
``Storage.open()`` removes *every* unlocked ``ma-*.part`` at start-up — crash leftovers of any
age — while writes in flight in other processes (more API workers, the sweeper) keep their files.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import logging
import os
import re
import secrets
import stat
import threading
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from app_patch.settings import StorageSettings
from app_patch.threads import in_thread

log = logging.getLogger(__name__)


UPLOADS, ARTIFACTS, TMP, OUTBOX = "uploads", "artifacts", "tmp", "outbox"
AREAS = (UPLOADS, ARTIFACTS, TMP, OUTBOX)
TMP_PREFIX, TMP_SUFFIX = "ma-", ".part"

_SHA256 = re.compile(r"[0-9a-f]{64}")
_KIND = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_EXT = re.compile(r"[a-z0-9]{1,16}")
_TMP_NAME = re.compile(rf"{TMP_PREFIX}[0-9a-f]{{32}}\{TMP_SUFFIX}")
_MAX_DEPTH = 8  # deepest layout is artifacts/yyyy/mm/dd/job/file: 6 levels
_CREATE_ATTEMPTS = 5


class StorageError(Exception):
    """Base class of file-store failures."""


class StorageKeyError(StorageError, ValueError):
    """A key that is malformed or would resolve outside the storage root (never retried)."""


UnsafePathError = StorageKeyError


class StorageUnavailableError(StorageError):
    """The store cannot be written (permissions, read-only, full): the API answers 507."""

    @classmethod
    def from_os(cls, exc: OSError, what: str) -> StorageUnavailableError:
        reason = exc.strerror or exc.__class__.__name__
        return cls(f"storage unavailable: cannot {what}: {reason} (errno {exc.errno})")


class UploadTooLargeError(StorageError):
    """More bytes arrived than allowed (HTTP 413); the partial tmp file is already removed."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"upload exceeds the limit of {limit} bytes")
        self.limit = limit


class StoredFileMissingError(StorageError, FileNotFoundError):
    """The key is valid but no file is there (deleted, or lost outside the store)."""


class AreaUsage(NamedTuple):
    files: int
    bytes: int


@dataclass(frozen=True)
class FileEntry:
    """One regular file found under an area, with the age used by reconciliation."""

    key: str
    size: int
    changed_at: float  # max(mtime, ctime): a rename onto the key counts as a change
    modified_at: float  # mtime alone: when a tmp file was last written to


# ---------------------------------------------------------------- keys


def upload_key(sha256: str) -> str:
    """``uploads/ab/cd/<sha256>``; the digest must be 64 lowercase hex characters."""
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise StorageKeyError("not a sha256 hex digest")
    return f"{UPLOADS}/{sha256[0:2]}/{sha256[2:4]}/{sha256}"


def sha256_of_upload_key(key: str) -> str | None:
    """The digest a canonical upload key names, or None for anything else."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] != UPLOADS or not _SHA256.fullmatch(parts[3]):
        return None
    sha = parts[3]
    return sha if (parts[1], parts[2]) == (sha[0:2], sha[2:4]) else None


def artifact_key(job_id: uuid.UUID, kind: str, ext: str, day: date) -> str:
    """``artifacts/yyyy/mm/dd/<job_id>/<kind>.<ext>``; kind and ext are short lowercase tokens."""
    if not isinstance(job_id, uuid.UUID):
        raise StorageKeyError("job id must be a UUID")
    if not isinstance(kind, str) or not _KIND.fullmatch(kind):
        raise StorageKeyError("artifact kind must match [a-z0-9][a-z0-9_-]{0,63}")
    if not isinstance(ext, str) or not _EXT.fullmatch(ext):
        raise StorageKeyError("artifact extension must match [a-z0-9]{1,16}")
    return f"{ARTIFACTS}/{day:%Y/%m/%d}/{job_id}/{kind}.{ext}"


_GENERATED_ARTIFACT = re.compile(
    rf"{ARTIFACTS}/[0-9]{{4}}/[0-9]{{2}}/[0-9]{{2}}/[0-9a-f]{{8}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-"
    r"[0-9a-f]{4}-[0-9a-f]{12}/[a-z0-9][a-z0-9_-]{0,63}\.[a-z0-9]{1,16}"
)


def is_generated_key(key: str) -> bool:
    """True for exactly the shapes ``upload_key`` and ``artifact_key`` produce (a string check,
    no filesystem access): such a key has no ``..``, no empty part and a fixed depth."""
    if key.startswith(UPLOADS):
        return sha256_of_upload_key(key) is not None
    return _GENERATED_ARTIFACT.fullmatch(key) is not None


def check_key(key: str) -> PurePosixPath:
    """Syntactic checks of a key (no filesystem access); the resolve check is in ``path_for``."""
    if not isinstance(key, str) or not key:
        raise StorageKeyError("empty storage key")
    if "\x00" in key:
        raise StorageKeyError("storage key contains a NUL byte")
    if "\\" in key:
        raise StorageKeyError("storage key contains a backslash")
    if key.startswith("/"):
        raise StorageKeyError("storage key is an absolute path")
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise StorageKeyError("storage key contains an empty, '.' or '..' part")
    if parts[0] not in AREAS or len(parts) < 2:
        raise StorageKeyError(f"storage key must name a file under one of {', '.join(AREAS)}")
    return PurePosixPath(key)


# ---------------------------------------------------------------- staged writes


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


# ---------------------------------------------------------------- the store


class Storage:
    """One storage root. Build with ``await Storage.open(settings)`` in the app and the sweeper;
    the plain constructor has no side effects (used by dry runs)."""

    def __init__(self, settings: StorageSettings) -> None:
        self.settings = settings
        self.root = Path(os.path.abspath(settings.root))
        self._real_root = Path(os.path.realpath(self.root))
        self._root_str = str(self.root)
        self._checked = threading.local()  # generated_path_for's memo (dirs_checked_once)
        self._usage: tuple[float, dict[str, AreaUsage]] | None = None

    @classmethod
    async def open(cls, settings: StorageSettings, *, clean_tmp: bool = True) -> Storage:
        """Create the layout, prove it writable and remove crash leftovers from ``tmp/``."""
        storage = cls(settings)
        await in_thread(storage._prepare, clean_tmp)
        return storage

    def _prepare(self, clean_tmp: bool) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for area in AREAS:
                self._mkdir_synced(self.root / area)
        except OSError as exc:
            what = f"create the layout under {self.root}"
            raise StorageUnavailableError.from_os(exc, what) from exc
        self._real_root = Path(os.path.realpath(self.root))
        self._probe()
        if clean_tmp:
            removed = self.clean_tmp()
            if removed:
                log.info("removed %d unfinished write(s) from %s", removed, self.tmp_dir)

    @property
    def tmp_dir(self) -> Path:
        return self.root / TMP

    @property
    def outbox_dir(self) -> Path:
        return self.root / OUTBOX

    # ---- paths

    def path_for(self, key: str) -> Path:
        """The absolute path of a key, refusing anything that resolves outside the root."""
        check_key(key)
        path = self.root.joinpath(*key.split("/"))
        resolved = Path(os.path.realpath(path))
        if not resolved.is_relative_to(self._real_root) or resolved == self._real_root:
            raise StorageKeyError("storage key resolves outside the storage root")
        return path

    def generated_path_for(self, key: str) -> str:
        """``path_for`` for a key of the store's own shape (``is_generated_key``) without a
        ``realpath``: each directory below the root is ``lstat``'d and must be a real
        directory, and the file itself must not be a symlink (the key's fixed shape rules out
        ``..`` and the like); inside ``dirs_checked_once()`` each directory only once. A key
        of any other shape takes ``path_for``; a malformed one is refused by ``check_key``
        before any filesystem access."""
        if not is_generated_key(key):
            return str(self.path_for(key))
        memo: set[str] | None = getattr(self._checked, "dirs", None)
        parts = key.split("/")
        directory = self._root_str
        for part in parts[:-1]:
            directory = f"{directory}/{part}"
            if memo is not None and directory in memo:
                continue
            try:
                st = os.lstat(directory)
            except FileNotFoundError:
                break  # nothing below it either: the caller finds the file gone
            except OSError as exc:
                raise StorageUnavailableError.from_os(exc, f"inspect {key}") from exc
            if not stat.S_ISDIR(st.st_mode):
                raise StorageKeyError("storage key resolves outside the storage root")
            if memo is not None:
                memo.add(directory)
        path = f"{self._root_str}/{key}"
        with suppress(FileNotFoundError):
            if stat.S_ISLNK(os.lstat(path).st_mode):
                raise StorageKeyError("storage key names a symlink")
        return path

    @contextmanager
    def dirs_checked_once(self) -> Iterator[None]:
        """For a batch of removals in this thread: ``generated_path_for`` checks each
        directory once (a sweeper batch; the memo ends with the block)."""
        self._checked.dirs = set()
        try:
            yield
        finally:
            self._checked.dirs = None

    def key_of(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    # ---- writing

    @asynccontextmanager
    async def stage(
        self, chunks: AsyncIterable[bytes], *, max_bytes: int | None = None
    ) -> AsyncIterator[StagedFile]:
        """Stream ``chunks`` into a locked tmp file, hashing as it goes; yield it fsync'd.

        Inside the block, ``place()`` it under a key; whatever is not placed is removed on
        exit (errors, cancellation, a duplicate). More than ``max_bytes`` (default: the
        setting) raises ``UploadTooLargeError`` after removing the partial file.
        """
        limit = self.settings.max_upload_bytes if max_bytes is None else max_bytes
        staged = await in_thread(self._create_tmp)
        try:
            await self._fill(staged, chunks, limit)
            yield staged
        finally:
            await asyncio.shield(in_thread(staged._release))

    async def _fill(self, staged: StagedFile, chunks: AsyncIterable[bytes], limit: int) -> None:
        hasher = hashlib.sha256()
        buffer = bytearray()
        total = 0
        try:
            async for chunk in chunks:
                total += len(chunk)
                if total > limit:
                    raise UploadTooLargeError(limit)
                buffer += chunk
                if len(buffer) >= self.settings.chunk_bytes:
                    data, buffer = buffer, bytearray()
                    await in_thread(staged._write, data, hasher)
            if buffer:
                await in_thread(staged._write, buffer, hasher)
            await in_thread(os.fsync, staged.fd)
        except OSError as exc:
            raise StorageUnavailableError.from_os(exc, "write to tmp/") from exc
        staged.sha256 = hasher.hexdigest()
        staged.size_bytes = total

    def _create_tmp(self) -> StagedFile:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        for _ in range(_CREATE_ATTEMPTS):
            path = self.tmp_dir / f"{TMP_PREFIX}{secrets.token_hex(16)}{TMP_SUFFIX}"
            try:
                fd = os.open(path, flags, 0o640)
            except OSError as exc:
                raise StorageUnavailableError.from_os(exc, "create a file in tmp/") from exc
            if self._lock_and_verify(fd, path):
                return StagedFile(path=path, sha256="", size_bytes=0, fd=fd)
            os.close(fd)  # a start-up cleaner took it between open and lock: try a new name
        raise StorageUnavailableError("storage unavailable: cannot keep a file in tmp/")

    @staticmethod
    def _lock_and_verify(fd: int, path: Path) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except OSError:
            return False

    async def place(self, staged: StagedFile, key: str, *, replace: bool = False) -> bool:
        """Rename the staged file onto ``key`` (atomic, then directory fsync'd).

        With ``replace=False`` an existing regular file of the same size is kept and the
        staged copy is discarded (content-addressed dedup): returns False. Returns True when
        the file under ``key`` is now the staged one.
        """
        return await in_thread(self._place, staged, key, replace)

    def _place(self, staged: StagedFile, key: str, replace: bool) -> bool:
        final = self.path_for(key)
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
                self._mkdir_synced(final.parent)
                os.rename(staged.path, final)
                staged.placed = True
                fsync_dir(final.parent)
            except OSError as exc:
                raise StorageUnavailableError.from_os(exc, f"place {key}") from exc
            return True

    def _mkdir_synced(self, directory: Path) -> None:
        """``mkdir -p`` that fsyncs the parent of every directory it creates."""
        missing: list[Path] = []
        current = directory
        for _ in range(_MAX_DEPTH + 2):
            if current.is_dir() or current == current.parent:
                break
            missing.append(current)
            current = current.parent
        for path in reversed(missing):
            with suppress(FileExistsError):
                path.mkdir()
                fsync_dir(path.parent)

    def _probe(self) -> None:
        """Create, fsync and remove a file in tmp/: the store is really writable."""
        try:
            staged = self._create_tmp()
            try:
                staged._write(b"probe", hashlib.sha256())
                os.fsync(staged.fd)
            finally:
                staged._release()
        except OSError as exc:
            raise StorageUnavailableError.from_os(exc, f"write under {self.root}") from exc

    async def check_writable(self) -> None:
        """For readiness: raises ``StorageUnavailableError`` when a write would fail."""
        await in_thread(self._probe)

    # ---- reading

    def open_read(self, key: str) -> int:
        """An O_RDONLY fd of the file under ``key`` (never following a final symlink)."""
        path = self.path_for(key)
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise StoredFileMissingError(f"no file under {key}") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StorageKeyError("storage key names a symlink") from None
            raise StorageUnavailableError.from_os(exc, f"read {key}") from exc

    # ---- removal and listings (used by retention)

    def remove(self, key: str) -> bool:
        """Unlink the file under ``key``: True if removed, False if it was already gone.

        Checked by ``generated_path_for`` (no ``realpath`` for the store's own key shapes;
        ``unlink`` never follows the final component)."""
        path = self.generated_path_for(key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StorageUnavailableError.from_os(exc, f"remove {key}") from exc
        return True

    def exists(self, key: str) -> bool:
        try:
            return stat.S_ISREG(os.lstat(self.path_for(key)).st_mode)
        except FileNotFoundError:
            return False

    def stat_key(self, key: str) -> FileEntry | None:
        try:
            st = os.lstat(self.path_for(key))
        except FileNotFoundError:
            return None
        return _entry(key, st)

    def iter_files(self, area: str) -> Iterator[FileEntry]:
        """Every regular file under an area (symlinks are not followed), depth-bounded."""
        if area not in AREAS:
            raise StorageKeyError(f"unknown storage area {area!r}")
        for entry, st in _walk(self.root / area):
            if stat.S_ISREG(st.st_mode):
                yield _entry(self.key_of(Path(entry.path)), st)

    def lock_tmp(self, key: str) -> int | None:
        """An fd holding the flock of a tmp file, or None if a live writer holds it (or gone)."""
        path = self.path_for(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return None
        if self._lock_and_verify(fd, path):
            return fd
        os.close(fd)
        return None

    def clean_tmp(self) -> int:
        """Remove every ``ma-*.part`` in tmp/ that no live writer holds. Returns the count."""
        removed = 0
        try:
            entries = list(os.scandir(self.tmp_dir))
        except FileNotFoundError:
            return 0
        for entry in entries:
            if not _TMP_NAME.fullmatch(entry.name):
                continue  # not ours: the sweeper's tmp policy handles it by age
            fd = self.lock_tmp(f"{TMP}/{entry.name}")
            if fd is None:
                continue
            try:
                os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise StorageUnavailableError.from_os(exc, "clean tmp/") from exc
            finally:
                os.close(fd)
        return removed

    def prune_empty_dirs(self, area: str, keep: Callable[[str], bool]) -> int:
        """Remove empty directories under an area, deepest first, except where ``keep(key)``."""
        removed = 0
        dirs = [Path(e.path) for e, st in _walk(self.root / area) if stat.S_ISDIR(st.st_mode)]
        for path in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
            if keep(self.key_of(path)):
                continue
            try:
                path.rmdir()
                removed += 1
            except OSError:
                continue  # not empty, or raced with a writer: leave it
        return removed

    # ---- usage

    def usage(self, max_age_s: float | None = None) -> dict[str, AreaUsage]:
        """``{area: (files, bytes)}``, cached for ``usage_cache_s`` (walks with os.scandir).

        Cheap when cached; a stale cache walks the tree in the calling thread, so async code
        should prefer ``usage_async()``.
        """
        ttl = self.settings.usage_cache_s if max_age_s is None else max_age_s
        cached = self._usage
        if cached is not None and time.monotonic() - cached[0] < ttl:
            return dict(cached[1])
        figures = {area: self._area_usage(area) for area in AREAS}
        self._usage = (time.monotonic(), figures)
        return dict(figures)

    async def usage_async(self, max_age_s: float | None = None) -> dict[str, AreaUsage]:
        return await in_thread(self.usage, max_age_s)

    def _area_usage(self, area: str) -> AreaUsage:
        count = total = 0
        for _, st in _walk(self.root / area):
            if stat.S_ISREG(st.st_mode):
                count += 1
                total += st.st_size
        return AreaUsage(count, total)


# ---------------------------------------------------------------- helpers


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def _entry(key: str, st: os.stat_result) -> FileEntry:
    return FileEntry(key, st.st_size, max(st.st_mtime, st.st_ctime), st.st_mtime)


def _walk(top: Path) -> Iterator[tuple[os.DirEntry[str], os.stat_result]]:
    """Depth-first scandir of ``top`` (not following symlinks), at most ``_MAX_DEPTH`` deep."""
    stack: list[tuple[Path, int]] = [(top, 0)]
    for _ in range(1 << 40):  # bounded by the number of directories
        if not stack:
            return
        directory, depth = stack.pop()
        try:
            with os.scandir(directory) as entries:
                listed = list(entries)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in listed:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode) and depth + 1 < _MAX_DEPTH:
                stack.append((Path(entry.path), depth + 1))
            yield entry, st
