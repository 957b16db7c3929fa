"""Bring the stack up or down with the best engine this machine has.

1. ``pulumi``: the Pulumi CLI is installed and a stack is selected -> ``pulumi up``.
2. ``compose``: a Docker engine answers at ``DOCKER_HOST`` or the default socket (only
   probed: tasks never start ``dockerd``, ``scripts/bootstrap`` does) ->
   images built locally, the rendered compose file started by the compose CLI, or the same
   spec applied through the Docker API when no compose CLI is installed
   (``MA_INFRA_COMPOSE_RUNNER=cli|docker-py`` forces one).
3. ``embedded``: neither -> the embedded PostgreSQL (pgserver) and a local ``redis-server``
   (no containers, no API process: the caller serves the API itself).

``up`` records what it started in ``.data/infra-stack.json`` (``MA_INFRA_STATE_FILE`` overrides
the path) so ``down`` stops the same thing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import quote

from infra import compose, compose_engine, docker_driver, docker_host, images
from infra.config import (
    DATA_DIR,
    ConfigError,
    StackConfig,
    config_from_env,
    config_from_source,
    pulumi_key,
    secrets_for,
    secrets_from_env,
    secrets_from_source,
)
from infra.stack import API_PORT, POSTGRES_PORT, REDIS_PORT, build_stack

REPO_ROOT = Path(__file__).resolve().parent.parent
# MA_INFRA_STATE_FILE points the tasks at another record (a test stack, a second checkout).
STATE_FILE = Path(os.environ.get("MA_INFRA_STATE_FILE") or DATA_DIR / "infra-stack.json")

Log = Callable[[str], None]


class Engine(StrEnum):
    PULUMI = "pulumi"
    COMPOSE = "compose"
    EMBEDDED = "embedded"


class EngineError(RuntimeError):
    """The chosen engine could not bring the stack up or down."""


@dataclass(frozen=True)
class StackEndpoints:
    """Where the running stack answers, from this host. ``database_url`` is the schema
    owner's (migrations, schema checks), ``app_database_url`` the API's role (None when the
    engine has no separate one), ``redis_url`` the API's Redis user. ``api_url`` is None when
    no API runs. The URLs carry passwords: do not log them."""

    engine: Engine
    database_url: str
    redis_url: str | None
    api_url: str | None
    app_database_url: str | None = None


def _quiet(line: str) -> None:
    return None


def pulumi_stack_selected() -> bool:
    """The Pulumi CLI exists and ``pulumi stack`` has a current stack in this project."""
    pulumi = shutil.which("pulumi")
    if pulumi is None:
        return False
    try:
        probe = subprocess.run(
            [pulumi, "stack", "--show-name", "--non-interactive"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0 and bool(probe.stdout.strip())


def docker_usable() -> bool:
    """A Docker engine answers (a probe: nothing is started)."""
    return docker_host.daemon_answers()


def compose_runner() -> str:
    """``cli`` (docker compose / docker-compose) when installed, else ``docker-py``."""
    forced = os.environ.get("MA_INFRA_COMPOSE_RUNNER", "").strip()
    if forced:
        if forced not in {"cli", "docker-py"}:
            raise ConfigError(
                "MA_INFRA_COMPOSE_RUNNER", f"must be cli or docker-py, not {forced!r}"
            )
        return forced
    return "cli" if compose_engine.compose_command() is not None else "docker-py"


def choose_engine(prefer: Engine | str | None = None) -> Engine:
    """``prefer`` (or ``MA_INFRA_ENGINE``) forces an engine; otherwise the first that fits."""
    forced = prefer or os.environ.get("MA_INFRA_ENGINE") or None
    if forced:
        try:
            return Engine(str(forced))
        except ValueError:
            raise ConfigError(
                "MA_INFRA_ENGINE", f"must be pulumi, compose or embedded, not {forced!r}"
            ) from None
    if pulumi_stack_selected():
        return Engine.PULUMI
    if docker_usable():
        return Engine.COMPOSE
    return Engine.EMBEDDED


def up(
    config: StackConfig | None = None,
    secrets: Mapping[str, str] | None = None,
    *,
    engine: Engine | str | None = None,
    build: bool = True,
    migrate: bool = True,
    timeout_s: float = 300,
    log: Log = _quiet,
) -> StackEndpoints:
    """Start the stack; config and passwords default to the ``MA_INFRA_*`` environment."""
    kind = choose_engine(engine)
    log(f"engine: {kind}")
    if kind is Engine.COMPOSE:
        docker_host.require_engine()  # first: no engine makes every other problem moot
    if kind is Engine.PULUMI:
        endpoints = _pulumi_up(log)
        _save_state(kind, None)
        return endpoints
    config = config if config is not None else config_from_env(os.environ)
    config.validate()
    if kind is Engine.EMBEDDED:
        from app_patch.settings import get_settings

        endpoints = embedded_up()
        data_dir = str(get_settings().data_dir.resolve())  # verify finds it without MA_DATA_DIR
        _save_state(kind, config, {"redis_url": endpoints.redis_url, "data_dir": data_dir})
        return endpoints
    if secrets is None:
        secrets = secrets_from_env(os.environ, secrets_for(config.mode))
    endpoints = _compose_up(config, dict(secrets), build, migrate, timeout_s, log)
    _save_state(kind, config)
    return endpoints


def down(
    *,
    remove_volumes: bool = False,
    engine: Engine | str | None = None,
    config: StackConfig | None = None,
    log: Log = _quiet,
) -> Engine:
    """Stop what ``up`` started (recorded engine and config, else the one
    :func:`choose_engine` picks and the environment). Volumes (data) are kept unless
    ``remove_volumes``."""
    state = _load_state()
    kind = Engine(engine) if engine else Engine(state.get("engine") or choose_engine())
    config = config or recorded_config() or config_from_env(os.environ)
    log(f"engine: {kind}")
    if kind is Engine.PULUMI:
        _pulumi(["destroy", "--yes", "--skip-preview"], log)  # volumes: retain_on_delete
    elif kind is Engine.COMPOSE:
        docker_host.require_engine()
        # Networks and volumes that exist but are not ours are left alone, by both runners.
        spec = compose_engine.adopt_existing(build_stack(config), log)
        if compose_runner() == "cli":
            compose_engine.down(spec, remove_volumes=remove_volumes, log=log)
        else:
            docker_driver.down(spec, remove_volumes=remove_volumes, log=log)
    else:
        _embedded_down()
    STATE_FILE.unlink(missing_ok=True)
    return kind


@dataclass(frozen=True)
class DownPlan:
    """What ``down`` would act on: ``deletable`` are the stack's own volumes that exist (what
    ``remove_volumes`` deletes), ``kept`` the existing ones it never deletes (external or
    adopted). Only the compose engine deletes volumes: Pulumi retains them on destroy, the
    embedded engine has none."""

    engine: Engine
    deletable: tuple[str, ...]
    kept: tuple[str, ...]


def down_plan(*, engine: Engine | str | None = None, config: StackConfig | None = None) -> DownPlan:
    """The :class:`DownPlan` for the stack ``down`` would stop (same choice of engine and
    config); changes nothing."""
    kind = Engine(engine) if engine else Engine(_load_state().get("engine") or choose_engine())
    if kind is Engine.EMBEDDED:
        return DownPlan(kind, (), ())
    config = config or recorded_config() or config_from_env(os.environ)
    docker_host.require_engine()
    spec = build_stack(config)
    _, existing = compose_engine.existing_resources(spec)
    adopted = compose.adopt(spec, {}, existing)
    present = [volume for volume in adopted.volumes if volume.name in existing]
    if kind is Engine.PULUMI:
        return DownPlan(kind, (), tuple(volume.name for volume in present))
    return DownPlan(
        kind,
        tuple(volume.name for volume in present if not volume.external),
        tuple(volume.name for volume in present if volume.external),
    )


def migrate_from_host(endpoints: StackEndpoints) -> str:
    """``alembic upgrade head`` from here, as the schema owner. Not in the API container:
    that one holds only the application role's URL, which may not create or alter tables."""
    from app_patch import migrate as migrations

    report = migrations.upgrade(endpoints.database_url)
    return f"{report.from_revision or 'base'} -> {report.to_revision}"


def ensure_roles(config: StackConfig, secrets: Mapping[str, str]) -> None:
    """Managed mode: create or re-assert the owner and app roles (passwords from the current
    secrets) as the bootstrap superuser. The image's initdb script made them on the first
    start; running this on every ``up`` applies a rotated password, and gives roles to a
    database an earlier version created without them (adopting its tables)."""
    from app_patch.db_roles import ensure_roles as ensure

    pg_ip = docker_host.container_ip(config.postgres_host, config.network_name)
    ensure(
        _database_url(config, config.postgres_user, secrets["postgres_password"], pg_ip),
        database=config.postgres_db,
        owner=config.postgres_owner_user,
        owner_password=secrets["postgres_owner_password"],
        app=config.postgres_app_user,
        app_password=secrets["postgres_app_password"],
    )


def compose_endpoints(
    config: StackConfig, secrets: Mapping[str, str], engine: Engine = Engine.COMPOSE
) -> StackEndpoints:
    """Endpoints of a running container stack: servers by their address on the network
    (reachable from the Docker host, nothing published), the API by its published port."""
    pg_ip = docker_host.container_ip(config.postgres_host, config.network_name)
    redis_ip = docker_host.container_ip(config.redis_host, config.network_name)
    api = build_stack(config).service(config.api_name)
    port = next(p for p in api.ports if p.container_port == API_PORT)
    host = "127.0.0.1" if port.host_ip in {"0.0.0.0", ""} else port.host_ip
    owner, app = config.postgres_owner_user, config.postgres_app_user
    return StackEndpoints(
        engine=engine,
        database_url=_database_url(config, owner, secrets["postgres_owner_password"], pg_ip),
        app_database_url=_database_url(config, app, secrets["postgres_app_password"], pg_ip),
        redis_url=redis_url(config, config.redis_app_user, secrets["redis_app_password"], redis_ip),
        api_url=f"http://{host}:{port.host_port}",
    )


def _compose_up(
    config: StackConfig,
    secrets: Mapping[str, str],
    build: bool,
    migrate: bool,
    timeout_s: float,
    log: Log,
) -> StackEndpoints:
    spec = build_stack(config)
    if config.mode == "external":
        _check_external(config)
    if build:
        images.seed_base_image(config.base_image, log=log)
        images.build_all(spec, log=log)
    # Roles first when PostgreSQL already runs: a rotated app password is in the database
    # before the API restarts with it. On a first start the image's initdb hook made them.
    roles_done = False
    if config.mode == "managed" and docker_host.container_state(config.postgres_host).healthy:
        _ensure_roles_logged(config, secrets, log)
        roles_done = True
    if compose_runner() == "cli":
        compose_engine.up(spec, secrets, log=log)
    else:
        log("no compose CLI: applying the spec through the Docker API")
        docker_driver.up(spec, secrets, timeout_s=timeout_s, log=log)
    servers = [config.postgres_host, config.redis_host]
    docker_host.wait_healthy(servers, timeout_s=timeout_s)
    if config.mode == "managed" and not roles_done:
        _ensure_roles_logged(config, secrets, log)
    endpoints = compose_endpoints(config, secrets)
    if migrate:
        log("migrating: alembic upgrade head (as the schema owner)")
        migrate_from_host(endpoints)
    docker_host.wait_healthy([config.api_name], timeout_s=timeout_s)
    return endpoints


def _ensure_roles_logged(config: StackConfig, secrets: Mapping[str, str], log: Log) -> None:
    log(f"roles: {config.postgres_owner_user} (owner), {config.postgres_app_user} (app)")
    ensure_roles(config, secrets)


def _check_external(config: StackConfig) -> None:
    if not docker_host.network_exists(config.network_name):
        raise EngineError(f"mode=external but network {config.network_name} does not exist")
    for name in (config.postgres_host, config.redis_host):
        if docker_host.container_state(name).status == "missing":
            raise EngineError(f"mode=external but container {name} does not exist")


def _database_url(config: StackConfig, role: str, password: str, host: str) -> str:
    user, database = quote(role, safe=""), quote(config.postgres_db, safe="")
    secret = quote(password, safe="")
    return f"postgresql+psycopg://{user}:{secret}@{host}:{POSTGRES_PORT}/{database}"


def redis_url(config: StackConfig, user: str, password: str, host: str) -> str:
    """A Redis URL for ``user`` (the app's or the admin's) at ``host``."""
    name, secret = quote(user, safe=""), quote(password, safe="")
    return f"redis://{name}:{secret}@{host}:{REDIS_PORT}/{config.redis_db}"


def embedded_up() -> StackEndpoints:
    """pgserver PostgreSQL (with its owner and app roles) and a loopback redis-server under
    the settings' data dir, exactly as the app's own bootstrap starts them (Unix socket /
    loopback only, so no passwords)."""
    from app_patch.embedded import EmbeddedRedis
    from app_patch.settings import get_settings
    from app_patch.target import embedded_urls

    settings = get_settings()
    urls = embedded_urls(settings)
    redis = None
    if EmbeddedRedis.available():
        redis = EmbeddedRedis(settings.data_dir / "redis").start()
    return StackEndpoints(Engine.EMBEDDED, urls.owner, redis, None, urls.app)


def embedded_attach() -> StackEndpoints | None:
    """The recorded embedded stack's endpoints when its PostgreSQL runs, else None. Starts
    nothing and changes nothing (for read-only tasks): the roles were made by ``up``. Redis
    and the local API are the ones ``up`` recorded, whether they still run or not (the checks
    tell)."""
    from app_patch.db_roles import EMBEDDED_APP, EMBEDDED_OWNER, role_url
    from app_patch.embedded import EMBEDDED_DB_NAME, socket_url

    state = _load_state()
    socket_dir = _running_postmaster_socket(embedded_data_dir() / "pg")
    if socket_dir is None:
        return None
    admin = socket_url(socket_dir, EMBEDDED_DB_NAME)
    return StackEndpoints(
        Engine.EMBEDDED,
        role_url(admin, EMBEDDED_OWNER, database=EMBEDDED_DB_NAME),
        state.get("redis_url"),
        recorded_local_api(),
        role_url(admin, EMBEDDED_APP, database=EMBEDDED_DB_NAME),
    )


def embedded_data_dir() -> Path:
    """The embedded servers' data dir the last ``up`` recorded, else the settings' one."""
    from app_patch.settings import get_settings

    recorded = _load_state().get("data_dir")
    return Path(recorded) if recorded else get_settings().data_dir


def _running_postmaster_socket(pgdata: Path) -> str | None:
    """The socket directory in ``postmaster.pid`` when that postmaster is alive."""
    try:
        lines = (pgdata / "postmaster.pid").read_text(encoding="utf-8").splitlines()
        pid = int(lines[0])
        socket_dir = lines[4].strip()
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return socket_dir or None


def _embedded_down() -> None:
    from app_patch.embedded import EmbeddedPostgres, EmbeddedRedis
    from app_patch.settings import get_settings

    data_dir = get_settings().data_dir
    EmbeddedRedis(data_dir / "redis").stop()
    if (data_dir / "pg" / "postmaster.pid").exists():
        server = EmbeddedPostgres(data_dir / "pg")
        server.start()  # attaches to the running server
        server.stop()


def _pulumi(args: list[str], log: Log, timeout_s: float = 1800) -> str:
    pulumi = shutil.which("pulumi")
    if pulumi is None:
        raise EngineError("the Pulumi CLI is not installed")
    command = [pulumi, *args, "--non-interactive"]
    log(" ".join(command))
    result = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if result.returncode != 0:
        raise EngineError(
            f"`pulumi {' '.join(args)}` failed:\n{(result.stdout + result.stderr)[-4000:]}"
        )
    return result.stdout


def _pulumi_up(log: Log) -> StackEndpoints:
    """``pulumi up``, then endpoints from the stack's own config (same loader as the program)."""
    _pulumi(["up", "--yes", "--skip-preview"], log)
    raw: dict[str, dict[str, Any]] = json.loads(
        _pulumi(["config", "--json", "--show-secrets"], log)
    )
    project = "media-analysis-kit"
    values = {key.split(":", 1)[1]: str(item.get("value", "")) for key, item in raw.items()
              if key.startswith(f"{project}:")}  # fmt: skip
    config = config_from_source(values.get, pulumi_key)
    secrets = secrets_from_source(values.get, pulumi_key, secrets_for(config.mode))
    if config.mode == "managed":
        ensure_roles(config, secrets)
    return compose_endpoints(config, secrets, Engine.PULUMI)


def recorded_engine() -> Engine | None:
    """The engine the last ``up`` used, when it is recorded."""
    engine = _load_state().get("engine")
    return Engine(engine) if engine else None


def record_local_api(url: str) -> None:
    """Note in the record that this stack has a local API at ``url`` (the embedded engine):
    from then on ``verify`` expects it, and fails when it is missing or not ours."""
    state = _load_state()
    state["local_api"] = url
    _write_state(state)


def recorded_local_api() -> str | None:
    """The local API's URL the last ``up`` recorded (embedded engine), when there is one."""
    url = _load_state().get("local_api")
    return str(url) if url else None


def recorded_config() -> StackConfig | None:
    """The config the last ``up`` used, when it is recorded."""
    state = _load_state()
    return StackConfig(**state["config"]) if state.get("config") else None


def _save_state(
    kind: Engine, config: StackConfig | None, extra: Mapping[str, Any] | None = None
) -> None:
    state = {"engine": str(kind), "config": asdict(config) if config is not None else None}
    _write_state({**state, **(extra or {})})


def _write_state(state: Mapping[str, Any]) -> None:
    STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
    STATE_FILE.write_text(json.dumps(state, indent=2), encoding="utf-8")


def _load_state() -> dict[str, Any]:
    try:
        loaded: dict[str, Any] = json.loads(STATE_FILE.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return loaded
