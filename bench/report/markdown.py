"""``results.md``: the summary table, then one section a benchmark."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from bench.report.fmt import (
    fmt_number,
    fmt_ratio,
    fmt_target,
    not_run,
    series_row,
    verdict_rows,
)
from bench.report.model import RunResults


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
        why = not_run(bench)
        if why:
            summary_rows.append([bench.title, "-", "-", "-", why])
            continue
        summary_rows += [row for row, _ in verdict_rows(bench)]
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
