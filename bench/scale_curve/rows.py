"""The scale curve's report rows: each query's p50 per size, the sweep's rate, table sizes."""

from __future__ import annotations

from app_patch.settings import RetentionSettings
from bench.report import BenchResult, Ratio, Series
from bench.scale_curve.measure import TABLES
from bench.scale_curve.queries import PAGE, QUERIES
from bench.scale_curve.seed import ANALYSIS_TYPES, FAILED_SHARE
from bench.scale_curve.sizes import History, Sizes, size_label
from bench.stats import percentile_of

NAME = "scale_curve"
TITLE = "History scale curve (queries and sweep vs history size)"
HISTORY_TARGET = 0.5  # p50 at the largest size at most 2 x the p50 at 10k
SWEEP_TARGET = 0.75  # files/s at the largest size at least 75 % of the rate at 10k


def bench_result(figures: list[History], sizes: Sizes, disk: str) -> BenchResult:
    small, large = figures[0], figures[-1]
    series: list[Series] = []
    ratios: list[Ratio] = []
    for query in QUERIES:
        for fig in figures:
            samples = fig.latencies_ms[query.key]
            label = size_label(fig.jobs)
            note = f"p95 {percentile_of(samples, 0.95):.2f} ms"
            if query.key == "deep":
                note += f"; page {fig.deep_page:,}"
            series.append(
                Series(f"{query.key}_{label}", f"{query.label}, {label} jobs", "ms", samples,
                       better="lower", note=note)
            )  # fmt: skip
        for fig in figures[1:]:
            target = HISTORY_TARGET if fig is large else None
            label = size_label(fig.jobs)
            ratios.append(
                Ratio(f"{query.key}_{label}", f"{query.key}_{size_label(small.jobs)}", target,
                      label=f"{query.label}: p50 at {label} jobs", unit="time")
            )  # fmt: skip
    for fig in figures:
        label, files = size_label(fig.jobs), len(fig.seeded.expired_shas)
        series.append(
            Series(f"sweep_{label}", f"sweep of {files:,} expired uploads, {label} jobs",
                   "files/s", fig.sweep_rates, note="Sweeper, uploads policy, 10 % of media")
        )  # fmt: skip
    for fig in figures[1:]:
        target = SWEEP_TARGET if fig is large else None
        ratios.append(
            Ratio(f"sweep_{size_label(fig.jobs)}", f"sweep_{size_label(small.jobs)}", target,
                  label=f"sweep files/s at {size_label(fig.jobs)} jobs")
        )  # fmt: skip
    per_million = 1_000_000 / large.jobs / (1 << 20)
    for table in TABLES:
        total, heap, indexes = large.relation_bytes[table]
        series.append(
            Series(f"size_{table}", f"{table}: total MiB per 1M jobs", "MiB",
                   [total * per_million], role="context", better="lower",
                   note=f"heap {heap * per_million:.0f} MiB + indexes {indexes * per_million:.0f}"
                   f" MiB (+ TOAST, FSM/VM); at {size_label(large.jobs)} jobs")
        )  # fmt: skip
    for fig in figures:
        label = size_label(fig.jobs)
        series.append(
            Series(f"seed_{label}", f"seed {label} jobs (COPY + VACUUM ANALYZE), untimed", "s",
                   [fig.seeded.seconds], role="context", better="lower",
                   note=f"{fig.seeded.results:,} results, {fig.seeded.media:,} media "
                   f"({fig.seeded.media_live:,} live, expired ones included)")
        )  # fmt: skip
    notes = [
        "Seeded per size in a fresh database migrated by app_patch.migrate: a year of "
        "history written in creation order; media shared by 2.5 jobs on average; types "
        f"{', '.join(f'{n} {w} %' for n, w in ANALYSIS_TYPES)}; {FAILED_SHARE:.0%} failed, "
        "the last 15 minutes queued/running; media last used more than uploads_days ago "
        "already swept, except 10 % of all media rows, live and just expired (their files "
        "are the sweep's). Then VACUUM ANALYZE.",
        "Each call opens its own session, as the service's reads do; no Redis. The deep "
        "page's cursor is built directly from the row ending the page before it (the cursor "
        "the API hands out there); a history shorter than 2,000 pages uses its middle page.",
        f"The sweep deletes 10 % of the media rows' files, not of the jobs' "
        f"({len(large.seeded.expired_shas):,}"
        f" files at {size_label(large.jobs)} jobs); between repetitions the same rows are made "
        "live again and their files re-created (untimed).",
        "Table sizes are pg_total_relation_size / pg_relation_size / pg_indexes_size after "
        "the load, scaled to one million jobs; retention_events is empty then.",
    ]
    for key, lines in large.plans.items():
        notes += [f"Plan at {size_label(large.jobs)} jobs, {key}: {line}" for line in lines]
    params = {
        "jobs": "/".join(size_label(j) for j in sizes.jobs),
        "page_size": PAGE,
        "calls_per_query": sizes.calls,
        "sweeps": sizes.sweeps,
        "sweep_batch": RetentionSettings().batch_size,
        "disk_dir": disk,
    }
    return BenchResult(
        name=NAME, title=TITLE, series=series, ratios=ratios, params=params, notes=notes
    )
