"""Which database and which storage root a command acts on: one answer for the API's tools.

``python -m app_patch.retention``, ``python -m app_patch.outbox`` and ``migrations/env.py`` ask
here; ``infra.stack_ops`` adds the container stack's view on top (where the stack's volume
lives), for the invoke tasks. Retention additionally proves the pair belongs together
(``store_identity``) before it reconciles anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app_patch.bootstrap import database_url
from app_patch.settings import Settings


@dataclass(frozen=True)
class Target:
    database_url: str  # carries a password: never log it
    storage_root: Path


def resolve_target(settings: Settings) -> Target:
    """The configured URL (or the embedded PostgreSQL, started if needed) and storage root."""
    return Target(database_url(settings), Path(settings.storage.root))
