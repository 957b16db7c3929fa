"""Backup and restore drill on the embedded engine (real pgserver PostgreSQL, redis-server,
local API, files; no Docker), through ``invoke backup`` / ``invoke restore`` as an operator
runs them.

A source stack gets real uploads of mixed types (PNG, JPEG, WAV, text) and artifacts; a
backup of it restores into a fresh stack in another data dir with every job, result, media
and artifact row equal (row counts and md5 of the ordered rows) and every file
byte-identical. Sets with an altered file, a missing file or a truncated dump are refused in
one line before anything changes; a backup taken while uploads go on restores with no live
row without its file; a SIGKILLed backup leaves no set that ``--list`` shows, and ``--keep``
removes its leftovers.

Each stack has its own record, data dir and storage root (``MA_INFRA_STATE_FILE``,
``MA_DATA_DIR``, ``MA_STORAGE_ROOT``), so the checkout's ``.data`` is never touched. The two
stacks never run at once: the embedded Redis port is fixed.
"""
