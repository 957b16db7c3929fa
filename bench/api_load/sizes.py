"""How much the API load benchmark measures: clients, requests and repetitions."""

from __future__ import annotations

from dataclasses import dataclass

CLIENTS = 200


@dataclass(frozen=True)
class Sizes:
    seeds: int
    requests: int
    duration_s: float
    upload_every: int
    repetitions: int


QUICK = Sizes(seeds=40, requests=2000, duration_s=20, upload_every=10, repetitions=2)
FULL = Sizes(seeds=200, requests=12000, duration_s=90, upload_every=10, repetitions=3)
