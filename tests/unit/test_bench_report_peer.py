"""A peer project in the benchmark report: a multiple ("x") target next to the "%" ones.

No timing is looked at.
"""

from __future__ import annotations

import json

import pytest

from bench.report import (
    BenchResult,
    Ratio,
    RunResults,
    Series,
    fmt_ratio,
    fmt_target,
    render_markdown,
    to_json,
)


def _bench(ours: float, peer: float) -> BenchResult:
    return BenchResult(
        name="demo",
        title="Demo",
        series=[
            Series("ours", "ours: write", "jobs/s", [ours]),
            Series("raw", "raw write", "jobs/s", [ours * 1.5], role="limit"),
            Series("peer", "peer: template way", "jobs/s", [peer], role="peer"),
        ],
        ratios=[Ratio("ours", "raw", 0.6), Ratio("ours", "peer", 2.0, unit="x")],
    )


def _run(bench: BenchResult) -> RunResults:
    return RunResults(quick=True, machine={}, benchmarks=[bench])


def test_a_peer_ratio_is_a_multiple_with_its_own_target() -> None:
    limit, peer = _bench(300, 100).ratio_values()
    assert (limit.unit, peer.unit) == ("%", "x")
    assert peer.value == pytest.approx(3.0) and peer.met is True
    assert fmt_ratio(peer.value, peer.unit) == "3.00 x"
    assert fmt_target(peer) == ">= 2.0 x: met"
    assert fmt_target(limit) == ">= 60 %: met"
    (_, slower) = _bench(150, 100).ratio_values()
    assert slower.met is False and fmt_target(slower) == ">= 2.0 x: NOT met"


def test_the_report_shows_both_kinds_side_by_side() -> None:
    run = _run(_bench(300, 100))
    md = render_markdown(run)
    assert "| Demo | ours: write | peer: template way | 3.00 x | >= 2.0 x: met |" in md
    assert "| Demo | ours: write | raw write | 66.7 % | >= 60 %: met |" in md
    assert "| peer | peer: template way | 100 jobs/s |" in md
    ratios = json.loads(json.dumps(to_json(run)))["benchmarks"][0]["ratios"]
    assert [r["unit"] for r in ratios] == ["%", "x"]
