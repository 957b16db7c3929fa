"""The file store's failures: bad keys, an unwritable store, too large an upload, a lost file."""

from __future__ import annotations


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
