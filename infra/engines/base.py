"""The one interface every engine implements, and the values it trades in.

An engine brings the stack up (:meth:`StackEngine.up`), finds a running one without starting
anything (:meth:`StackEngine.attach`), says what ``down`` would remove
(:meth:`StackEngine.down_plan`) and removes it (:meth:`StackEngine.down`), and adds its own
checks to the smoke checks ``verify`` runs for every engine (:meth:`StackEngine.checks`).
Migrations are not an engine's business: the ``up`` task migrates every engine the same way,
from here, as the schema owner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

from infra.engines.kinds import EngineKind

if TYPE_CHECKING:
    from infra.engines.record import StackRecord
    from infra.progress import Progress
    from infra.verify.results import CheckResult


Log = Callable[[str], None]


@dataclass(frozen=True)
class StackEndpoints:
    """Where the running stack answers, from this host. ``database_url`` is the schema
    owner's (migrations, schema checks), ``app_database_url`` the API's role (None when the
    engine has no separate one), ``redis_url`` the API's Redis user. ``api_url`` is None when
    no API runs. The URLs carry passwords: do not log them."""

    engine: EngineKind
    database_url: str
    redis_url: str | None
    api_url: str | None
    app_database_url: str | None = None


@dataclass(frozen=True)
class DownPlan:
    """What ``down`` would act on: ``deletable`` are the stack's own volumes that exist (what
    ``down --volumes`` deletes), ``kept`` the existing ones it never deletes (external or
    adopted), ``containers`` the containers it stops and removes."""

    engine: EngineKind
    deletable: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()
    containers: tuple[str, ...] = ()


@dataclass(frozen=True)
class UpRequest:
    """What the ``up`` task asks of an engine. ``api_port`` is the embedded engine's local API
    port (0: MA_API_PORT); the container engines publish theirs from the stack config."""

    build: bool = True
    api_port: int = 0
    timeout_s: float = 300


@dataclass(frozen=True)
class DeployRequest:
    """What ``invoke deploy`` asks: build the API image first, and the timeouts (0: the stack
    settings ``deployTimeoutS`` / ``drainTimeoutS``)."""

    build: bool = True
    deploy_timeout_s: float = 0
    drain_timeout_s: float = 0


class StackEngine(Protocol):
    """One way to run the stack: :mod:`infra.engines.compose`, :mod:`infra.engines.pulumi`,
    :mod:`infra.engines.embedded`, :mod:`infra.engines.swarm`."""

    kind: ClassVar[EngineKind]

    def available(self) -> bool:
        """A probe (starts nothing): can this engine run here?"""
        ...

    def preview(self, progress: Progress) -> str:
        """What ``up`` would change, without changing anything."""
        ...

    def up(self, request: UpRequest, progress: Progress) -> StackEndpoints:
        """Start or update the stack, record it, return its endpoints."""
        ...

    def attach(self, record: StackRecord) -> StackEndpoints:
        """The recorded stack's endpoints; starts nothing and changes nothing."""
        ...

    def down_plan(self, record: StackRecord) -> DownPlan:
        """What :meth:`down` would remove; changes nothing."""
        ...

    def down(self, record: StackRecord, *, remove_volumes: bool, progress: Progress) -> None:
        """Stop what ``up`` started; the data volumes only with ``remove_volumes``."""
        ...

    def checks(self, endpoints: StackEndpoints) -> list[CheckResult]:
        """This engine's own checks, added to the smoke checks ``verify`` runs."""
        ...

    def deploy(self, record: StackRecord, request: DeployRequest, progress: Progress) -> None:
        """Roll the API onto a new image without dropping a request (or refuse: one line)."""
        ...
