"""The engines that run the stack, behind one interface (:class:`StackEngine`), by name.

* ``pulumi`` (:mod:`infra.engines.pulumi`): the Pulumi CLI with a selected stack;
* ``compose`` (:mod:`infra.engines.compose`): the compose CLI on the local Docker engine;
* ``embedded`` (:mod:`infra.engines.embedded`): pgserver, a local redis-server, a local API;
* ``swarm`` (:mod:`infra.engines.swarm`): a stack file on a Docker swarm (only when asked for).

:func:`choose` picks one (``--engine``, else ``MA_INFRA_ENGINE``, else the first available of
:data:`AUTOMATIC`, in that order: probes only, nothing is started; swarm is never guessed);
:func:`recorded` returns the engine and record of the stack this checkout started. Every task
goes through these two.
"""

from __future__ import annotations

import os

from infra.config import ConfigError
from infra.engines.base import DownPlan, StackEndpoints, StackEngine, UpRequest
from infra.engines.compose import ComposeEngine
from infra.engines.embedded import EmbeddedEngine
from infra.engines.kinds import EngineError, EngineKind
from infra.engines.pulumi import PulumiEngine
from infra.engines.record import StackRecord
from infra.engines.swarm import SwarmEngine

ENGINES: dict[EngineKind, type[StackEngine]] = {
    EngineKind.PULUMI: PulumiEngine,
    EngineKind.COMPOSE: ComposeEngine,
    EngineKind.EMBEDDED: EmbeddedEngine,
    EngineKind.SWARM: SwarmEngine,
}
"""Every engine, by name."""
AUTOMATIC = (EngineKind.PULUMI, EngineKind.COMPOSE, EngineKind.EMBEDDED)
"""The engines :func:`choose` tries, in order, when none is forced."""

NOTHING_STARTED = "nothing was started by this checkout: run invoke up first"


def get(kind: EngineKind | str) -> StackEngine:
    try:
        return ENGINES[EngineKind(str(kind))]()
    except ValueError:
        names = ", ".join(ENGINES)
        raise ConfigError("MA_INFRA_ENGINE / --engine", f"must be {names}, not {kind!r}") from None


def choose(prefer: str | None = None) -> StackEngine:
    """``prefer`` (or ``MA_INFRA_ENGINE``) forces an engine; otherwise the first available."""
    forced = prefer or os.environ.get("MA_INFRA_ENGINE") or None
    if forced:
        return get(forced)
    for kind in AUTOMATIC:
        engine = ENGINES[kind]()
        if engine.available():
            return engine
    return EmbeddedEngine()


def recorded() -> tuple[StackEngine, StackRecord]:
    """The engine and record of the stack this checkout's ``up`` started; an
    :class:`EngineError` (:data:`NOTHING_STARTED`) when there is none."""
    from infra.engines import record

    found = record.load()
    if found is None:
        raise EngineError(NOTHING_STARTED)
    return get(found.engine), found


__all__ = [
    "AUTOMATIC",
    "ENGINES",
    "NOTHING_STARTED",
    "DownPlan",
    "EngineError",
    "EngineKind",
    "StackEndpoints",
    "StackEngine",
    "StackRecord",
    "UpRequest",
    "choose",
    "get",
    "recorded",
]
