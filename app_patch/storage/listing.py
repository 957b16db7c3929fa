"""Depth-bounded walks of the store's areas and what they yield: file entries, usage figures."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from app_patch.storage.keys import MAX_DEPTH


class AreaUsage(NamedTuple):
    files: int
    bytes: int


@dataclass(frozen=True)
class FileEntry:
    """One regular file found under an area, with the age used by reconciliation."""

    key: str
    size: int
    changed_at: float  # max(mtime, ctime): a rename onto the key counts as a change
    modified_at: float  # mtime alone: when a tmp file was last written to


def file_entry(key: str, st: os.stat_result) -> FileEntry:
    return FileEntry(key, st.st_size, max(st.st_mtime, st.st_ctime), st.st_mtime)


def area_usage(top: Path) -> AreaUsage:
    count = total = 0
    for _, st in walk(top):
        if stat.S_ISREG(st.st_mode):
            count += 1
            total += st.st_size
    return AreaUsage(count, total)


def walk(top: Path) -> Iterator[tuple[os.DirEntry[str], os.stat_result]]:
    """Depth-first scandir of ``top`` (not following symlinks), at most ``MAX_DEPTH`` deep."""
    stack: list[tuple[Path, int]] = [(top, 0)]
    for _ in range(1 << 40):  # bounded by the number of directories
        if not stack:
            return
        directory, depth = stack.pop()
        try:
            with os.scandir(directory) as entries:
                listed = list(entries)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in listed:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode) and depth + 1 < MAX_DEPTH:
                stack.append((Path(entry.path), depth + 1))
            yield entry, st
