"""Prometheus metrics for the patched API (prometheus-client, one registry per app).

Request latency is observed as requests happen; everything else (pool, breakers, cache
counters, outbox, storage, retention totals) is read from live objects at scrape time by a
collector, so a scrape always shows current values and nothing is counted twice.

The scrape also reads two figures from the storage root: the volume's bytes (``statvfs``) and
the outcome of the last retention sweep. The sweeper is its own process (``invoke
retention``), never scraped, so it leaves its outcome in a small file in the root
(``record_sweep``) and the API exports it. A figure that cannot be read is left out of the
scrape; it never fails it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app_patch.breaker import BreakerState
from app_patch.storage import write_durably

log = logging.getLogger(__name__)

BREAKER_STATE_VALUE: dict[str, float] = {
    BreakerState.closed: 0.0,
    BreakerState.half_open: 1.0,
    BreakerState.open: 2.0,
}
READY_STATE_VALUE = {"ok": 0.0, "degraded": 1.0, "down": 2.0}
SWEEP_STATUS_NAME = ".retention-last-sweep.json"  # beside the store marker, outside the areas


@dataclass
class PoolFigures:
    size: int
    checked_out: int
    overflow: int
    max_connections: int


@dataclass
class RetentionTotals:
    """Per policy: (objects deleted, bytes freed), summed from ``retention_events``."""

    by_policy: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass
class LiveSources:
    """Callables the collector reads at scrape time; each returns current figures."""

    pool: Callable[[], PoolFigures]
    breakers: Callable[[], Mapping[str, str]]
    cache_counters: Callable[[], Mapping[str, Mapping[str, int]]]
    outbox_backlog: Callable[[], int]
    outbox_failed: Callable[[], int]
    storage_usage: Callable[[], Mapping[str, tuple[int, int]]]
    retention: Callable[[], RetentionTotals]


class LiveCollector(Collector):
    def __init__(self, sources: LiveSources) -> None:
        self.sources = sources

    def collect(self) -> Iterable[Metric]:
        pool = self.sources.pool()
        for name, value, doc in (
            ("ma_db_pool_size", pool.size, "Connections the pool keeps open"),
            ("ma_db_pool_checked_out", pool.checked_out, "Connections in use"),
            ("ma_db_pool_overflow", pool.overflow, "Connections beyond pool_size"),
            ("ma_db_pool_max_connections", pool.max_connections, "pool_size + max_overflow"),
        ):
            yield GaugeMetricFamily(name, doc, value=value)

        breakers = GaugeMetricFamily(
            "ma_breaker_state",
            "Circuit breaker state (0 closed, 1 half-open, 2 open)",
            labels=["dependency"],
        )
        for dependency, state in self.sources.breakers().items():
            breakers.add_metric([dependency], BREAKER_STATE_VALUE.get(state, 2.0))
        yield breakers

        cache = CounterMetricFamily(
            "ma_cache_operations", "Cache lookups by kind and outcome", labels=["kind", "outcome"]
        )
        for kind, outcomes in self.sources.cache_counters().items():
            for outcome, count in outcomes.items():
                cache.add_metric([kind, outcome], count)
        yield cache

        yield GaugeMetricFamily(
            "ma_outbox_backlog",
            "Job snapshots waiting for PostgreSQL",
            value=self.sources.outbox_backlog(),
        )
        yield GaugeMetricFamily(
            "ma_outbox_failed",
            "Outbox entries set aside after a non-outage failure (invoke outbox lists them)",
            value=self.sources.outbox_failed(),
        )

        files = GaugeMetricFamily("ma_storage_files", "Files per storage area", labels=["area"])
        size = GaugeMetricFamily("ma_storage_bytes", "Bytes per storage area", labels=["area"])
        for area, (count, nbytes) in self.sources.storage_usage().items():
            files.add_metric([area], count)
            size.add_metric([area], nbytes)
        yield files
        yield size

        deleted = CounterMetricFamily(
            "ma_retention_deletions", "Objects deleted by retention", labels=["policy"]
        )
        freed = CounterMetricFamily(
            "ma_retention_bytes_freed", "Bytes freed by retention", labels=["policy"]
        )
        for policy, (objects, nbytes) in self.sources.retention().by_policy.items():
            deleted.add_metric([policy], objects)
            freed.add_metric([policy], nbytes)
        yield deleted
        yield freed


def record_sweep(root: Path, errors: int) -> None:
    """Leave a finished sweep's error count in the storage root for the API's scrape. Never
    raises: a sweep that could not say so is still the sweep it was (its report says it)."""
    body = json.dumps({"finished_at": time.time(), "errors": int(errors)}).encode()
    try:
        write_durably(Path(root) / SWEEP_STATUS_NAME, body)
    except OSError as exc:
        log.warning("retention outcome not recorded for /metrics: %s", exc)


class StoreCollector(Collector):
    """Scrape-time figures of the storage root: its volume and the last sweep's outcome."""

    def __init__(self) -> None:
        self.root: Path | None = None

    def collect(self) -> Iterable[Metric]:
        if self.root is None:
            return
        yield from _volume(self.root)
        yield from _last_sweep(self.root)


def _volume(root: Path) -> Iterable[Metric]:
    try:
        st = os.statvfs(root)
    except OSError as exc:
        log.debug("storage volume not measured: %s", exc)
        return
    for name, blocks, doc in (
        ("ma_storage_volume_size_bytes", st.f_blocks, "Size of the storage root's filesystem"),
        ("ma_storage_volume_used_bytes", st.f_blocks - st.f_bfree, "Bytes used on it (df Used)"),
        (
            "ma_storage_volume_available_bytes",
            st.f_bavail,
            "Bytes the API may still write there (df Avail)",
        ),
    ):
        yield GaugeMetricFamily(name, doc, value=blocks * st.f_frsize)


def _last_sweep(root: Path) -> Iterable[Metric]:
    try:
        status = json.loads((root / SWEEP_STATUS_NAME).read_bytes())
        finished, errors = float(status["finished_at"]), float(status["errors"])
    except FileNotFoundError:
        return  # no sweep has finished on this root yet
    except (OSError, ValueError, TypeError, KeyError) as exc:
        log.debug("last retention outcome unreadable: %s", exc)
        return
    if not (math.isfinite(finished) and math.isfinite(errors)):
        return
    yield GaugeMetricFamily(
        "ma_retention_last_sweep_errors",
        "Errors the last finished retention sweep reported (invoke retention prints them)",
        value=errors,
    )
    yield GaugeMetricFamily(
        "ma_retention_last_sweep_timestamp_seconds",
        "When the last retention sweep finished (Unix time)",
        value=finished,
    )


class Metrics:
    """The app's registry: request histograms plus the live collector once sources exist."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.request_seconds = Histogram(
            "ma_http_request_duration_seconds",
            "Request latency by route template",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.pool_wait_seconds = Histogram(
            "ma_db_pool_wait_seconds",
            "Time to obtain a database connection from the pool",
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
        )
        self.pool_timeouts = Counter(
            "ma_db_pool_timeouts",
            "Checkouts that gave up after pool_timeout (should stay 0)",
            registry=self.registry,
        )
        self.readiness = Gauge(
            "ma_readiness_state",
            "Overall readiness, as /health/ready (0 ok, 1 degraded, 2 down)",
            registry=self.registry,
        )
        self.readiness_checks = Gauge(
            "ma_readiness_check_state",
            "Readiness per check, as /health/ready (0 ok, 1 degraded, 2 down)",
            ["check"],
            registry=self.registry,
        )
        self._store = StoreCollector()
        self.registry.register(self._store)
        self._collector: LiveCollector | None = None

    def observe_pool_checkout(self, waited_s: float, timed_out: bool) -> None:
        self.pool_wait_seconds.observe(waited_s)
        if timed_out:
            self.pool_timeouts.inc()

    def observe_readiness(self, overall: str, checks: Mapping[str, str]) -> None:
        self.readiness.set(READY_STATE_VALUE.get(overall, 2.0))
        for check, state in checks.items():
            self.readiness_checks.labels(check).set(READY_STATE_VALUE.get(state, 2.0))

    def attach(self, sources: LiveSources) -> None:
        if self._collector is not None:
            self.registry.unregister(self._collector)
        self._collector = LiveCollector(sources)
        self.registry.register(self._collector)

    def render(self, storage_root: Path | None = None) -> bytes:
        """The exposition; with ``storage_root``, its volume and last sweep are in it too."""
        if storage_root is not None:
            self._store.root = Path(storage_root)
        return generate_latest(self.registry)
