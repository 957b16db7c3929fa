"""A backup set's ``manifest.json``: what the set holds and how to prove it is intact.

A set is a directory::

    manifest.json        this file, written last
    database.dump        pg_dump -Fc of the stack's database
    files/<key>          every stored file a live row referenced (uploads/…, artifacts/…)

The manifest names each file by its storage key (relative path under ``files/``) with its
sha256 and size, the dump's sha256 and size, the schema revision, the store id, the engine
and the time. :func:`verify_set` checks a set against it before anything is restored.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app_patch.errors import OperatorError
from app_patch.storage import check_key

FORMAT = 1
MANIFEST = "manifest.json"
DUMP = "database.dump"
FILES = "files"
CHUNK = 1 << 20


class BackupError(OperatorError):
    """A backup or restore cannot go on; the message is one line that says why."""


@dataclass(frozen=True)
class FileRecord:
    """One stored file: its storage key (the path under ``files/``), sha256 and size."""

    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class MissingFile:
    """A file a live row of the snapshot named but that was gone when the files were copied
    (retention deleted it after the snapshot, or it was lost): restore marks the row deleted,
    as retention did in the live stack, so no restored row points at nothing."""

    path: str
    table: str
    row_id: str


@dataclass(frozen=True)
class Manifest:
    name: str
    created_at: str  # ISO 8601, UTC: when the snapshot was taken
    engine: str
    schema_revision: str | None
    store_id: str | None
    dump_sha256: str
    dump_size: int
    server_version: str
    rows: dict[str, int]
    files: tuple[FileRecord, ...]
    missing: tuple[MissingFile, ...] = ()
    changed: tuple[str, ...] = ()  # files whose bytes differ from their row's sha256
    format: int = FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def file_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> str:
        document = asdict(self)
        document["database"] = {
            "file": DUMP,
            "format": "custom",
            "sha256": document.pop("dump_sha256"),
            "size": document.pop("dump_size"),
            "server_version": document.pop("server_version"),
        }
        return json.dumps(document, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        raw = json.loads(text)
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ValueError(f"not a format-{FORMAT} manifest")
        database = raw["database"]
        return cls(
            name=str(raw["name"]),
            created_at=str(raw["created_at"]),
            engine=str(raw["engine"]),
            schema_revision=raw.get("schema_revision"),
            store_id=raw.get("store_id"),
            dump_sha256=str(database["sha256"]),
            dump_size=int(database["size"]),
            server_version=str(database.get("server_version", "")),
            rows={str(k): int(v) for k, v in dict(raw.get("rows", {})).items()},
            files=tuple(
                FileRecord(str(f["path"]), str(f["sha256"]), int(f["size"])) for f in raw["files"]
            ),
            missing=tuple(
                MissingFile(str(m["path"]), str(m["table"]), str(m["row_id"]))
                for m in raw.get("missing", [])
            ),
            changed=tuple(str(p) for p in raw.get("changed", [])),
            extra=dict(raw.get("extra", {})),
        )


def read_manifest(set_dir: Path) -> Manifest:
    """The set's manifest; a :class:`BackupError` when it is missing or unreadable."""
    path = set_dir / MANIFEST
    try:
        return Manifest.from_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackupError(f"{set_dir} is not a backup set: it has no {MANIFEST}") from None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise BackupError(f"{path} is unreadable: {type(exc).__name__}: {exc}") from None


def sha256_file(path: Path) -> tuple[str, int]:
    """(sha256, size) of a file, read in chunks."""
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def verify_set(set_dir: Path, on_progress: Callable[[int, int], None] | None = None) -> Manifest:
    """Check every byte of the set against its manifest: the dump and each file (present,
    same size, same sha256), no key that could leave the storage root, no file under
    ``files/`` the manifest does not name. The first problem is a :class:`BackupError`
    naming it; nothing is changed either way. ``on_progress(done_bytes, total_bytes)``."""
    manifest = read_manifest(set_dir)
    total = manifest.dump_size + manifest.file_bytes
    done = 0
    dump = set_dir / DUMP
    if not dump.is_file():
        raise BackupError(f"backup set {set_dir.name}: {DUMP} is missing")
    sha, size = sha256_file(dump)
    if size != manifest.dump_size:
        raise BackupError(
            f"backup set {set_dir.name}: {DUMP} is {size} bytes, the manifest says "
            f"{manifest.dump_size} (truncated or altered)"
        )
    if sha != manifest.dump_sha256:
        raise BackupError(f"backup set {set_dir.name}: {DUMP} is altered (sha256 differs)")
    done += size
    if on_progress is not None:
        on_progress(done, total)
    named: set[str] = set()
    for record in manifest.files:
        try:
            check_key(record.path)
        except ValueError:
            raise BackupError(
                f"backup set {set_dir.name}: the manifest names an unsafe path {record.path!r}"
            ) from None
        named.add(record.path)
        path = set_dir / FILES / record.path
        if not path.is_file():
            raise BackupError(f"backup set {set_dir.name}: file {record.path} is missing")
        sha, size = sha256_file(path)
        if size != record.size or sha != record.sha256:
            what = f"{size} bytes instead of {record.size}" if size != record.size else "sha256"
            raise BackupError(f"backup set {set_dir.name}: file {record.path} is altered ({what})")
        done += size
        if on_progress is not None:
            on_progress(done, total)
    root = set_dir / FILES
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            key = (Path(dirpath) / name).relative_to(root).as_posix()
            if key not in named:
                raise BackupError(f"backup set {set_dir.name}: file {key} is not in the manifest")
    return manifest
