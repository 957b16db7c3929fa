"""The sizes of the curve, and one seeded size with what was measured on it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from app_patch.db import libpq_url
from bench.scale_curve.seed import Seeded


@dataclass(frozen=True)
class Sizes:
    jobs: tuple[int, ...]
    calls: int  # timed calls per query and size
    sweeps: int  # timed sweeps per size


QUICK = Sizes(jobs=(10_000, 50_000), calls=60, sweeps=2)
FULL = Sizes(jobs=(10_000, 100_000, 1_000_000), calls=300, sweeps=3)


def size_label(jobs: int) -> str:
    if jobs >= 1_000_000 and jobs % 1_000_000 == 0:
        return f"{jobs // 1_000_000}M"
    return f"{jobs // 1000}k" if jobs % 1000 == 0 else str(jobs)


@dataclass
class History:
    """One seeded size: its database, storage root and what was measured on it."""

    jobs: int
    db_url: str
    root: Path
    seeded: Seeded
    cursor: str = ""
    deep_page: int = 0
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    sweep_rates: list[float] = field(default_factory=list)
    relation_bytes: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    plans: dict[str, list[str]] = field(default_factory=dict)  # query -> one line a statement

    @property
    def label(self) -> str:
        return size_label(self.jobs)

    @property
    def url(self) -> str:
        return libpq_url(self.db_url)
