"""The six retention policies, the kinds of objects they delete, and the dated-folder rule."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from app_patch.errors import OperatorError
from app_patch.models import Artifact, MediaFile

ARTIFACT_DIR_KEEP_DAYS = 2  # empty artifact folders of recent days stay: writers use them


class Policy(enum.StrEnum):
    uploads = "uploads"
    artifacts = "artifacts"
    quota = "quota"
    missing = "missing"
    orphans = "orphans"
    tmp = "tmp"


ALL_POLICIES: tuple[Policy, ...] = tuple(Policy)


class ObjectType(enum.StrEnum):
    """``retention_events.object_type`` values."""

    media_file = "media_file"
    artifact = "artifact"
    orphan_file = "orphan_file"
    tmp_file = "tmp_file"


class UnknownPolicyError(OperatorError, ValueError):
    pass


def parse_policies(spec: str | Iterable[str] | None) -> tuple[Policy, ...]:
    """``"uploads,tmp"`` (or a list) -> policies in application order; empty means all."""
    names = spec.split(",") if isinstance(spec, str) else list(spec or ())
    wanted = {name.strip().lower() for name in names if name.strip()}
    unknown = sorted(wanted - set(Policy))
    if unknown:
        raise UnknownPolicyError(
            f"unknown retention policy {', '.join(map(repr, unknown))}; "
            f"choose from: {', '.join(ALL_POLICIES)}"
        )
    return tuple(p for p in ALL_POLICIES if p in wanted) if wanted else ALL_POLICIES


@dataclass(frozen=True)
class RowKind:
    model: type[MediaFile] | type[Artifact]
    object_type: ObjectType
    policy: Policy


MEDIA = RowKind(MediaFile, ObjectType.media_file, Policy.uploads)
ARTIFACTS_KIND = RowKind(Artifact, ObjectType.artifact, Policy.artifacts)


@dataclass(frozen=True)
class Victim:
    kind: RowKind
    id: uuid.UUID
    key: str
    size: int
    reason: str


def recent_artifact_dir(key: str) -> bool:
    """Keep folders that may hold a day >= today - 2 (writers create them without locks)."""
    cutoff = datetime.now(UTC).date() - timedelta(days=ARTIFACT_DIR_KEEP_DAYS)
    parts = key.split("/")[1:4]
    try:
        numbers = tuple(int(p) for p in parts)
    except ValueError:
        return True  # not the dated layout: leave it alone
    if not numbers:
        return True
    start = (cutoff.year, cutoff.month, cutoff.day)[: len(numbers)]
    if len(numbers) == 3:
        try:
            return date(*numbers) >= cutoff
        except ValueError:
            return True
    return numbers >= start
