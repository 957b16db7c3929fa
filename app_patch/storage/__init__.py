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

Modules: ``errors`` (the failures), ``keys`` (areas, key generation and checks), ``durable``
(fsync'd directory changes, atomic small-file writes), ``staging`` (the tmp writer and
placement), ``listing`` (walks, file entries, usage), ``store`` (``Storage``, which ties them
together).
"""

from app_patch.storage.durable import create_durably, fsync_dir, write_durably
from app_patch.storage.errors import (
    StorageError,
    StorageKeyError,
    StorageUnavailableError,
    StoredFileMissingError,
    UnsafePathError,
    UploadTooLargeError,
)
from app_patch.storage.keys import (
    AREAS,
    ARTIFACTS,
    OUTBOX,
    TMP,
    TMP_PREFIX,
    TMP_SUFFIX,
    UPLOADS,
    artifact_key,
    check_key,
    is_generated_key,
    sha256_of_upload_key,
    upload_key,
)
from app_patch.storage.listing import AreaUsage, FileEntry
from app_patch.storage.staging import StagedFile
from app_patch.storage.store import Storage

__all__ = [
    "AREAS",
    "ARTIFACTS",
    "OUTBOX",
    "TMP",
    "TMP_PREFIX",
    "TMP_SUFFIX",
    "UPLOADS",
    "AreaUsage",
    "FileEntry",
    "StagedFile",
    "Storage",
    "StorageError",
    "StorageKeyError",
    "StorageUnavailableError",
    "StoredFileMissingError",
    "UnsafePathError",
    "UploadTooLargeError",
    "artifact_key",
    "check_key",
    "create_durably",
    "fsync_dir",
    "is_generated_key",
    "sha256_of_upload_key",
    "upload_key",
    "write_durably",
]
