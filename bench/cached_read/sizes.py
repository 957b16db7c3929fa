"""How much the cached read benchmark reads: reads, concurrency, repetitions, distinct jobs."""

from __future__ import annotations

from dataclasses import dataclass

KEYS = 256  # distinct finished jobs read in turn


@dataclass(frozen=True)
class Sizes:
    reads: int  # per repetition and variant
    concurrency: int
    benchmark_requests: int
    repetitions: int


QUICK = Sizes(reads=3000, concurrency=32, benchmark_requests=20000, repetitions=5)
FULL = Sizes(reads=20000, concurrency=32, benchmark_requests=200000, repetitions=5)
