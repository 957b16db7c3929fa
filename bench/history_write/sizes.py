"""How much the history write benchmark writes: jobs, batches, writers, repetitions."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sizes:
    jobs: int  # per repetition, ours and the raw 3-txn protocol
    raw_jobs: int  # per repetition, executemany
    batch: int
    concurrency: int
    pgbench_s: int
    repetitions: int


QUICK = Sizes(jobs=200, raw_jobs=3000, batch=500, concurrency=8, pgbench_s=2, repetitions=3)
FULL = Sizes(jobs=2000, raw_jobs=20000, batch=500, concurrency=8, pgbench_s=5, repetitions=5)
