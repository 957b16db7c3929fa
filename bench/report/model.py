"""What a benchmark returns (:class:`BenchResult`, with its :class:`Check` rows) and a run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.report.ratios import Ratio, RatioValue, ratio_value
from bench.report.series import Series


@dataclass(frozen=True)
class Check:
    """A pass/fail figure such as "pool timeouts = 0"."""

    label: str
    value: float
    expected: str
    ok: bool


def zero_check(label: str, value: float) -> Check:
    """A count that must be 0 (errors, timeouts, ...)."""
    return Check(label, value, "= 0", value == 0)


@dataclass
class BenchResult:
    name: str
    title: str
    series: list[Series] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    error: str | None = None
    elapsed_s: float = 0.0
    machine_busy_pct: float | None = None  # whole machine, all processes, during this benchmark

    def get(self, key: str) -> Series:
        for series in self.series:
            if series.key == key:
                return series
        raise KeyError(f"{self.name}: no series {key!r}")

    def ratio_values(self) -> list[RatioValue]:
        """Ratios whose two series both have samples (a failed side yields no ratio)."""
        values = []
        for r in self.ratios:
            ours, limit = self.get(r.ours), self.get(r.limit)
            if ours.samples and limit.samples:
                values.append(ratio_value(ours, limit, r))
        return values


@dataclass
class RunResults:
    quick: bool
    machine: dict[str, Any]
    benchmarks: list[BenchResult]
    only: list[str] | None = None
    started_at: str = ""
    elapsed_s: float = 0.0
    servers: dict[str, str] = field(default_factory=dict)
