"""How much the cost-of-persistence benchmark measures: clients, requests, big uploads."""

from __future__ import annotations

from dataclasses import dataclass

CLIENTS = 32


@dataclass(frozen=True)
class Sizes:
    seeds: int
    posts: int
    gets: int
    time_cap_s: float
    repetitions: int
    big_uploads: int


QUICK = Sizes(seeds=40, posts=240, gets=2000, time_cap_s=15, repetitions=2, big_uploads=20)
FULL = Sizes(seeds=200, posts=1500, gets=12000, time_cap_s=60, repetitions=3, big_uploads=200)
