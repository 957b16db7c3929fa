"""Run the benchmarks and write ``bench/results.json`` + ``bench/results.md``.

``main(quick, only)`` is what ``invoke bench`` calls; ``python -m bench.run [--quick]
[--only history_write,cached_read,...] [--out DIR]`` does the same from a shell. The quick mode
uses smaller sizes and fewer repetitions (CI runs it so the benchmark never rots; it finishes
in under two minutes). A benchmark that fails is recorded with its error and the others still
run; ``main`` then raises ``BenchmarkFailed`` after writing the results, as it does when a
must-hold check (pool timeouts = 0, ...) fails. Targets that are not reached are reported,
not raised.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from bench import (
    api_load,
    cached_read,
    history_write,
    migrate_cold,
    persistence_cost,
    retention_sweep,
    scale_curve,
    stack_up,
)
from bench.env import BenchEnv, bench_env, machine_facts
from bench.report import BENCH_DIR, BenchResult, RunResults, print_console, write_results

console = Console(soft_wrap=True, stderr=True)


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    run: Callable[[BenchEnv, bool], BenchResult]


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark(history_write.NAME, history_write.TITLE, history_write.run),
    Benchmark(cached_read.NAME, cached_read.TITLE, cached_read.run),
    Benchmark(api_load.NAME, api_load.TITLE, api_load.run),
    Benchmark(migrate_cold.NAME, migrate_cold.TITLE, migrate_cold.run),
    Benchmark(stack_up.NAME, stack_up.TITLE, stack_up.run),
    Benchmark(scale_curve.NAME, scale_curve.TITLE, scale_curve.run),
    Benchmark(persistence_cost.NAME, persistence_cost.TITLE, persistence_cost.run),
    # last: creating and deleting 100k-file trees churns the disk, which must not slow the rest
    Benchmark(retention_sweep.NAME, retention_sweep.TITLE, retention_sweep.run),
)
NAMES = tuple(b.name for b in BENCHMARKS)


class BenchmarkFailed(RuntimeError):
    """A benchmark errored or a must-hold check failed (results are written first)."""


def select(only: Sequence[str] | None) -> list[Benchmark]:
    """The benchmarks to run, in the canonical order; unknown names are a ValueError."""
    if not only:
        return list(BENCHMARKS)
    wanted = {name.strip() for name in only if name.strip()}
    unknown = sorted(wanted - set(NAMES))
    if unknown:
        raise ValueError(
            f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(NAMES)}"
        )
    return [b for b in BENCHMARKS if b.name in wanted]


def cpu_times() -> tuple[int, int]:
    """(total, idle) jiffies of the whole machine from /proc/stat."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return (0, 0)
    return sum(fields), fields[3] + (fields[4] if len(fields) > 4 else 0)


def busy_pct(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    total = after[0] - before[0]
    if total <= 0:
        return None
    return round(100 * (1 - (after[1] - before[1]) / total), 1)


def background_load(seconds: float = 1.0) -> float | None:
    """Machine CPU busy % over a short idle wait before we start anything."""
    before = cpu_times()
    time.sleep(seconds)
    return busy_pct(before, cpu_times())


def failures(results: Sequence[BenchResult]) -> list[str]:
    problems: list[str] = []
    for bench in results:
        if bench.error:
            problems.append(f"{bench.name}: {bench.error}")
        problems += [
            f"{bench.name}: check failed: {c.label} = {c.value}" for c in bench.checks if not c.ok
        ]
    return problems


def run_one(benchmark: Benchmark, env: BenchEnv, quick: bool) -> BenchResult:
    console.print(f"[bold]{benchmark.name}[/bold]: {benchmark.title} ...")
    started = time.perf_counter()
    cpu_before = cpu_times()
    try:
        result = benchmark.run(env, quick)
    except Exception as exc:  # recorded in the results; the other benchmarks still run
        console.print(f"[red]{benchmark.name} failed[/red]: {exc}")
        console.print(traceback.format_exc(), markup=False, highlight=False)
        result = BenchResult(name=benchmark.name, title=benchmark.title, error=f"{exc}"[:2000])
    result.elapsed_s = round(time.perf_counter() - started, 1)
    result.machine_busy_pct = busy_pct(cpu_before, cpu_times())
    state = "skipped" if result.skipped else ("error" if result.error else "done")
    console.print(f"  {state} in {result.elapsed_s:.1f} s")
    return result


def main(
    quick: bool = False,
    only: list[str] | None = None,
    *,
    out_dir: Path | None = None,
    keep_scratch: bool = False,
) -> Path:
    """Run the (selected) benchmarks; write results.json + results.md; return the .md path."""
    selected = select(only)
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    started = time.perf_counter()
    load_before = os.getloadavg()
    background = background_load()
    results: list[BenchResult] = []
    with bench_env(keep=keep_scratch) as env:
        machine = machine_facts(env)
        machine["loadavg_at_start"] = [round(x, 2) for x in load_before]
        machine["cpu_busy_pct_before_start"] = background
        servers = env.describe()
        for benchmark in selected:
            results.append(run_one(benchmark, env, quick))
    machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    run = RunResults(
        quick=quick,
        machine=machine,
        benchmarks=results,
        only=[b.name for b in selected] if only else None,
        started_at=started_at,
        elapsed_s=time.perf_counter() - started,
        servers=servers,
    )
    path = write_results(run, out_dir or BENCH_DIR)
    print_console(run)
    console.print(f"wrote {path} and {path.with_suffix('.json')} in {run.elapsed_s:.0f} s")
    problems = failures(results)
    if problems:
        raise BenchmarkFailed("; ".join(problems))
    return path


def cli(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (< 2 min), as in CI")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(NAMES)}")
    parser.add_argument("--out", default="", help="output directory (default: bench/)")
    parser.add_argument("--keep-scratch", action="store_true", help="keep the temp dir")
    args = parser.parse_args(argv)
    only = [n for n in args.only.split(",") if n.strip()] or None
    try:
        main(
            args.quick,
            only,
            out_dir=Path(args.out) if args.out else None,
            keep_scratch=args.keep_scratch,
        )
    except (BenchmarkFailed, ValueError) as exc:
        console.print(f"[red]error[/red]: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
