"""The two output files of a run: ``results.json`` (every sample) and ``results.md``."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.report.markdown import render_markdown
from bench.report.model import RunResults

BENCH_DIR = Path(__file__).resolve().parent.parent
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
SCHEMA_VERSION = 1


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
