"""How figures, ratios, targets and series rows are written in the tables."""

from __future__ import annotations

import math

from bench.report.model import BenchResult
from bench.report.ratios import RatioUnit, RatioValue
from bench.report.series import Series


def fmt_number(value: float) -> str:
    """Compact numbers: 12345 -> "12,345", 12.345 -> "12.3", 0.01234 -> "0.0123"."""
    if math.isinf(value):
        return "inf"
    if math.isnan(value):
        return "nan"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    if magnitude == 0:
        return "0"
    return f"{value:.3g}"


def fmt_ratio(value: float, unit: RatioUnit = "%") -> str:
    if unit == "time":  # value is the fraction of the limit's speed: show the time multiple
        return "inf" if value <= 0 else f"{1 / value:.2f} x time"
    if math.isinf(value):
        return "inf"
    return f"{value:.2f} x" if unit == "x" else f"{value * 100:.1f} %"


def fmt_target(rv: RatioValue) -> str:
    if rv.target is None:
        return "-"
    verdict = "met" if rv.met else "NOT met"
    if rv.unit == "time":
        return f"<= {1 / rv.target:.1f} x time: {verdict}"
    wanted = f"{rv.target:.1f} x" if rv.unit == "x" else f"{rv.target * 100:.0f} %"
    return f">= {wanted}: {verdict}"


def series_row(series: Series) -> list[str]:
    if not series.samples:
        return [series.role, series.label, "-", "-", "-", "0"]
    s = series.summary
    return [
        series.role,
        series.label,
        f"{fmt_number(s.median)} {series.unit}",
        fmt_number(s.min),
        fmt_number(s.max),
        str(s.n),
    ]


def not_run(bench: BenchResult) -> str | None:
    """Why a benchmark has no figures (``skipped: ...`` or ``error: ...``), or None."""
    if bench.skipped or bench.error:
        return f"skipped: {bench.skipped}" if bench.skipped else f"error: {bench.error}"
    return None


def verdict_rows(bench: BenchResult) -> list[tuple[list[str], bool | None]]:
    """Each ratio, then each check, as (title, figure, limit, value, target) with whether
    it was met (None: a ratio without a target)."""
    rows: list[tuple[list[str], bool | None]] = []
    for rv in bench.ratio_values():
        row = [bench.title, rv.label, rv.limit_label, fmt_ratio(rv.value, rv.unit)]
        rows.append(([*row, fmt_target(rv)], rv.met))
    for check in bench.checks:
        verdict = "ok" if check.ok else "FAILED"
        row = [bench.title, check.label, "-", fmt_number(check.value)]
        rows.append(([*row, f"{check.expected}: {verdict}"], check.ok))
    return rows
