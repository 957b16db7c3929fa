"""Uploads and artifacts: the file and its row in one unit of work, and reads for the API.

Write protocol (``register_upload``, ``store_artifact``):

1. stream the body into a locked ``tmp/`` file, hashing it (no DB connection held meanwhile);
2. one short transaction: ``pg_advisory_xact_lock(key)``, lock/upsert the row, place the file
   (rename, dir fsync) while the row lock is held, commit.

The row lock is what the sweeper takes (``FOR UPDATE SKIP LOCKED``) before it unlinks, and the
advisory lock is what orphan reconciliation takes, so a file is never removed between our
"it exists" check and our commit. If the commit fails after the file was placed, the file is
left where it is: it is content-addressed (a retry adopts it) and, if nothing adopts it,
retention's ``orphans`` policy removes it after ``orphan_grace_s``. Removing it here would race
with a concurrent upload of the same bytes that has already seen it. A committed live row thus
always has its file; the reverse (a file without a live row) is the reconcilable state.

Modules: ``fields`` (content type and original name as kept), ``opened`` (``OpenedFile``, a
file streamed to a client), ``store`` (``MediaStore`` and what it returns).
"""

from app_patch.media.fields import (
    CONTROL_CHARACTERS,
    DEFAULT_CONTENT_TYPE,
    clean_content_type,
    clean_original_name,
)
from app_patch.media.opened import OpenedFile
from app_patch.media.store import MediaNotFoundError, MediaStore, StoredArtifact, StoredMedia

__all__ = [
    "CONTROL_CHARACTERS",
    "DEFAULT_CONTENT_TYPE",
    "MediaNotFoundError",
    "MediaStore",
    "OpenedFile",
    "StoredArtifact",
    "StoredMedia",
    "clean_content_type",
    "clean_original_name",
]
