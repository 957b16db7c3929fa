"""``Storage``: one storage root, its paths, writes, reads, removals, listings and usage."""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import threading
import time
from collections.abc import AsyncIterable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager, suppress
from pathlib import Path

from app_patch.settings import StorageSettings
from app_patch.storage.durable import mkdir_synced
from app_patch.storage.errors import (
    StorageKeyError,
    StorageUnavailableError,
    StoredFileMissingError,
)
from app_patch.storage.keys import (
    AREAS,
    OUTBOX,
    TMP,
    TMP_PREFIX,
    TMP_SUFFIX,
    check_key,
    is_generated_key,
)
from app_patch.storage.listing import AreaUsage, FileEntry, area_usage, file_entry, walk
from app_patch.storage.staging import (
    StagedFile,
    lock_and_verify,
    place_staged,
    probe,
    staged_tmp,
)
from app_patch.threads import in_thread

log = logging.getLogger(__name__)

_TMP_NAME = re.compile(rf"{TMP_PREFIX}[0-9a-f]{{32}}\{TMP_SUFFIX}")


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
                mkdir_synced(self.root / area)
        except OSError as exc:
            what = f"create the layout under {self.root}"
            raise StorageUnavailableError.from_os(exc, what) from exc
        self._real_root = Path(os.path.realpath(self.root))
        probe(self.tmp_dir, self.root)
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

    def stage(
        self, chunks: AsyncIterable[bytes], *, max_bytes: int | None = None
    ) -> AbstractAsyncContextManager[StagedFile]:
        """Stream ``chunks`` into a locked tmp file, hashing as it goes; yield it fsync'd.

        Inside the block, ``place()`` it under a key; whatever is not placed is removed on
        exit (errors, cancellation, a duplicate). More than ``max_bytes`` (default: the
        setting) raises ``UploadTooLargeError`` after removing the partial file.
        """
        limit = self.settings.max_upload_bytes if max_bytes is None else max_bytes
        return staged_tmp(self.tmp_dir, chunks, limit, self.settings.chunk_bytes)

    async def place(self, staged: StagedFile, key: str, *, replace: bool = False) -> bool:
        """Rename the staged file onto ``key`` (atomic, then directory fsync'd).

        With ``replace=False`` an existing regular file of the same size is kept and the
        staged copy is discarded (content-addressed dedup): returns False. Returns True when
        the file under ``key`` is now the staged one.
        """
        return await in_thread(self._place, staged, key, replace)

    def _place(self, staged: StagedFile, key: str, replace: bool) -> bool:
        return place_staged(staged, self.path_for(key), key, replace)

    async def check_writable(self) -> None:
        """For readiness: raises ``StorageUnavailableError`` when a write would fail."""
        await in_thread(probe, self.tmp_dir, self.root)

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
        return file_entry(key, st)

    def iter_files(self, area: str) -> Iterator[FileEntry]:
        """Every regular file under an area (symlinks are not followed), depth-bounded."""
        if area not in AREAS:
            raise StorageKeyError(f"unknown storage area {area!r}")
        for entry, st in walk(self.root / area):
            if stat.S_ISREG(st.st_mode):
                yield file_entry(self.key_of(Path(entry.path)), st)

    def lock_tmp(self, key: str) -> int | None:
        """An fd holding the flock of a tmp file, or None if a live writer holds it (or gone)."""
        path = self.path_for(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return None
        if lock_and_verify(fd, path):
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
        dirs = [Path(e.path) for e, st in walk(self.root / area) if stat.S_ISDIR(st.st_mode)]
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
        figures = {area: area_usage(self.root / area) for area in AREAS}
        self._usage = (time.monotonic(), figures)
        return dict(figures)

    async def usage_async(self, max_age_s: float | None = None) -> dict[str, AreaUsage]:
        return await in_thread(self.usage, max_age_s)
