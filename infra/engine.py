"""Bring the stack up or down with the best engine this machine has.

1. ``pulumi``: the Pulumi CLI is installed and a stack is selected -> ``pulumi up``.
2. ``compose``: a Docker engine answers (``dockerd`` is started when installed but idle) ->
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
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import quote

from infra import compose_engine, docker_driver, docker_host, images
from infra.config import (
    ConfigError,
    StackConfig,
    config_from_env,
    config_from_source,
    pulumi_key,
    secrets_from_env,
    secrets_from_source,
)
from infra.stack import API_PORT, POSTGRES_PORT, REDIS_PORT, build_stack

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / ".data"
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
    """Where the running stack answers, from this host. ``api_url`` is None when no API
    container runs (embedded engine). Database/Redis URLs carry passwords: do not log them."""

    engine: Engine
    database_url: str
    redis_url: str | None
    api_url: str | None


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
    """A Docker engine answers (after starting an installed ``dockerd``)."""
    try:
        docker_host.ensure_dockerd()
    except docker_host.DockerUnavailable:
        return False
    return True


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
    if kind is Engine.PULUMI:
        endpoints = _pulumi_up(log)
        _save_state(kind, None)
        return endpoints
    config = config if config is not None else config_from_env(os.environ)
    config.validate()
    if kind is Engine.EMBEDDED:
        endpoints = embedded_up()
        _save_state(kind, config)
        return endpoints
    secrets = dict(secrets) if secrets is not None else secrets_from_env(os.environ)
    endpoints = _compose_up(config, secrets, build, migrate, timeout_s, log)
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
        _pulumi(["destroy", "--yes", "--skip-preview"], log)
    elif kind is Engine.COMPOSE:
        docker_host.ensure_dockerd()
        spec = build_stack(config)
        if compose_runner() == "cli":
            compose_engine.down(spec, remove_volumes=remove_volumes, log=log)
        else:
            docker_driver.down(spec, remove_volumes=remove_volumes, log=log)
    else:
        _embedded_down()
    STATE_FILE.unlink(missing_ok=True)
    return kind


def migrate_in_container(config: StackConfig, timeout_s: float = 120) -> str:
    """``alembic upgrade head`` inside the API container (its env has DATABASE_URL)."""
    deadline = time.monotonic() + timeout_s
    while docker_host.container_state(config.api_name).status != "running":
        if time.monotonic() > deadline:
            raise EngineError(f"{config.api_name} is not running: cannot migrate")
        time.sleep(1)
    code, output = docker_host.exec_run(config.api_name, ["alembic", "upgrade", "head"])
    if code != 0:
        raise EngineError(f"migration in {config.api_name} failed ({code}):\n{output[-3000:]}")
    return output


def compose_endpoints(config: StackConfig, secrets: Mapping[str, str]) -> StackEndpoints:
    """Endpoints of a running container stack: servers by their address on the network
    (reachable from the Docker host, nothing published), the API by its published port."""
    pg_ip = docker_host.container_ip(config.postgres_host, config.network_name)
    redis_ip = docker_host.container_ip(config.redis_host, config.network_name)
    api = build_stack(config).service(config.api_name)
    port = next(p for p in api.ports if p.container_port == API_PORT)
    host = "127.0.0.1" if port.host_ip in {"0.0.0.0", ""} else port.host_ip
    return StackEndpoints(
        engine=Engine.COMPOSE,
        database_url=_database_url(config, secrets["postgres_password"], pg_ip),
        redis_url=_redis_url(config, secrets["redis_password"], redis_ip),
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
    docker_host.ensure_dockerd()
    spec = build_stack(config)
    if config.mode == "external":
        _check_external(config)
    if build:
        images.seed_base_image(config.base_image, log=log)
        images.build_all(spec, log=log)
    if compose_runner() == "cli":
        compose_engine.up(spec, secrets, log=log)
    else:
        log("no compose CLI: applying the spec through the Docker API")
        docker_driver.up(spec, secrets, timeout_s=timeout_s, log=log)
    servers = [config.postgres_host, config.redis_host]
    docker_host.wait_healthy(servers, timeout_s=timeout_s)
    if migrate:
        log("migrating: alembic upgrade head (in the API container)")
        migrate_in_container(config)
    docker_host.wait_healthy([config.api_name], timeout_s=timeout_s)
    return compose_endpoints(config, secrets)


def _check_external(config: StackConfig) -> None:
    if not docker_host.network_exists(config.network_name):
        raise EngineError(f"mode=external but network {config.network_name} does not exist")
    for name in (config.postgres_host, config.redis_host):
        if docker_host.container_state(name).status == "missing":
            raise EngineError(f"mode=external but container {name} does not exist")


def _database_url(config: StackConfig, password: str, host: str) -> str:
    user, database = quote(config.postgres_user, safe=""), quote(config.postgres_db, safe="")
    return (
        f"postgresql+psycopg://{user}:{quote(password, safe='')}@{host}:{POSTGRES_PORT}/{database}"
    )


def _redis_url(config: StackConfig, password: str, host: str) -> str:
    return f"redis://:{quote(password, safe='')}@{host}:{REDIS_PORT}/{config.redis_db}"


def embedded_up() -> StackEndpoints:
    """pgserver PostgreSQL and a loopback redis-server under the settings' data dir, exactly
    as the app's own bootstrap starts them (Unix socket / loopback only, so no passwords)."""
    from app_patch.embedded import EmbeddedRedis, start_embedded_postgres
    from app_patch.settings import get_settings

    data_dir = get_settings().data_dir
    postgres = start_embedded_postgres(data_dir)
    redis_url = EmbeddedRedis(data_dir / "redis").start() if EmbeddedRedis.available() else None
    return StackEndpoints(Engine.EMBEDDED, postgres.url, redis_url, None)


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
    secrets = secrets_from_source(values.get, pulumi_key)
    endpoints = compose_endpoints(config, secrets)
    return StackEndpoints(
        Engine.PULUMI, endpoints.database_url, endpoints.redis_url, endpoints.api_url
    )


def recorded_engine() -> Engine | None:
    """The engine the last ``up`` used, when it is recorded."""
    engine = _load_state().get("engine")
    return Engine(engine) if engine else None


def recorded_config() -> StackConfig | None:
    """The config the last ``up`` used, when it is recorded."""
    state = _load_state()
    return StackConfig(**state["config"]) if state.get("config") else None


def _save_state(kind: Engine, config: StackConfig | None) -> None:
    STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
    state = {"engine": str(kind), "config": asdict(config) if config is not None else None}
    STATE_FILE.write_text(json.dumps(state, indent=2), encoding="utf-8")


def _load_state() -> dict[str, Any]:
    try:
        loaded: dict[str, Any] = json.loads(STATE_FILE.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return loaded
