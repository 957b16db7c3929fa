"""Storage keys: the layout's areas, the keys generated for uploads and artifacts, their checks."""

from __future__ import annotations

import re
import uuid
from datetime import date
from pathlib import PurePosixPath

from app_patch.storage.errors import StorageKeyError

UPLOADS, ARTIFACTS, TMP, OUTBOX = "uploads", "artifacts", "tmp", "outbox"
AREAS = (UPLOADS, ARTIFACTS, TMP, OUTBOX)
TMP_PREFIX, TMP_SUFFIX = "ma-", ".part"
MAX_DEPTH = 8  # deepest layout is artifacts/yyyy/mm/dd/job/file: 6 levels

_SHA256 = re.compile(r"[0-9a-f]{64}")
_KIND = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_EXT = re.compile(r"[a-z0-9]{1,16}")


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
