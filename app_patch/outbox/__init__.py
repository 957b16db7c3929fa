"""The durable outbox: finished jobs answered while PostgreSQL was down, and their replay.

Layout under ``<storage root>/outbox/`` (same volume as the files the entries name)::

    <job_id>.json          pending entries, oldest first (tmp + fsync + rename + dir fsync)
    failed/<job_id>.json   entries that failed for a reason other than an outage, with
    failed/<job_id>.error  the error; ``invoke outbox --retry`` moves one back
    keys/<sha256(key)>     Idempotency-Key index: which deferred job a key names, and the
                           fingerprint of its request (created with link(): first one wins)
    merged/<job_id>        a deferred job whose key turned out to name an earlier job of the
                           same request: the id of that job (so the answer given stays valid)

Replay is per entry and idempotent (insert by job id): an outage stops the drain; any other
failure quarantines that entry and the drain goes on, so one poison entry never blocks others.

Several API processes (replicas, hosts sharing the volume) each run a replayer on the same
directory. Every mutation is safe among them:

* an entry is **claimed** with a PostgreSQL session advisory lock on its file name
  (``entry_lock_id``; every replayer talks to the same database, so it holds across hosts and
  needs nothing from the filesystem's locking). The lock is tried, never waited for: a busy
  entry is skipped. Under the claim the file is read again (gone: another replayer finished
  it), replayed, then removed or quarantined, and only then is the claim released. So each
  entry is replayed, counted and reported by one replayer, and quarantined at most once;
* removal and quarantine tolerate a vanished file (``unlink(missing_ok)``, ``rename`` that
  gives up on ENOENT and takes its error note back);
* ``keys/`` is changed only under an exclusive ``flock`` of ``keys/.index.lock`` (a claim is
  ``link()``, first one wins; removing a stale or replayed claim is read-check-unlink, which
  without the lock could remove a claim another process made in between). Linux NFS clients
  map ``flock`` to NFS byte-range locks, so it holds across hosts unless the volume is mounted
  with ``local_lock=flock|all``;
* ``merged/`` aliases are written whole by rename (the same content by whoever writes it).

Modules: ``entry`` (an entry and its file format), ``directory`` (``Outbox``: the files and the
key index), ``replayer`` (``OutboxReplayer``: claims and replay), ``cli`` (``python -m
app_patch.outbox``).
"""

from app_patch.outbox.cli import OutboxListing, list_entries, main
from app_patch.outbox.directory import (
    FAILED,
    KEYS,
    KEYS_LOCK,
    MERGED,
    FailedEntry,
    KeyClaim,
    Outbox,
)
from app_patch.outbox.entry import OutboxEntry, OutboxEntryError
from app_patch.outbox.replayer import OutboxReplayer, entry_lock_id, is_entry_failure

__all__ = [
    "FAILED",
    "KEYS",
    "KEYS_LOCK",
    "MERGED",
    "FailedEntry",
    "KeyClaim",
    "Outbox",
    "OutboxEntry",
    "OutboxEntryError",
    "OutboxListing",
    "OutboxReplayer",
    "entry_lock_id",
    "is_entry_failure",
    "list_entries",
    "main",
]
