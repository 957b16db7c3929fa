"""One figure over repetitions (:class:`Series`) and its median, min and max."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Better = Literal["higher", "lower"]
Role = Literal["ours", "limit", "peer", "context"]


@dataclass(frozen=True)
class Summary:
    median: float
    min: float
    max: float
    n: int


def summarize(samples: Sequence[float]) -> Summary:
    """Median, min and max of the repetitions (``ValueError`` when there are none)."""
    values = [float(v) for v in samples]
    if not values:
        raise ValueError("no samples")
    if any(math.isnan(v) for v in values):
        raise ValueError("NaN sample")
    return Summary(statistics.median(values), min(values), max(values), len(values))


@dataclass
class Series:
    """One figure over repetitions. ``role`` says what it is in the comparison:
    ``ours`` (the project's code), ``limit`` (a raw baseline to set ours against), ``peer``
    (another project doing the same job its own way) or ``context`` (shown for explanation,
    never in a ratio)."""

    key: str
    label: str
    unit: str
    samples: list[float]
    role: Role = "ours"
    better: Better = "higher"
    note: str = ""

    @property
    def summary(self) -> Summary:
        return summarize(self.samples)


def cost(key: str, label: str, unit: str, samples: list[float], note: str = "") -> Series:
    """A context figure where lower is better (CPU, memory, time spent outside the timing)."""
    return Series(key, label, unit, samples, role="context", better="lower", note=note)


def rates(
    unit: str, samples: dict[str, list[float]], rows: Sequence[tuple[str, str, Role, str]]
) -> list[Series]:
    """Throughput series from ``(key, label, role, note)`` rows, each over ``samples[key]``."""
    return [
        Series(key, label, unit, samples[key], role=role, note=note)
        for key, label, role, note in rows
    ]
