"""The scale curve's run: every size seeded and measured, then the report rows."""

from __future__ import annotations

from bench.env import BenchEnv
from bench.report import BenchResult
from bench.retention_sweep import disk_dir
from bench.scale_curve.measure import measure
from bench.scale_curve.rows import bench_result
from bench.scale_curve.sizes import FULL, QUICK


def run(env: BenchEnv, quick: bool) -> BenchResult:
    sizes = QUICK if quick else FULL
    figures = measure(env, sizes)
    return bench_result(figures, sizes, str(disk_dir(env)))
