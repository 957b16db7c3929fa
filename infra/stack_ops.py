"""The main job, end to end: bring the stack up, migrate it, verify it.

Whatever engine ``infra.engine`` picks, the result is the same set of endpoints; the
embedded engine gets a local API process so that every engine ends with an API to check.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from docker.errors import DockerException

from app_patch import migrate as migrations
from app_patch.db import redacted
from app_patch.db_roles import ensure_roles
from app_patch.errors import OperatorError
from app_patch.migrate import UpgradeReport
from app_patch.settings import get_settings
from app_patch.target import migration_url
from infra import docker_host, local_api
from infra import engine as stack_engine
from infra.config import (
    STACK_SECRETS,
    ConfigError,
    StackConfig,
    config_from_env,
    secrets_for,
    secrets_from_env,
)
from infra.engine import Engine, StackEndpoints
from infra.in_stack import ContainerTarget, FileStoreTarget, LocalTarget, StackNotRunningError
from infra.smoke import SmokeTarget, run_smoke
from infra.verify_containers import CheckResult, run_checks

Log = Callable[[str], None]


NOTHING_STARTED = "nothing was started by this checkout: run invoke up first"


def current_endpoints() -> StackEndpoints:
    """For the tasks that write (migrate, retention, outbox): endpoints of the stack ``up``
    started (passwords from the environment), or of the embedded default when nothing was
    started (its servers are started when needed). Read-only tasks use
    :func:`recorded_endpoints`, which starts nothing."""
    kind = stack_engine.recorded_engine()
    if kind in {Engine.COMPOSE, Engine.PULUMI}:
        return _container_endpoints(kind)
    settings = get_settings()
    embedded = stack_engine.embedded_up()
    redis_url = settings.redis.url.get_secret_value() if settings.redis.url else embedded.redis_url
    api_url = stack_engine.recorded_local_api() if kind is Engine.EMBEDDED else None
    return StackEndpoints(
        Engine.EMBEDDED, embedded.database_url, redis_url, api_url, embedded.app_database_url
    )


def recorded_endpoints() -> StackEndpoints:
    """For read-only tasks (verify, db-status): the stack this checkout's ``up`` recorded,
    found without starting anything. With no record, the database MA_DB_URL names
    explicitly; with neither, an :class:`OperatorError` (:data:`NOTHING_STARTED`)."""
    settings = get_settings()
    kind = stack_engine.recorded_engine()
    if kind in {Engine.COMPOSE, Engine.PULUMI}:
        return _container_endpoints(kind)
    if kind is Engine.EMBEDDED:
        endpoints = stack_engine.embedded_attach()
        if endpoints is None:
            raise OperatorError(
                f"the embedded PostgreSQL that invoke up started "
                f"({stack_engine.embedded_data_dir() / 'pg'}) "
                "is not running: run invoke up"
            )
        return endpoints
    if settings.db.url is None:
        raise OperatorError(NOTHING_STARTED)
    app_url = settings.db.url.get_secret_value()
    owner_url = migration_url(settings)
    return StackEndpoints(
        Engine.EMBEDDED,  # checked from here, like the embedded stack
        owner_url,
        settings.redis.url.get_secret_value() if settings.redis.url else None,
        None,
        app_url if owner_url != app_url else None,  # a single-role setup has no app role
    )


def _container_endpoints(kind: Engine) -> StackEndpoints:
    docker_host.require_engine()
    try:
        config = stack_engine.recorded_config() or config_from_env(os.environ)
        secrets = secrets_from_env(os.environ, secrets_for(config.mode))
    except ConfigError as exc:
        raise OperatorError(str(exc)) from None
    try:
        return stack_engine.compose_endpoints(config, secrets, kind)
    except (DockerException, LookupError) as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise OperatorError(
            f"the recorded {kind} stack is not running ({detail}): run invoke up"
        ) from None


def target_database_url() -> str:
    """For migrate/db-status: the schema owner's URL. MA_DB_MIGRATION_URL(_FILE), else
    MA_DB_URL / DATABASE_URL (a single-role setup), else the running stack's owner."""
    settings = get_settings()
    if settings.db.migration_url is not None or settings.db.url is not None:
        return migration_url(settings)
    return current_endpoints().database_url


def status_database_url() -> str:
    """For db-status (read-only): like :func:`target_database_url`, but never starts a server:
    the explicit URLs, else the recorded stack's owner, else :data:`NOTHING_STARTED`."""
    settings = get_settings()
    if settings.db.migration_url is not None or settings.db.url is not None:
        return migration_url(settings)
    return recorded_endpoints().database_url


def target_app_database_url() -> str:
    """For retention and the outbox run here: the application role's URL (MA_DB_URL, else
    the running stack's app role; the owner's only where no app role exists)."""
    settings = get_settings()
    if settings.db.url is not None:
        return settings.db.url.get_secret_value()
    endpoints = current_endpoints()
    return endpoints.app_database_url or endpoints.database_url


EXPLICIT_STORE_VARS = ("MA_STORAGE_ROOT", "MA_DB_URL", "DATABASE_URL")
"""Set in the environment, any of these means: the operator names the store, run here."""


def file_store_target(environ: Mapping[str, str] | None = None) -> FileStoreTarget:
    """Where retention and the outbox tools must run: where the files are.

    Here when the operator named the store or the database explicitly (an explicit wrong
    root is then refused by the library against the database), or when no container stack
    is recorded; otherwise inside the recorded stack's API container, the only place that
    mounts the ``media-storage`` volume. A recorded stack whose API container is not running
    is a :class:`StackNotRunningError` (one line: start it), never a silent local run.
    """
    env = os.environ if environ is None else environ
    explicit = [name for name in EXPLICIT_STORE_VARS if env.get(name, "").strip()]
    if explicit:
        return LocalTarget(f"{', '.join(explicit)} set in the environment")
    kind = stack_engine.recorded_engine()
    if kind not in {Engine.COMPOSE, Engine.PULUMI}:
        return LocalTarget(f"no container stack recorded in {stack_engine.STATE_FILE}")
    try:
        config = stack_engine.recorded_config() or config_from_env(env)
    except ConfigError as exc:
        raise OperatorError(str(exc)) from None
    name = config.api_name
    try:
        state = docker_host.container_state(name)
    except (DockerException, OSError) as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise StackNotRunningError(
            f"a {kind} stack is recorded but no Docker engine answers ({detail}): "
            "start it with `invoke up`"
        ) from None
    if state.status != "running":
        raise StackNotRunningError(
            f"the API container {name} of the {kind} stack is {state.status}, and the media "
            "volume is only mounted there: start it with `invoke up`"
        )
    return ContainerTarget(name)


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
        config = stack_engine.recorded_config() or config_from_env(env)
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


def up(*, engine: str | None, build: bool, log: Log, port: int = 0) -> StackEndpoints:
    """Start the stack; the embedded engine also gets a local API (on ``port``, default
    MA_API_PORT), whose port is checked before any server starts."""
    kind = stack_engine.choose_engine(engine)  # a probe: starts nothing
    settings = get_settings()
    if port and kind is not Engine.EMBEDDED:
        raise OperatorError(
            f"--port is for the embedded engine's local API; the {kind} stack publishes its "
            "API on MA_INFRA_API_HOST_PORT"
        )
    host, api_port = settings.api.host, port or settings.api.port
    if kind is Engine.EMBEDDED:
        local_api.check_can_start(host, api_port)
    endpoints = stack_engine.up(engine=kind, build=build, migrate=False, log=log)
    if endpoints.engine is Engine.EMBEDDED:
        stack_engine.record_local_api(f"http://{host}:{api_port}")  # verify expects it now
        env = {"MA_DB_URL": endpoints.app_database_url or endpoints.database_url}
        if endpoints.redis_url:
            env["MA_REDIS_URL"] = endpoints.redis_url
        api_url = local_api.start(env, host, api_port)
        log(f"local API pid {local_api.running_pid()} answers as ours on {api_url}")
        endpoints = dataclasses.replace(endpoints, api_url=api_url)
    return endpoints


def migrate(endpoints: StackEndpoints) -> UpgradeReport:
    return migrations.upgrade(endpoints.database_url)


def down(*, volumes: bool, log: Log) -> Engine:
    if local_api.stop():
        log("stopped the local API")
    return stack_engine.down(remove_volumes=volumes, log=log)


def verify(endpoints: StackEndpoints) -> list[CheckResult]:
    """Smoke checks for every engine, plus the testinfra container checks for containers.

    A local API the stack records must be running and answer as ours (its instance id) first:
    a :class:`local_api.LocalApiError` (one line, with the API log's cause) otherwise."""
    if endpoints.engine is Engine.EMBEDDED and endpoints.api_url is not None:
        local_api.confirm(endpoints.api_url)
    local_storage: Path | None = None
    app_database_url = None  # containers: verify_containers checks the API's own URL file
    if endpoints.engine is Engine.EMBEDDED:
        local_storage = get_settings().storage.root
        app_database_url = endpoints.app_database_url
    results = run_smoke(
        SmokeTarget(
            database_url=endpoints.database_url,
            redis_url=endpoints.redis_url,
            api_url=endpoints.api_url,
            storage_root=local_storage,
            app_database_url=app_database_url,
        )
    )
    if endpoints.engine in {Engine.COMPOSE, Engine.PULUMI}:
        results += run_checks()
    return results
