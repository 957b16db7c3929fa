"""The outbox directory: pending and failed entries, the Idempotency-Key index, merged aliases."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from app_patch.errors import OperatorError
from app_patch.outbox.entry import OutboxEntry, OutboxEntryError, one_line
from app_patch.storage import create_durably, fsync_dir, write_durably

log = logging.getLogger(__name__)
FAILED, KEYS, MERGED = "failed", "keys", "merged"
KEYS_LOCK = ".index.lock"  # in keys/: serialises changes of the key index across processes


@dataclass(frozen=True)
class KeyClaim:
    """What the outbox knows of an Idempotency-Key: the deferred job it names."""

    job_id: uuid.UUID
    fingerprint: str | None
    age_s: float


@dataclass(frozen=True)
class FailedEntry:
    job_id: str
    error: str
    age_s: float


class Outbox:
    """Durable entries under one directory (see the package docstring for the layout)."""

    def __init__(self, directory: Path, *, create: bool = True) -> None:
        """``create=False`` reads an outbox as it is (dry runs create nothing)."""
        self.directory = directory
        if create:
            for sub in (directory, directory / FAILED, directory / KEYS, directory / MERGED):
                sub.mkdir(parents=True, exist_ok=True)

    # ---- entries

    def _path(self, job_id: uuid.UUID) -> Path:
        return self.directory / f"{job_id}.json"

    def append(self, entry: OutboxEntry) -> None:
        write_durably(self._path(entry.job_id), entry.to_json())

    def get(self, job_id: uuid.UUID) -> OutboxEntry | None:
        """The pending entry of a job; None when there is none or it cannot be read."""
        try:
            return OutboxEntry.from_json(self._path(job_id).read_bytes())
        except FileNotFoundError:
            return None
        except OutboxEntryError as exc:
            log.warning("outbox entry %s unreadable: %s", job_id, exc)
            return None

    def pending(self) -> list[Path]:
        """Entries oldest first (by mtime), ignoring unfinished temp files."""
        files = []
        for path in self.directory.glob("*.json"):
            with contextlib.suppress(FileNotFoundError):
                files.append((path.stat().st_mtime_ns, path))
        return [path for _, path in sorted(files)]

    def backlog(self) -> int:
        return sum(1 for _ in self.directory.glob("*.json"))

    def failed_count(self) -> int:
        return sum(1 for _ in (self.directory / FAILED).glob("*.json"))

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    # ---- quarantine

    def quarantine(self, path: Path, error: str) -> bool:
        """Move an entry aside with its error, so the drain goes on without it. False when the
        entry was gone already (replayed or withdrawn meanwhile): then no note is left behind."""
        failed = self.directory / FAILED
        note = failed / f"{path.stem}.error"
        write_durably(note, f"{time.time():.0f} {one_line(error)}\n".encode())
        try:
            os.replace(path, failed / path.name)
        except FileNotFoundError:
            if not (failed / path.name).exists():
                note.unlink(missing_ok=True)
            return False
        fsync_dir(failed)
        fsync_dir(self.directory)
        return True

    def failed(self) -> list[FailedEntry]:
        found = []
        now = time.time()
        for path in sorted((self.directory / FAILED).glob("*.json")):
            try:
                stamp, _, error = path.with_suffix(".error").read_text("utf-8").partition(" ")
                age = now - float(stamp)
            except (FileNotFoundError, ValueError):
                error, age = "(no error recorded)", 0.0
            found.append(FailedEntry(path.stem, error.strip(), max(0.0, age)))
        return found

    def retry(self, name: str) -> None:
        """Move a failed entry back to pending (``OperatorError`` when there is none)."""
        stem = Path(name).name.removesuffix(".json")
        source = self.directory / FAILED / f"{stem}.json"
        if not stem or not source.is_file():
            raise OperatorError(f"no failed outbox entry {stem!r}")
        # the note goes first: once pending, a replayer may quarantine it again with a new one
        source.with_suffix(".error").unlink(missing_ok=True)
        try:
            os.replace(source, self.directory / source.name)
        except FileNotFoundError:
            raise OperatorError(f"failed outbox entry {stem!r} was just moved by another") from None
        fsync_dir(self.directory)

    # ---- idempotency keys

    def _key_path(self, key: str) -> Path:
        return self.directory / KEYS / hashlib.sha256(key.encode()).hexdigest()

    def key_claim(self, key: str) -> KeyClaim | None:
        """The claim on ``key``, or None (none, or unreadable: ``claim_key`` replaces it)."""
        path = self._key_path(key)
        try:
            data = orjson.loads(path.read_bytes())
            age = time.time() - path.stat().st_mtime
            return KeyClaim(uuid.UUID(data["job_id"]), data.get("fingerprint"), max(0.0, age))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("outbox key index unreadable, ignored: %s", exc)
            return None

    @contextlib.contextmanager
    def _keys_locked(self) -> Iterator[None]:
        """Exclusive ``flock`` of the key index: changes to ``keys/`` are read-check-write, and
        other processes (and threads: each open is its own lock) must not interleave."""
        fd = os.open(
            self.directory / KEYS / KEYS_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # drops the lock

    def withdraw(self, job_id: uuid.UUID) -> None:
        """Remove a pending entry that its request gave up (it may be gone already)."""
        with contextlib.suppress(OSError):
            self._path(job_id).unlink(missing_ok=True)

    def claim_key(self, key: str, job_id: uuid.UUID, fingerprint: str | None) -> KeyClaim | None:
        """Bind ``key`` to ``job_id``; None when this call bound it, else the existing claim.

        Atomic across processes sharing the volume (``storage.create_durably``, under the
        index lock). Callers write the entry first, so a claim whose entry is gone is stale
        (replayed, or its request withdrew) and is replaced, as is an unreadable one.
        """
        final = self._key_path(key)
        body = orjson.dumps({"job_id": str(job_id), "fingerprint": fingerprint})
        with self._keys_locked():
            for _ in range(2):  # a second try only after removing a stale claim
                if create_durably(final, body):
                    return None
                held = self.key_claim(key)
                if held is not None and self._path(held.job_id).exists():
                    return held
                final.unlink(missing_ok=True)  # stale or unreadable: nobody else changes it now
            return self.key_claim(key)

    def release_key(self, key: str, job_id: uuid.UUID) -> None:
        """Drop the claim on ``key`` if it still names ``job_id`` (never another job's)."""
        with self._keys_locked():
            held = self.key_claim(key)
            if held is not None and held.job_id == job_id:
                self._key_path(key).unlink(missing_ok=True)

    # ---- merged aliases

    def record_merge(self, job_id: uuid.UUID, into: uuid.UUID) -> None:
        write_durably(self.directory / MERGED / str(job_id), str(into).encode())

    def merged_into(self, job_id: uuid.UUID) -> uuid.UUID | None:
        try:
            return uuid.UUID((self.directory / MERGED / str(job_id)).read_text("ascii").strip())
        except (FileNotFoundError, ValueError):
            return None

    # ---- for reconciliation

    def referenced_keys(self) -> set[str]:
        """Storage keys named by pending or failed entries: files retention must keep."""
        keys: set[str] = set()
        for path in [*self.directory.glob("*.json"), *(self.directory / FAILED).glob("*.json")]:
            with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
                media = orjson.loads(path.read_bytes()).get("media")
                if media and isinstance(media.get("storage_key"), str):
                    keys.add(media["storage_key"])
        return keys
