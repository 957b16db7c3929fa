"""Prometheus metrics for the patched API (prometheus-client, one registry per app).

Request latency is observed as requests happen; everything else (pool, breakers, cache
counters, outbox, storage, retention totals) is read from live objects at scrape time by a
collector, so a scrape always shows current values and nothing is counted twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

BREAKER_STATE_VALUE = {
    "closed": 0.0,
    "half-open": 1.0,
    "half-opened": 1.0,  # purgatory spelling
    "open": 2.0,
    "opened": 2.0,
}


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
        self._collector: LiveCollector | None = None

    def observe_pool_checkout(self, waited_s: float, timed_out: bool) -> None:
        self.pool_wait_seconds.observe(waited_s)
        if timed_out:
            self.pool_timeouts.inc()

    def attach(self, sources: LiveSources) -> None:
        if self._collector is not None:
            self.registry.unregister(self._collector)
        self._collector = LiveCollector(sources)
        self.registry.register(self._collector)

    def render(self) -> bytes:
        return generate_latest(self.registry)
