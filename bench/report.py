"""Results of one benchmark run: the data model, the statistics and the two output files.

Every benchmark returns a :class:`BenchResult`: a few :class:`Series` (one figure measured over
several repetitions: ours, and the limits measured in the same run), :class:`Ratio` rows that
set one of ours against one limit (ours / limit, on throughput; for durations the inverse, so
a ratio is always "fraction of the limit's speed"; against a peer project, ``unit="x"``, it
reads "times the peer's speed"; with ``unit="time"`` it is shown inverted, as a multiple of
the limit's duration, and its target as the most allowed slowdown), and :class:`Check` rows
(pool timeouts must be 0).
``write_results`` turns a :class:`RunResults` into ``results.json`` (everything, including
each sample) and ``results.md`` (a side-by-side table with the ratios and targets). Nothing
here measures anything, so it is unit-tested on its own.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.table import Table

Better = Literal["higher", "lower"]
RatioUnit = Literal["%", "x", "time"]  # "60.5 %" of a limit; "2.35 x" a peer; "1.20 x time"
BENCH_DIR = Path(__file__).resolve().parent
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
SCHEMA_VERSION = 1


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
    role: Literal["ours", "limit", "peer", "context"] = "ours"
    better: Better = "higher"
    note: str = ""

    @property
    def summary(self) -> Summary:
        return summarize(self.samples)


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


@dataclass(frozen=True)
class Check:
    """A pass/fail figure such as "pool timeouts = 0"."""

    label: str
    value: float
    expected: str
    ok: bool


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


@dataclass
class RunResults:
    quick: bool
    machine: dict[str, Any]
    benchmarks: list[BenchResult]
    only: list[str] | None = None
    started_at: str = ""
    elapsed_s: float = 0.0
    servers: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------- formatting


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


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
    return lines


def render_markdown(run: RunResults) -> str:
    m = run.machine
    mode = "quick" if run.quick else "full"
    lines = [
        "# media-analysis-kit benchmark",
        "",
        f"Run {run.started_at} ({mode} mode, {run.elapsed_s:.0f} s"
        + (f", only: {', '.join(run.only)}" if run.only else "")
        + "), one machine, every limit measured in the same run.",
        "",
        f"Machine: {m.get('cpu_model', '?')}, {m.get('cpu_count', '?')} CPUs, "
        f"{m.get('memory_gib', '?')} GiB, kernel {m.get('kernel', '?')}, "
        f"Python {m.get('python', '?')}, PostgreSQL {m.get('postgresql', '?')}, "
        f"Redis {m.get('redis', '?')}.",
    ]
    if run.servers:
        lines.append("Servers: " + "; ".join(f"{k}: {v}" for k, v in run.servers.items()) + ".")
    lines += [
        "",
        "Figures are the median of the repetitions, with min and max. A ratio is ours as a",
        "fraction of the named limit's throughput (for durations: limit time / our time);",
        "against a peer project it is a multiple of the peer's throughput (x).",
        "",
        "## Summary",
        "",
    ]
    summary_rows: list[list[str]] = []
    for bench in run.benchmarks:
        if bench.skipped or bench.error:
            why = f"skipped: {bench.skipped}" if bench.skipped else f"error: {bench.error}"
            summary_rows.append([bench.title, "-", "-", "-", why])
            continue
        for rv in bench.ratio_values():
            summary_rows.append(
                [
                    bench.title,
                    rv.label,
                    rv.limit_label,
                    fmt_ratio(rv.value, rv.unit),
                    fmt_target(rv),
                ]
            )
        for check in bench.checks:
            verdict = "ok" if check.ok else "FAILED"
            summary_rows.append(
                [
                    bench.title,
                    check.label,
                    "-",
                    fmt_number(check.value),
                    f"{check.expected}: {verdict}",
                ]
            )
    lines += _md_table(["benchmark", "figure", "limit", "ratio / value", "target"], summary_rows)
    for bench in run.benchmarks:
        lines += ["", f"## {bench.title}", ""]
        if bench.skipped:
            lines += [f"**skipped: {bench.skipped}**"]
        if bench.error:
            lines += [f"**error: {bench.error}**"]
        if bench.params:
            params = ", ".join(f"{k}={v}" for k, v in bench.params.items())
            lines += [f"Parameters: {params}.", ""]
        if bench.machine_busy_pct is not None:
            lines += [
                f"Took {bench.elapsed_s:.0f} s; machine CPU busy meanwhile: "
                f"{bench.machine_busy_pct:.0f} % of all cores (every process, ours included).",
                "",
            ]
        if bench.series:
            rows = []
            for series in bench.series:
                row = series_row(series)
                rows.append([*row, series.note])
            lines += _md_table(["role", "figure", "median", "min", "max", "n", "note"], rows)
        ratios = [] if bench.skipped else bench.ratio_values()
        if ratios:
            lines += [""]
            lines += _md_table(
                ["ours", "limit", "ratio (ours / limit)", "target"],
                [
                    [rv.label, rv.limit_label, fmt_ratio(rv.value, rv.unit), fmt_target(rv)]
                    for rv in ratios
                ],
            )
        if bench.checks:
            lines += [""]
            lines += _md_table(
                ["check", "value", "expected", "result"],
                [
                    [c.label, fmt_number(c.value), c.expected, "ok" if c.ok else "FAILED"]
                    for c in bench.checks
                ],
            )
        if bench.notes:
            lines += [""] + [f"- {note}" for note in bench.notes]
    lines.append("")
    return "\n".join(lines)


def to_json(run: RunResults) -> dict[str, Any]:
    benchmarks = []
    for bench in run.benchmarks:
        body = asdict(bench)
        ok = not bench.skipped and not bench.error
        for series, raw in zip(bench.series, body["series"], strict=True):
            raw["summary"] = asdict(series.summary) if series.samples else None
        body["ratios"] = [asdict(rv) for rv in bench.ratio_values()] if ok else []
        benchmarks.append(body)
    return {
        "schema": SCHEMA_VERSION,
        "mode": "quick" if run.quick else "full",
        "only": run.only,
        "started_at": run.started_at,
        "elapsed_s": round(run.elapsed_s, 3),
        "machine": run.machine,
        "servers": run.servers,
        "benchmarks": benchmarks,
    }


def write_results(run: RunResults, out_dir: Path = BENCH_DIR) -> Path:
    """Write ``results.json`` and ``results.md`` into ``out_dir``; returns the .md path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / RESULTS_JSON
    md_path = out_dir / RESULTS_MD
    json_path.write_text(
        json.dumps(to_json(run), indent=2, sort_keys=False, default=_json_default) + "\n",
        encoding="utf-8",
    )
    md_path.write_text(render_markdown(run), encoding="utf-8")
    return md_path


def _json_default(value: object) -> object:
    if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
        return str(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def print_console(run: RunResults, console: Console | None = None) -> None:
    """The side-by-side table on the terminal (rich)."""
    console = console or Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
    table = Table(title=f"benchmark ({'quick' if run.quick else 'full'} mode)", show_lines=False)
    for column in ("benchmark", "role", "figure", "median", "min", "max", "n"):
        table.add_column(column, justify="right" if column in {"min", "max", "n"} else "left")
    for bench in run.benchmarks:
        if bench.skipped or bench.error:
            what = f"skipped: {bench.skipped}" if bench.skipped else f"error: {bench.error}"
            table.add_row(bench.title, "-", what, "", "", "", "")
            continue
        for i, series in enumerate(bench.series):
            table.add_row(bench.title if i == 0 else "", *series_row(series))
        table.add_section()
    console.print(table)
    ratios = Table(title="ratios and checks")
    for column in ("benchmark", "ours", "limit", "ratio / value", "target"):
        ratios.add_column(column)
    for bench in run.benchmarks:
        if bench.skipped or bench.error:
            continue
        for rv in bench.ratio_values():
            style = "" if rv.met is None else ("green" if rv.met else "red")
            ratios.add_row(
                bench.title,
                rv.label,
                rv.limit_label,
                fmt_ratio(rv.value, rv.unit),
                f"[{style}]{fmt_target(rv)}[/{style}]" if style else fmt_target(rv),
            )
        for check in bench.checks:
            style = "green" if check.ok else "red"
            ratios.add_row(
                bench.title,
                check.label,
                "-",
                fmt_number(check.value),
                f"[{style}]{check.expected}: {'ok' if check.ok else 'FAILED'}[/{style}]",
            )
    console.print(ratios)
