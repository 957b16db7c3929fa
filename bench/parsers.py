"""Parsers for the reference tools' output (pgbench, redis-benchmark)."""

from __future__ import annotations

import csv
import io
import re

_PGBENCH_TPS = re.compile(r"^tps = ([0-9.]+) \((without initial connection time|excluding)")
_PGBENCH_TPS_ANY = re.compile(r"^tps = ([0-9.]+)")
_PGBENCH_FAILED = re.compile(r"^number of failed transactions: (\d+)")
_PGBENCH_LATENCY = re.compile(r"^latency average = ([0-9.]+) ms")


def pgbench_tps(output: str) -> float:
    """The ``tps = ... (without initial connection time)`` figure of a pgbench run."""
    fallback: float | None = None
    for line in output.splitlines():
        line = line.strip()
        match = _PGBENCH_TPS.match(line)
        if match:
            return float(match.group(1))
        any_match = _PGBENCH_TPS_ANY.match(line)
        if any_match and fallback is None:
            fallback = float(any_match.group(1))
    if fallback is not None:
        return fallback
    raise ValueError("no tps line in pgbench output")


def pgbench_failed(output: str) -> int:
    for line in output.splitlines():
        match = _PGBENCH_FAILED.match(line.strip())
        if match:
            return int(match.group(1))
    return 0


def pgbench_latency_ms(output: str) -> float | None:
    for line in output.splitlines():
        match = _PGBENCH_LATENCY.match(line.strip())
        if match:
            return float(match.group(1))
    return None


def redis_benchmark_rps(output: str, test: str = "GET") -> float:
    """Requests per second of ``test`` from ``redis-benchmark --csv`` output.

    Redis 7 prints a header (``"test","rps","avg_latency_ms",...``); older versions print
    bare ``"GET","12345.67"`` rows. Both are accepted.
    """
    for row in csv.reader(io.StringIO(output)):
        if len(row) < 2:
            continue
        name, value = row[0].strip(), row[1].strip()
        if name.upper() == test.upper() or name.upper().startswith(f"{test.upper()}:"):
            return float(value)
    raise ValueError(f"no {test} row in redis-benchmark output")
