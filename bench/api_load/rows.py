"""The API load benchmark's report rows: throughput, latencies, CPU, pool use and checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from bench.api_load.sizes import CLIENTS, Sizes
from bench.report import BenchResult, Check, Ratio, Series, cost, zero_check

NAME = "api_load"
TITLE = "API under 200 concurrent clients (pool 20+30)"
Role = Literal["ours", "limit", "context"]


@dataclass
class Measured:
    """The driver's results per repetition (ours, and the bare app's) and the API's counters."""

    ours: list[dict[str, Any]]
    limit: list[dict[str, Any]]
    stats_before: dict[str, Any]
    stats_after: dict[str, Any]
    metrics_timeouts: dict[str, float]
    pool_peaks: list[float]


def _lat(result: dict[str, Any], kind: str, key: str) -> float | None:
    value = result.get("latency", {}).get(kind, {}).get(key)
    return float(value) if value is not None else None


def _cpu(runs: list[dict[str, Any]], process: str) -> list[float]:
    """CPU of the API (``server``) or driver process in % of one core, per repetition."""
    return [100 * r[f"{process}_cpu_s"] / r["wall_s"] for r in runs]


def bench_result(sizes: Sizes, measured: Measured, server_log: str) -> BenchResult:
    ours, limit, pool_peaks = measured.ours, measured.limit, measured.pool_peaks
    stats_before, stats_after = measured.stats_before, measured.stats_after
    metrics_timeouts = measured.metrics_timeouts

    def series(key: str, kind: str, stat: str, label: str, role: Role = "ours") -> Series:
        source = limit if role == "limit" else ours
        values = [v for r in source if (v := _lat(r, kind, stat)) is not None]
        return Series(key, label, "ms", values, role=role, better="lower")

    five_xx = sum(int(r["status_5xx"]) for r in ours)
    transport = sum(sum(r["transport_errors"].values()) for r in ours)
    deferred = sum(int(r["deferred_to_outbox"]) for r in ours)
    pool_timeouts = sum(int(r["pool_timeouts"]) for r in ours)
    exceptions = {
        k: v - stats_before.get("exceptions", {}).get(k, 0)
        for k, v in stats_after.get("exceptions", {}).items()
    }
    truncated = [i for i, r in enumerate(ours) if r["stopped_by_deadline"]]
    timeouts = sum(metrics_timeouts.values())
    result = BenchResult(
        name=NAME,
        title=TITLE,
        series=[
            Series(
                "rps",
                "ours: throughput (GET + uploads)",
                "req/s",
                [r["throughput_rps"] for r in ours],
                note=f"{CLIENTS} clients",
            ),
            Series(
                "bare_rps",
                "bare ASGI app, same uvicorn + driver",
                "req/s",
                [r["throughput_rps"] for r in limit],
                role="limit",
            ),
            series("p50", "all", "p50_ms", "ours: p50 latency"),
            series("bare_p50", "all", "p50_ms", "bare ASGI app: p50 latency", "limit"),
            series("p95", "all", "p95_ms", "ours: p95 latency"),
            series("p99", "all", "p99_ms", "ours: p99 latency"),
            series("bare_p99", "all", "p99_ms", "bare ASGI app: p99 latency", "limit"),
            series("get_p50", "get", "p50_ms", "ours: GET /analyses/{id} p50", "context"),
            series("get_p99", "get", "p99_ms", "ours: GET /analyses/{id} p99", "context"),
            series("upload_p50", "upload", "p50_ms", "ours: POST /analyses p50", "context"),
            series("upload_p99", "upload", "p99_ms", "ours: POST /analyses p99", "context"),
            cost("server_cpu", "ours: API process CPU", "% of 1 core", _cpu(ours, "server")),
            cost("driver_cpu", "load driver process CPU", "% of 1 core", _cpu(ours, "driver")),
            cost(
                "pool_peak",
                "ours: peak pool connections checked out",
                "conns",
                pool_peaks,
                note="of 50",
            ),
        ],
        ratios=[Ratio("rps", "bare_rps"), Ratio("p50", "bare_p50"), Ratio("p99", "bare_p99")],
        checks=[
            zero_check("pool timeouts", pool_timeouts),
            zero_check("5xx responses", five_xx),
            zero_check("transport errors (client side)", transport),
            zero_check("uploads deferred to the outbox", deferred),
            Check("timeout counters in /metrics", timeouts, "= 0", not metrics_timeouts),
        ],
        params={
            "clients": CLIENTS,
            "requests_per_rep": sizes.requests,
            "time_cap_s": sizes.duration_s,
            "uploads": f"1 in {sizes.upload_every}",
            "seeded_jobs": sizes.seeds,
            "pool": "20 + 30 overflow, timeout 30 s",
            "repetitions": sizes.repetitions,
        },
        notes=[
            "uvicorn bench.api_server:app --host 127.0.0.1 --workers 1 (access log on, JSON "
            "logs to a file); the driver is a separate process on the same 2-core machine, "
            "so both compete with PostgreSQL and Redis for CPU.",
            "Percentiles are over successful responses of each repetition (nearest rank); "
            "the table shows their median, min and max over the repetitions.",
            f"Status counts per repetition: {[r['statuses'] for r in ours]}.",
        ],
    )
    if exceptions:
        result.notes.append(f"Exceptions that escaped the app: {exceptions}.")
    if truncated:
        result.notes.append(f"Repetitions {truncated} hit the time cap before all requests.")
    if metrics_timeouts:
        result.notes.append(f"/metrics timeout counters: {metrics_timeouts}.")
    if five_xx or transport:
        result.notes.append(f"Server log tail: {server_log[-1500:]}")
    return result
