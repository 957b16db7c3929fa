"""The benchmark machinery end to end on its cheapest piece (quick mode, ``migrate``).

Starts the benchmark's own embedded PostgreSQL and redis-server, runs the cold ``invoke
migrate`` benchmark with its limit and context figures, and writes results.json/results.md
into a temp dir (never bench/). Timings are not asserted, only that every figure was measured.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import run as bench_run

pytestmark = pytest.mark.timeout(300)


def test_quick_mode_cheapest_benchmark_end_to_end(tmp_path: Path) -> None:
    md_path = bench_run.main(quick=True, only=["migrate"], out_dir=tmp_path)

    assert md_path == tmp_path / "results.md"
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["mode"] == "quick"
    assert data["only"] == ["migrate"]
    for fact in ("cpu_count", "cpu_model", "kernel", "python", "postgresql", "redis", "date"):
        assert data["machine"].get(fact), fact
    (bench,) = data["benchmarks"]
    assert bench["name"] == "migrate"
    assert bench["error"] is None and bench["skipped"] is None
    keys = {series["key"]: series for series in bench["series"]}
    assert set(keys) == {"ours", "raw", "inproc", "floor"}
    for series in keys.values():
        assert len(series["samples"]) == bench["params"]["repetitions"]
        assert all(sample > 0 for sample in series["samples"])
    pairs = {(r["ours"], r["limit"]) for r in bench["ratios"]}
    assert pairs == {("ours", "raw"), ("inproc", "raw")}
    text = md_path.read_text()
    assert "Cold invoke migrate" in text and "| ours | ours: invoke migrate" in text


def test_unknown_benchmark_names_are_refused_before_anything_starts(tmp_path: Path) -> None:
    assert bench_run.cli(["--only", "nope", "--out", str(tmp_path)]) == 1
    assert not (tmp_path / "results.json").exists()
