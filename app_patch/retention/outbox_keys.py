"""The storage keys that pending and failed outbox entries name: no retention policy may delete
them (a job answered during an outage still needs its file until its replay)."""

from __future__ import annotations

import os
import time

from app_patch.outbox import FAILED, Outbox


class OutboxKeys:
    """The keys pending and failed outbox entries name, read once per sweep and re-checked
    before every use by two ``stat`` calls instead of reading every entry again.

    An entry appears, moves to ``failed/`` or comes back only by a rename into ``outbox/`` or
    ``outbox/failed/``, which changes that directory's inode times. The stamps are taken
    *before* the entries are read, so a change during the read shows at the next check. File
    times are coarse (a clock tick), so a change in the same tick as an earlier one could keep
    the stamp: stamps younger than ``SETTLE_NS`` at the read are never trusted (read again).
    """

    SETTLE_NS = 2_000_000_000

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.dirs = (outbox.directory, outbox.directory / FAILED)
        self.keys: set[str] = set()
        self.stamps: tuple[tuple[int, int, int] | None, ...] | None = None
        self.trusted = False
        self.reads = 0

    def _stamps(self) -> tuple[tuple[int, int, int] | None, ...]:
        stamps: list[tuple[int, int, int] | None] = []
        for directory in self.dirs:
            try:
                st = os.stat(directory)
            except FileNotFoundError:
                stamps.append(None)
                continue
            stamps.append((st.st_ino, st.st_mtime_ns, st.st_ctime_ns))
        return tuple(stamps)

    def current(self) -> set[str]:
        stamps = self._stamps()
        if self.trusted and stamps == self.stamps:
            return self.keys
        now = time.time_ns()
        self.keys = self.outbox.referenced_keys()
        self.stamps = stamps
        self.trusted = all(s is None or max(s[1], s[2]) < now - self.SETTLE_NS for s in stamps)
        self.reads += 1
        return self.keys
