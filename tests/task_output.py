"""Reading what the invoke tasks print (no tests here)."""

from __future__ import annotations


def table_rows(stdout: str) -> dict[str, tuple[int, int]]:
    """``policy -> (objects, bytes)`` from the task's summary table."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").replace("┃", "│").split("│")]
        if len(cells) == 3 and cells[1].isdigit():
            rows[cells[0]] = (int(cells[1]), int(cells[2].replace(",", "")))
    return rows
