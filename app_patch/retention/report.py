"""What a sweep did (or, dry, would do): totals per policy, skips and errors."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app_patch.retention.policies import Policy

log = logging.getLogger(__name__)

MAX_ERRORS_KEPT = 20


@dataclass
class PolicyTotals:
    objects: int = 0
    bytes: int = 0


@dataclass
class SweepReport:
    dry_run: bool
    policies: dict[Policy, PolicyTotals]
    skipped: int = 0  # held by another sweeper/writer, or not old enough yet
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    elapsed_s: float = 0.0

    @property
    def total_objects(self) -> int:
        return sum(t.objects for t in self.policies.values())

    @property
    def total_bytes(self) -> int:
        return sum(t.bytes for t in self.policies.values())

    def add(self, policy: Policy, objects: int, nbytes: int) -> None:
        totals = self.policies[policy]
        totals.objects += objects
        totals.bytes += nbytes

    def error(self, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(message)
        log.warning("retention: %s", message)

    def summary_rows(self) -> list[tuple[str, int, int]]:
        """(policy, objects, bytes) per policy plus a ``total`` row, for tables."""
        rows = [(p.value, t.objects, t.bytes) for p, t in self.policies.items()]
        return [*rows, ("total", self.total_objects, self.total_bytes)]

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "policies": {p.value: vars(t) for p, t in self.policies.items()},
            "total_objects": self.total_objects,
            "total_bytes": self.total_bytes,
            "skipped": self.skipped,
            "error_count": self.error_count,
            "errors": self.errors,
            "elapsed_s": round(self.elapsed_s, 3),
        }


ProgressCallback = Callable[[Policy, int, int | None], None]
"""Called with (policy, objects done so far, expected total or None)."""
