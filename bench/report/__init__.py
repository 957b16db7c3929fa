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

from bench.report.files import (
    BENCH_DIR,
    RESULTS_JSON,
    RESULTS_MD,
    SCHEMA_VERSION,
    to_json,
    write_results,
)
from bench.report.fmt import fmt_number, fmt_ratio, fmt_target, series_row
from bench.report.markdown import render_markdown
from bench.report.model import BenchResult, Check, RunResults, zero_check
from bench.report.ratios import Ratio, RatioUnit, RatioValue, ratio_value
from bench.report.series import Better, Role, Series, Summary, cost, rates, summarize
from bench.report.terminal import print_console

__all__ = [
    "BENCH_DIR",
    "RESULTS_JSON",
    "RESULTS_MD",
    "SCHEMA_VERSION",
    "BenchResult",
    "Better",
    "Check",
    "Ratio",
    "RatioUnit",
    "RatioValue",
    "Role",
    "RunResults",
    "Series",
    "Summary",
    "cost",
    "fmt_number",
    "fmt_ratio",
    "fmt_target",
    "print_console",
    "rates",
    "ratio_value",
    "render_markdown",
    "series_row",
    "summarize",
    "to_json",
    "write_results",
    "zero_check",
]
