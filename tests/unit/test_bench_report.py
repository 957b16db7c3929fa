"""The benchmark's bookkeeping: statistics, ratios, targets, output files and tool parsers.

Nothing here measures anything, and no test looks at a timing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench import run as bench_run
from bench.api_load.server import timeout_counters
from bench.env import PgTarget, RedisTarget, cpu_model, memory_gib
from bench.parsers import (
    pgbench_failed,
    pgbench_latency_ms,
    pgbench_tps,
    redis_benchmark_rps,
)
from bench.report import (
    BenchResult,
    Check,
    Ratio,
    RunResults,
    Series,
    fmt_number,
    fmt_ratio,
    ratio_value,
    render_markdown,
    summarize,
    to_json,
    write_results,
)
from bench.stack_up import phases
from bench.stats import percentile

PGBENCH_OUTPUT = """\
pgbench (16.2)
transaction type: /tmp/x/insert_job.sql
scaling factor: 1
query mode: simple
number of clients: 8
number of threads: 2
maximum number of tries: 1
duration: 5 s
number of transactions actually processed: 29001
number of failed transactions: 0 (0.000%)
latency average = 1.378 ms
initial connection time = 12.530 ms
tps = 5804.402148 (without initial connection time)
"""

REDIS_CSV = """\
"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms"
"SET","68027.21","0.496","0.120","0.495","0.695"
"GET","66006.60","0.508","0.056","0.495","0.695"
"""


def _result(ours: list[float], limit: list[float], target: float | None = 0.5) -> BenchResult:
    return BenchResult(
        name="demo",
        title="Demo | bench",
        series=[
            Series("ours", "ours: thing", "ops/s", ours),
            Series("raw", "raw thing", "ops/s", limit, role="limit", note="same bytes"),
        ],
        ratios=[Ratio("ours", "raw", target)],
        params={"n": 3},
    )


def _run(*benchmarks: BenchResult) -> RunResults:
    return RunResults(
        quick=True,
        machine={"cpu_model": "Test CPU", "cpu_count": 2, "python": "3.11"},
        benchmarks=list(benchmarks),
        started_at="2026-01-01T00:00:00+00:00",
        elapsed_s=12.0,
    )


# ---------------------------------------------------------------- statistics and ratios


def test_summary_is_median_min_max_of_the_repetitions() -> None:
    s = summarize([3.0, 1.0, 10.0, 2.0])
    assert (s.median, s.min, s.max, s.n) == (2.5, 1.0, 10.0, 4)
    assert summarize([7]).median == 7


@pytest.mark.parametrize("bad", [[], [1.0, math.nan]])
def test_summary_refuses_no_samples_or_nan(bad: list[float]) -> None:
    with pytest.raises(ValueError):
        summarize(bad)


def test_throughput_ratio_is_ours_over_limit_and_checks_the_target() -> None:
    bench = _result([40, 60, 50], [100, 100, 100])
    (rv,) = bench.ratio_values()
    assert rv.value == pytest.approx(0.5)
    assert rv.met is True
    assert rv.limit_label == "raw thing"

    (missed,) = _result([49, 49, 49], [100, 100, 100]).ratio_values()
    assert missed.met is False


def test_duration_ratio_is_limit_time_over_our_time() -> None:
    ours = Series("ours", "ours", "s", [4.0], better="lower")
    raw = Series("raw", "raw", "s", [1.0], role="limit", better="lower")
    rv = ratio_value(ours, raw, Ratio("ours", "raw"))
    assert rv.value == pytest.approx(0.25)
    assert rv.met is None  # no target, no verdict


def test_ratio_refuses_mixed_directions() -> None:
    ours = Series("ours", "ours", "s", [4.0], better="lower")
    raw = Series("raw", "raw", "ops/s", [1.0], role="limit")
    with pytest.raises(ValueError):
        ratio_value(ours, raw, Ratio("ours", "raw"))


def test_a_side_without_samples_yields_no_ratio() -> None:
    assert _result([], [1.0]).ratio_values() == []


def test_unknown_series_key_is_an_error() -> None:
    with pytest.raises(KeyError):
        _result([1.0], [1.0]).get("missing")


# ---------------------------------------------------------------- rendering


def test_markdown_has_the_side_by_side_table_ratios_and_targets() -> None:
    text = render_markdown(_run(_result([40, 60, 50], [100, 90, 110])))
    assert "| role | figure | median | min | max | n | note |" in text
    assert "| ours | ours: thing | 50.0 ops/s | 40.0 | 60.0 | 3 |  |" in text
    assert "| limit | raw thing | 100 ops/s | 90.0 | 110 | 3 | same bytes |" in text
    assert "50.0 %" in text
    assert ">= 50 %: met" in text
    assert "Demo \\| bench" in text  # pipes in cells are escaped
    assert "Test CPU, 2 CPUs" in text


def test_markdown_reports_skips_errors_and_failed_checks() -> None:
    skipped = BenchResult(name="up", title="Up", skipped="no Docker engine (not installed)")
    broken = BenchResult(name="x", title="Broken", error="boom")
    checked = _result([1.0], [2.0], target=0.6)
    checked.checks = [Check("pool timeouts", 3, "= 0", False)]
    text = render_markdown(_run(skipped, broken, checked))
    assert "skipped: no Docker engine (not installed)" in text
    assert "error: boom" in text
    assert ">= 60 %: NOT met" in text
    assert "| pool timeouts | 3.00 | = 0 | FAILED |" in text


def test_results_files_hold_every_sample_and_the_machine(tmp_path: Path) -> None:
    run = _run(_result([40, 60, 50], [100, 100, 100]), BenchResult("up", "Up", skipped="why"))
    md_path = write_results(run, tmp_path)
    assert md_path == tmp_path / "results.md"
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["mode"] == "quick"
    assert data["machine"]["cpu_model"] == "Test CPU"
    demo, up = data["benchmarks"]
    assert demo["series"][0]["samples"] == [40, 60, 50]
    assert demo["series"][0]["summary"] == {"median": 50, "min": 40, "max": 60, "n": 3}
    assert demo["ratios"][0]["value"] == pytest.approx(0.5)
    assert up["skipped"] == "why" and up["ratios"] == []
    assert md_path.read_text().startswith("# media-analysis-kit benchmark")


def test_json_survives_an_infinite_ratio() -> None:
    data = to_json(_run(_result([5.0], [0.0])))
    assert json.loads(json.dumps(data, default=str))


@pytest.mark.parametrize(
    ("value", "text"),
    [(12345.6, "12,346"), (123.4, "123"), (12.34, "12.3"), (1.234, "1.23"), (0.01234, "0.0123")],
)
def test_numbers_are_compact(value: float, text: str) -> None:
    assert fmt_number(value) == text


def test_ratio_format() -> None:
    assert fmt_ratio(0.605) == "60.5 %"
    assert fmt_ratio(math.inf) == "inf"


# ---------------------------------------------------------------- tool output parsers


def test_pgbench_output() -> None:
    assert pgbench_tps(PGBENCH_OUTPUT) == pytest.approx(5804.402148)
    assert pgbench_failed(PGBENCH_OUTPUT) == 0
    assert pgbench_latency_ms(PGBENCH_OUTPUT) == pytest.approx(1.378)
    with pytest.raises(ValueError):
        pgbench_tps("nothing here")


def test_redis_benchmark_csv_with_and_without_header() -> None:
    assert redis_benchmark_rps(REDIS_CSV) == pytest.approx(66006.60)
    assert redis_benchmark_rps('"SET","1.0"\n"GET","2.5"\n') == pytest.approx(2.5)
    with pytest.raises(ValueError):
        redis_benchmark_rps('"SET","1.0"\n')


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([3.0], 95) == 3.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_timeout_counters_only_lists_nonzero_timeout_counters() -> None:
    metrics = "\n".join(
        [
            "# TYPE ma_db_pool_timeouts counter",
            "ma_db_pool_timeouts_total 2.0",
            "ma_db_pool_timeouts_created 1.7e9",
            "# TYPE ma_http_request_duration_seconds histogram",
            "ma_http_request_duration_seconds_count 10.0",
            "# TYPE ma_other_timeouts counter",
            "ma_other_timeouts_total 0.0",
        ]
    )
    assert timeout_counters(metrics) == {"ma_db_pool_timeouts_total": 2.0}


def test_up_phases_from_the_probe_log() -> None:
    log = "\n".join(
        [
            "    0.09 imports done",
            "    0.10 engine: compose",
            "    0.65 docker-compose -p media-analysis -f x.yml up -d --no-build --remove-orphans",
            "    6.82 migrating: alembic upgrade head (in the API container)",
            "   12.83 ready",
            '{"engine": "compose"}',
        ]
    )
    assert phases(log) == pytest.approx(
        {"build_s": 0.65, "start_servers_healthy_s": 6.17, "migrate_api_healthy_s": 6.01}
    )
    assert phases("no timestamps") == {}


# ---------------------------------------------------------------- machine facts and targets


def test_machine_facts_parsers() -> None:
    assert cpu_model("processor : 0\nmodel name\t: AMD EPYC 7B13\n") == "AMD EPYC 7B13"
    assert cpu_model("Model : Raspberry Pi 4\n") == "Raspberry Pi 4"
    assert cpu_model("") == "unknown"
    assert memory_gib("MemTotal:       24684132 kB\n") == pytest.approx(23.5, abs=0.1)


def test_server_targets_from_urls() -> None:
    socket = PgTarget.from_url("postgresql+psycopg://postgres@/bench?host=/tmp/pg")
    assert (socket.host, socket.port, socket.user, socket.database) == (
        "/tmp/pg",
        5432,
        "postgres",
        "bench",
    )
    tcp = PgTarget.from_url("postgresql://u:p%40ss@127.0.0.1:5433/db")
    assert tcp.args() == ["-h", "127.0.0.1", "-p", "5433", "-U", "u"]
    assert tcp.env()["PGPASSWORD"] == "p@ss"
    redis = RedisTarget.from_url("redis://:s%3Acret@127.0.0.1:6390/2")
    assert redis.cli_args() == ["-h", "127.0.0.1", "-p", "6390", "--dbnum", "2", "-a", "s:cret"]


def test_benchmark_selection_keeps_the_canonical_order() -> None:
    assert [b.name for b in bench_run.select(None)] == list(bench_run.NAMES)
    picked = bench_run.select(["retention_sweep", "up", "history_write"])
    assert [b.name for b in picked] == ["history_write", "up", "retention_sweep"]
    with pytest.raises(ValueError, match="unknown benchmark"):
        bench_run.select(["nope"])


def test_errors_and_failed_checks_fail_the_run_but_missed_targets_do_not() -> None:
    missed = _result([1.0], [100.0], target=0.6)
    assert bench_run.failures([missed]) == []
    checked = _result([1.0], [1.0])
    checked.checks = [Check("pool timeouts", 1, "= 0", False)]
    broken = BenchResult(name="x", title="X", error="boom")
    problems = bench_run.failures([checked, broken])
    assert problems == ["demo: check failed: pool timeouts = 1", "x: boom"]
