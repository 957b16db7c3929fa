"""Ours against a limit or a peer: :class:`Ratio` (what to compare) and its value."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from bench.report.series import Series

RatioUnit = Literal["%", "x", "time"]  # "60.5 %" of a limit; "2.35 x" a peer; "1.20 x time"


@dataclass(frozen=True)
class Ratio:
    """``ours`` against ``limit`` (series keys); ``target`` is the fraction to reach
    (``unit="x"``: the multiple, for a peer)."""

    ours: str
    limit: str
    target: float | None = None
    label: str = ""
    unit: RatioUnit = "%"


@dataclass(frozen=True)
class RatioValue:
    ours: str
    limit: str
    limit_label: str
    value: float
    target: float | None
    met: bool | None
    label: str
    unit: RatioUnit = "%"


def ratio_value(ours: Series, limit: Series, ratio: Ratio) -> RatioValue:
    """Fraction of the limit's speed reached by ours, from the medians.

    Throughput (higher is better): ours / limit. Durations (lower is better): limit / ours,
    i.e. the same "ours as a fraction of the limit's rate".
    """
    if ours.better != limit.better:
        raise ValueError(f"cannot compare {ours.key} ({ours.better}) with {limit.key}")
    a, b = ours.summary.median, limit.summary.median
    if ours.better == "higher":
        value = a / b if b > 0 else math.inf
    else:
        value = b / a if a > 0 else math.inf
    met = None if ratio.target is None else value >= ratio.target
    return RatioValue(
        ours=ours.key,
        limit=limit.key,
        limit_label=limit.label,
        value=value,
        target=ratio.target,
        met=met,
        label=ratio.label or ours.label,
        unit=ratio.unit,
    )
