"""The side-by-side tables of a run on the terminal (rich)."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from bench.report.fmt import not_run, series_row, verdict_rows
from bench.report.model import RunResults


def print_console(run: RunResults, console: Console | None = None) -> None:
    """The side-by-side table on the terminal (rich)."""
    console = console or Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
    table = Table(title=f"benchmark ({'quick' if run.quick else 'full'} mode)", show_lines=False)
    for column in ("benchmark", "role", "figure", "median", "min", "max", "n"):
        table.add_column(column, justify="right" if column in {"min", "max", "n"} else "left")
    for bench in run.benchmarks:
        what = not_run(bench)
        if what:
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
        if not_run(bench):
            continue
        for row, met in verdict_rows(bench):
            style = "" if met is None else ("green" if met else "red")
            target = f"[{style}]{row[-1]}[/{style}]" if style else row[-1]
            ratios.add_row(*row[:-1], target)
    console.print(ratios)
