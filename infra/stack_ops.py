"""The operator tasks' logic, over the engines (:mod:`infra.engines`): which stack a task
acts on, where its files are, and the main job (up, migrate, verify).

A task acts on the stack this checkout's ``up`` recorded, through that stack's engine, or on
what the operator names explicitly (``MA_DB_URL``, ``MA_DB_MIGRATION_URL``,
``MA_STORAGE_ROOT``); with neither it refuses in one line (:data:`NOTHING_STARTED`) and starts
nothing. Containers another checkout owns are refused by the engines.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

import httpx
from docker.errors import DockerException

from app_patch import migrate as migrations
from app_patch.db import redacted
from app_patch.db_roles import ensure_roles
from app_patch.errors import OperatorError
from app_patch.migrate import UpgradeReport
from app_patch.settings import get_settings
from app_patch.target import migration_url
from infra import docker_host, engines
from infra.config import (
    STACK_SECRETS,
    ConfigError,
    StackConfig,
    config_from_env,
    secrets_from_env,
)
from infra.engines import NOTHING_STARTED, EngineKind, StackEndpoints, UpRequest, containers, record
from infra.engines.base import DeployRequest
from infra.in_stack import ContainerTarget, FileStoreTarget, LocalTarget, StackNotRunningError
from infra.progress import Progress
from infra.smoke import SmokeTarget, run_smoke
from infra.stack import build_stack
from infra.verify import CheckResult

__all__ = ["NOTHING_STARTED", "StackEndpoints"]
CONTAINER_ENGINES = {EngineKind.COMPOSE, EngineKind.PULUMI}


def recorded_endpoints() -> StackEndpoints:
    """The stack this checkout's ``up`` recorded, found without starting anything (for every
    task). With no record, the database MA_DB_URL names explicitly; with neither, an
    :class:`OperatorError` (:data:`NOTHING_STARTED`)."""
    settings = get_settings()
    if record.load() is not None:
        engine, found = engines.recorded()
        return engine.attach(found)
    if settings.db.url is None:
        raise OperatorError(NOTHING_STARTED)
    app_url = settings.db.url.get_secret_value()
    owner_url = migration_url(settings)
    return StackEndpoints(
        EngineKind.EMBEDDED,  # checked from here, like the embedded stack
        owner_url,
        settings.redis.url.get_secret_value() if settings.redis.url else None,
        None,
        app_url if owner_url != app_url else None,  # a single-role setup has no app role
    )


def owner_database_url() -> str:
    """For migrate and db-status: the schema owner's URL. MA_DB_MIGRATION_URL(_FILE), else
    MA_DB_URL / DATABASE_URL (a single-role setup), else the recorded stack's owner role;
    with none of them, :data:`NOTHING_STARTED` (nothing is started to have a database)."""
    settings = get_settings()
    if settings.db.migration_url is not None or settings.db.url is not None:
        return migration_url(settings)
    return recorded_endpoints().database_url


def app_database_url() -> str:
    """For retention and the outbox run here: the application role's URL (MA_DB_URL, else
    the recorded stack's app role; the owner's only where no app role exists)."""
    settings = get_settings()
    if settings.db.url is not None:
        return settings.db.url.get_secret_value()
    endpoints = recorded_endpoints()
    return endpoints.app_database_url or endpoints.database_url


EXPLICIT_STORE_VARS = ("MA_STORAGE_ROOT", "MA_DB_URL", "DATABASE_URL")
"""Set in the environment, any of these means: the operator names the store, run here."""


def file_store_target(environ: Mapping[str, str] | None = None) -> FileStoreTarget:
    """Where retention and the outbox tools must run: where the files are.

    Here when the operator named the store or the database explicitly (an explicit wrong
    root is then refused by the library against the database), or for a recorded embedded
    stack; inside the recorded container stack's API container otherwise, the only place that
    mounts the ``media-storage`` volume (after proving the container is this checkout's). No
    record and nothing explicit: :data:`NOTHING_STARTED`. A recorded stack whose API container
    is not running is a :class:`StackNotRunningError` (one line: start it), never a silent
    local run.
    """
    env = os.environ if environ is None else environ
    explicit = [name for name in EXPLICIT_STORE_VARS if env.get(name, "").strip()]
    if explicit:
        return LocalTarget(f"{', '.join(explicit)} set in the environment")
    found = record.load()
    if found is None:
        raise OperatorError(NOTHING_STARTED)
    if found.engine is EngineKind.SWARM:
        return _swarm_api_task(found)
    if found.engine not in CONTAINER_ENGINES:
        return LocalTarget(f"the {found.engine} stack recorded in {record.state_file()}")
    try:
        config = found.config or config_from_env(env)
        owned = containers.require_owned(found, "run there")
    except ConfigError as exc:
        raise OperatorError(str(exc)) from None
    except (DockerException, OSError) as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise StackNotRunningError(
            f"a {found.engine} stack is recorded but no Docker engine answers ({detail}): "
            "start it with `invoke up`"
        ) from None
    name = config.api_name
    status = next((c.status for c in owned if c.name == name), "missing")
    if status != "running":
        raise StackNotRunningError(
            f"the API container {name} of the {found.engine} stack is {status}, and the media "
            "volume is only mounted there: start it with `invoke up`"
        )
    return ContainerTarget(name)


def _swarm_api_task(found: record.StackRecord) -> ContainerTarget:
    """A running API task's container on this node (the storage node: the API's tasks are
    placed where ``media-storage`` is), after proving the services are this checkout's."""
    from infra.engines import swarm

    try:
        engine = swarm.SwarmEngine()
        config = engine._config(found)
        spec = build_stack(config, found.owner)
        swarm.require_owned(spec, found.owner, "run there")
        return ContainerTarget(swarm.task_container(spec, config.api_name))
    except ConfigError as exc:
        raise OperatorError(str(exc)) from None
    except swarm.SwarmError as exc:
        raise StackNotRunningError(str(exc)) from None
    except (DockerException, OSError) as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise StackNotRunningError(f"no Docker engine answers ({detail})") from None


ADMIN_URL_VAR = "MA_INFRA_ADMIN_URL"
"""A superuser's URL for ``invoke db-roles``, from the environment (or a file): never an
argument value, which would land in shell history and ``ps``."""


def admin_url(admin_url_file: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The administrator URL from ``admin_url_file``, else from ``MA_INFRA_ADMIN_URL``."""
    env = os.environ if environ is None else environ
    if admin_url_file:
        try:
            url = Path(admin_url_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise OperatorError(f"cannot read {admin_url_file}: {reason}") from None
        if not url:
            raise OperatorError(f"{admin_url_file} is empty: it must hold a superuser's URL")
        return url
    url = env.get(ADMIN_URL_VAR, "").strip()
    if not url:
        raise OperatorError(
            f"no administrator URL: pass --admin-url-file PATH (a file holding a superuser's "
            f"postgresql:// URL) or set {ADMIN_URL_VAR}"
        )
    return url


def ensure_db_roles(
    admin_url_file: str | None, environ: Mapping[str, str] | None = None
) -> tuple[StackConfig, str]:
    """``invoke db-roles``: create or update the schema owner and application roles, with the
    stack's passwords for them, as the administrator (a DBA's step in external mode, where
    the database server is not ours; a managed ``invoke up`` does it itself). Idempotent.

    Returns the config used and the administrator URL without its password (for the report).
    """
    env = os.environ if environ is None else environ
    url = admin_url(admin_url_file, env)
    try:
        recorded_stack = record.load()
        config = (recorded_stack.config if recorded_stack else None) or config_from_env(env)
        wanted = tuple(
            s
            for s in STACK_SECRETS
            if s.name in {"postgres_owner_password", "postgres_app_password"}
        )
        passwords = secrets_from_env(env, wanted)
    except ConfigError as exc:
        raise OperatorError(str(exc)) from None
    ensure_roles(
        url,
        database=config.postgres_db,
        owner=config.postgres_owner_user,
        owner_password=passwords["postgres_owner_password"],
        app=config.postgres_app_user,
        app_password=passwords["postgres_app_password"],
    )
    return config, redacted(url)


def up(*, engine: str | None, build: bool, progress: Progress, port: int = 0) -> StackEndpoints:
    """Start the stack with the chosen engine (a probe picks it: nothing is started to
    choose). ``port`` is the embedded engine's local API port."""
    chosen = engines.choose(engine)
    if port and chosen.kind is not EngineKind.EMBEDDED:
        raise OperatorError(
            f"--port is for the embedded engine's local API; the {chosen.kind} stack publishes "
            "its API on MA_INFRA_API_HOST_PORT"
        )
    progress.step(f"engine: {chosen.kind}")
    return chosen.up(UpRequest(build=build, api_port=port), progress)


def wait_api_ready(endpoints: StackEndpoints, timeout_s: float = 300) -> None:
    """Wait (bounded) until the API answers ``/health/ready`` with 200: after ``up`` migrated
    the schema, the API's readiness (which checks the schema) follows within seconds. On a
    container engine, every container of the stack is then waited for until Docker's own
    healthcheck says healthy."""
    if endpoints.api_url is None:
        return
    url = f"{endpoints.api_url}/health/ready"
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        try:
            answer = httpx.get(url, timeout=5)
            if answer.status_code == 200:
                break
            last = f"HTTP {answer.status_code}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        if time.monotonic() >= deadline:
            raise OperatorError(
                f"the API at {endpoints.api_url} is not ready after {timeout_s:.0f}s ({last})"
            )
        time.sleep(1)
    found = record.load()
    if endpoints.engine in CONTAINER_ENGINES and found is not None and found.config is not None:
        remaining = max(1.0, deadline - time.monotonic())
        ours = [service.name for service in build_stack(found.config).services]
        docker_host.wait_healthy(ours, timeout_s=remaining)  # the proxy, Prometheus too


def preview(*, engine: str | None, progress: Progress) -> tuple[EngineKind, str]:
    """What ``up`` would change, with the engine ``up`` would choose; changes nothing."""
    chosen = engines.choose(engine)
    return chosen.kind, chosen.preview(progress)


def migrate(endpoints: StackEndpoints) -> UpgradeReport:
    """The one migration path of ``up``: ``alembic upgrade head`` from here, as the schema
    owner (never from the API container, which holds only the app role's URL)."""
    return migrations.upgrade(endpoints.database_url)


def down_plan() -> tuple[engines.StackEngine, record.StackRecord, engines.DownPlan]:
    """The recorded stack, its engine and what ``down`` would remove; changes nothing."""
    engine, found = engines.recorded()
    return engine, found, engine.down_plan(found)


def down(
    engine: engines.StackEngine, found: record.StackRecord, *, volumes: bool, progress: Progress
) -> None:
    engine.down(found, remove_volumes=volumes, progress=progress)
    record.clear()


def deploy(request: DeployRequest, progress: Progress) -> UpgradeReport:
    """``invoke deploy``: the schema first (migrations are expand-only, so the old replicas
    keep working on it), then the recorded stack's engine rolls the API onto the new image."""
    engine, found = engines.recorded()
    report = migrate(engine.attach(found))
    engine.deploy(found, request, progress)
    return report


def verify(endpoints: StackEndpoints) -> list[CheckResult]:
    """The engine's own checks (a local API that must be ours; the container checks) and the
    smoke checks every engine shares."""
    engine = engines.get(endpoints.engine)
    engine_results = engine.checks(endpoints)
    local_storage: Path | None = None
    app_url = None  # containers: infra.verify checks the API's own URL file
    if endpoints.engine is EngineKind.EMBEDDED:
        local_storage = get_settings().storage.root
        app_url = endpoints.app_database_url
    results = run_smoke(
        SmokeTarget(
            database_url=endpoints.database_url,
            redis_url=endpoints.redis_url,
            api_url=endpoints.api_url,
            storage_root=local_storage,
            app_database_url=app_url,
        )
    )
    return results + engine_results
