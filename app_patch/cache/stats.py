"""In-process cache counters, per kind, that ``/metrics`` and tests read."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Final

from app_patch.breaker import Breaker, BreakerState
from app_patch.cache.keys import Kind

# The snapshot's own spelling of the breaker's states, kept for its readers.
_SNAPSHOT_BREAKER_STATE: Final = {
    BreakerState.closed: "closed",
    BreakerState.half_open: "half-opened",
    BreakerState.open: "opened",
}


@dataclass
class KindStats:
    """``hits``/``misses`` count Redis lookups, ``loads`` calls of the loader;
    ``coalesced`` reads joined a lookup already in flight; ``bypassed`` skipped Redis
    (breaker open or cache disabled); ``errors`` are failed Redis calls or bad entries."""

    hits: int = 0
    misses: int = 0
    loads: int = 0
    coalesced: int = 0
    bypassed: int = 0
    errors: int = 0
    writes: int = 0
    invalidations: int = 0


@dataclass
class CacheStats:
    """Plain in-process counters; the metrics exporter reads ``snapshot()``."""

    enabled: bool
    breaker: Breaker
    kinds: dict[Kind, KindStats] = field(default_factory=lambda: {k: KindStats() for k in Kind})
    errors_other: int = 0

    @property
    def breaker_state(self) -> str:
        return _SNAPSHOT_BREAKER_STATE[self.breaker.state]

    @property
    def breaker_opened_total(self) -> int:
        return self.breaker.opened_total

    def snapshot(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "breaker": {"state": self.breaker_state, "opened_total": self.breaker_opened_total},
            "errors_other": self.errors_other,
            "kinds": {kind.value: asdict(stats) for kind, stats in self.kinds.items()},
        }
