"""The cached read benchmark's report rows: ours, the limits and the peer, both concurrencies."""

from __future__ import annotations

from bench.cached_read.sizes import KEYS, Sizes
from bench.report import BenchResult, Ratio, RatioUnit, Role, rates

NAME = "cached_read"
TITLE = "Cached GET /analyses/{id} (service layer)"
TARGET = 0.60
PEER_TARGET = 1.0  # times the peer's rate
LIMITS: tuple[tuple[str, float | None, RatioUnit], ...] = (
    ("raw", TARGET, "%"),
    ("bench", None, "%"),
    ("peer", PEER_TARGET, "x"),
)
RATIOS = [  # ours against each limit, sequential then concurrent
    Ratio(f"ours_{mode}", f"{limit}_{mode}", target, unit=unit)
    for limit, target, unit in LIMITS
    for mode in ("seq", "conc")
]


def bench_result(
    samples: dict[str, list[float]],
    sizes: Sizes,
    value_bytes: int,
    coalesced: int,
    peer_missing: str | None,
) -> BenchResult:
    c = sizes.concurrency
    rows: list[tuple[str, str, Role, str]] = [
        ("ours_seq", "ours: HistoryService.get_job, sequential", "ours",
         "1 coroutine, warm cache, every read a hit"),
        ("raw_seq", "raw redis-py asyncio GET, sequential", "limit", "same key, same bytes"),
        ("bench_seq", "redis-benchmark GET -c 1", "limit", f"-t set,get -d {value_bytes}"),
        ("peer_seq", "peer: cashews @cache on the same loader, sequential", "peer",
         "1 coroutine, warm, every call a hit; same JSON body"),
        ("ours_conc", f"ours: HistoryService.get_job, {c} concurrent", "ours",
         f"{c} coroutines, one event loop"),
        ("raw_conc", f"raw redis-py asyncio GET, {c} concurrent", "limit",
         f"{c} coroutines, default pool"),
        ("bench_conc", "redis-benchmark GET -c 50", "limit", f"-t set,get -d {value_bytes}"),
        ("peer_conc", f"peer: cashews @cache on the same loader, {c} concurrent", "peer",
         f"{c} coroutines, cashews' pool sized like ours"),
        ("sync_seq", "raw redis-py sync GET, sequential", "context", ""),
        ("ours_one_key", f"ours: {c} concurrent reads of ONE key", "context",
         f"hits share a GET in flight, no single-flight ({coalesced} joins)"),
    ]  # fmt: skip
    return BenchResult(
        name=NAME,
        title=TITLE,
        series=rates("reads/s", samples, rows),
        ratios=list(RATIOS),
        params={
            "reads_per_rep": sizes.reads,
            "concurrency": c,
            "value_bytes": value_bytes,
            "distinct_jobs": KEYS,
            "redis_benchmark_requests": sizes.benchmark_requests,
            "repetitions": sizes.repetitions,
        },
        notes=[
            "The value is the cache envelope of a finished job with its result, as "
            "HistoryService.mark_succeeded wrote it; ours decodes it into a JobOut each time.",
            f"Reads rotate over {KEYS} finished jobs so that concurrent reads never share a "
            "single-flight lookup (checked: 0 coalesced); the one-key row: hits of one key "
            "share the GET in flight instead (single-flight is for misses).",
            "The peer (cashews, default serializer settings) stores b'JobOut:' + the same JSON "
            "body under ma:v1:cashews:<id> and decodes it with JobOut.model_validate_json; ours "
            "also checks the breaker, the deadline and the envelope's rank and generation.",
            *([peer_missing] if peer_missing else []),
        ],
    )
