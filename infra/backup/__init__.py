"""Backup and restore of a stack: ``invoke backup`` and ``invoke restore``.

A backup set is one directory: ``database.dump`` (``pg_dump -Fc`` by the server's own
pg_dump), ``files/<key>`` (every stored file a live row references) and ``manifest.json``
(each file's key, sha256 and size, the dump's sha256 and size, the schema revision, the
store id, the engine, the time).

* :mod:`~infra.backup.manifest`: the manifest and the byte-for-byte check of a set;
* :mod:`~infra.backup.sets`: written aside and renamed into place, listed, pruned;
* :mod:`~infra.backup.database`: the exported snapshot, emptying the schema, the fix-ups
  after pg_restore (grants, store identity, rows whose file was deleted meanwhile);
* :mod:`~infra.backup.site`: the engine-specific part as one interface, with
  :mod:`~infra.backup.local_site` (embedded) and :mod:`~infra.backup.container_site`
  (compose, Pulumi), chosen by :mod:`~infra.backup.stack_site`;
* :mod:`~infra.backup.take` and :mod:`~infra.backup.restore`: the two operations.

The stack's secrets are not in a set: ``.data/stack.env`` (or the Pulumi config) is backed
up separately.
"""

from infra.backup.manifest import BackupError, Manifest
from infra.backup.restore import RestoreResult, restore_backup
from infra.backup.sets import DEFAULT_DIR, SetInfo, list_sets
from infra.backup.take import BackupResult, take_backup

__all__ = [
    "DEFAULT_DIR",
    "BackupError",
    "BackupResult",
    "Manifest",
    "RestoreResult",
    "SetInfo",
    "list_sets",
    "restore_backup",
    "take_backup",
]
