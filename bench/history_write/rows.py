"""The history write benchmark's report rows: each variant, the peer and the limits."""

from __future__ import annotations

from bench.history_write.sizes import Sizes
from bench.report import BenchResult, Ratio, Role, rates

NAME = "history_write"
TITLE = "History write (job + result)"
TARGET = 0.60
PEER_TARGET = 2.0  # times the peer's rate


def bench_result(
    samples: dict[str, list[float]], sizes: Sizes, peer_missing: str | None
) -> BenchResult:
    c, b = sizes.concurrency, sizes.batch
    rows: list[tuple[str, str, Role, str]] = [
        ("finished", "ours: record_finished, 1 txn/job", "ours",
         f"{c} coroutines, pool 20+30 (the API's write)"),
        ("service_finished", "ours: HistoryService.record_finished", "ours",
         f"{c} coroutines; + Redis write-through and history bump"),
        ("batch", f"ours: record_finished_many, {b}/txn", "ours",
         "1 connection, sequential batches"),
        ("three_txn", "ours: create + running + succeeded, 3 txns/job", "ours",
         f"{c} coroutines (the state machine)"),
        ("peer", "peer: full-stack-fastapi-template way, 1 txn/job", "peer",
         f"{c} requests; sync SQLModel Session add + commit + refresh, threadpool"),
        ("executemany", f"raw psycopg executemany, {b}/txn", "limit", "1 connection"),
        ("raw_finished", "raw psycopg, 1 txn/job", "limit",
         f"{c} async connections, the two INSERTs"),
        ("pgbench", "pgbench insert tps, 1 txn/job", "limit",
         f"-n -c {c} -j 2 -T {sizes.pgbench_s}"),
        ("protocol", "raw psycopg, 3 txns/job", "context", f"{c} async connections, minimal SQL"),
    ]  # fmt: skip
    return BenchResult(
        name=NAME,
        title=TITLE,
        series=rates("jobs/s", samples, rows),
        ratios=[
            Ratio("batch", "executemany", TARGET),
            Ratio("finished", "raw_finished", TARGET),
            Ratio("service_finished", "raw_finished", TARGET),
            Ratio("finished", "executemany"),
            Ratio("finished", "pgbench"),
            Ratio("three_txn", "protocol"),
            Ratio("finished", "peer", PEER_TARGET, unit="x"),
            Ratio("service_finished", "peer", unit="x"),
        ],
        params={
            "jobs_per_rep": sizes.jobs,
            "batched_jobs_per_rep": sizes.raw_jobs,
            "batch": b,
            "concurrency": c,
            "repetitions": sizes.repetitions,
        },
        notes=[
            "A job is 1 analysis_jobs row + 1 analysis_results row with the same columns and "
            "values in every variant; tables are truncated before each measurement.",
            "Targets apply like for like: batched vs batched, one transaction per job vs one "
            "transaction per job (synchronous_commit=on: each commit waits for its WAL flush).",
            "The peer writes the same rows on the same tables (SQLModel models mapped onto "
            "them, psycopg 3 sync engine with the template's defaults); it returns the "
            "refreshed row, ours the JobOut with its result.",
            *([peer_missing] if peer_missing else []),
        ],
    )
