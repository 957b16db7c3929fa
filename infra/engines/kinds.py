"""The engines' names and the error they refuse or fail with (imports nothing of the engines)."""

from __future__ import annotations

from enum import StrEnum

from app_patch.errors import OperatorError


class EngineKind(StrEnum):
    PULUMI = "pulumi"
    COMPOSE = "compose"
    EMBEDDED = "embedded"
    SWARM = "swarm"


class EngineError(OperatorError):
    """The engine refused or failed; the message is one line that says what to do."""
