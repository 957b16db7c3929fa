"""What the two container engines (compose, Pulumi) share: who owns a container, where the
running stack answers, and the database roles of a managed stack."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

from docker.errors import DockerException, NotFound

from infra import docker_host
from infra.config import ConfigError, StackConfig
from infra.engines.base import StackEndpoints
from infra.engines.kinds import EngineError, EngineKind
from infra.engines.record import OWNER_LABEL, StackRecord
from infra.stack import API_PORT, POSTGRES_PORT, REDIS_PORT, build_stack


@dataclass(frozen=True)
class FoundContainer:
    name: str
    owner: str | None  # its OWNER_LABEL, None when it has none
    status: str


def find_containers(names: Iterable[str]) -> list[FoundContainer]:
    """The containers with these names that exist, with their owner label and status."""
    found: list[FoundContainer] = []
    for name in names:
        try:
            attrs = docker_host.inspect(name)
        except NotFound:
            continue
        labels = (attrs.get("Config") or {}).get("Labels") or {}
        status = str((attrs.get("State") or {}).get("Status", "unknown"))
        found.append(FoundContainer(name, labels.get(OWNER_LABEL), status))
    return found


def describe(found: Iterable[FoundContainer]) -> str:
    """``af-postgres-1 (owner checkout:1a2b…), media-analysis-api (no owner label)``."""
    return ", ".join(
        f"{c.name} ({'owner ' + c.owner if c.owner else 'no owner label'})" for c in found
    )


def managed_names(config: StackConfig) -> list[str]:
    """The containers a stack with ``config`` creates (external mode: only the API)."""
    return [service.name for service in build_stack(config).services]


def require_owned(record: StackRecord, action: str) -> list[FoundContainer]:
    """The recorded stack's containers that exist, after proving each is ours: its owner label
    is the record's owner (a record older than owners accepts unlabelled ones). Otherwise an
    :class:`EngineError` naming what was found, and ``action`` is not done."""
    if record.config is None:
        raise EngineError(f"the stack record has no config: nothing to {action}")
    found = find_containers(managed_names(record.config))
    foreign = [c for c in found if c.owner != record.owner]
    if foreign:
        raise EngineError(
            f"refusing to {action}: {describe(foreign)} not started by this checkout "
            f"(it is {record.owner or 'unlabelled'}): another checkout or stack owns them"
        )
    return found


def require_free_or_owned(config: StackConfig, owner: str, legacy_ok: bool) -> None:
    """Before ``up``: every container the stack would create is absent or already ours
    (``legacy_ok``: this checkout's record predates owners, so unlabelled ones are ours)."""
    found = find_containers(managed_names(config))
    foreign = [c for c in found if c.owner != owner and not (legacy_ok and c.owner is None)]
    if foreign:
        raise EngineError(
            f"refusing to start: {describe(foreign)} already exist and are not this "
            f"checkout's ({owner}); stop them from the checkout that started them, or use "
            "MA_INFRA_MODE=external to share running servers"
        )


def endpoints(
    config: StackConfig, passwords: Mapping[str, str], engine: EngineKind
) -> StackEndpoints:
    """Endpoints of a running container stack: the servers by their address on the network
    (reachable from the Docker host, nothing published), the API by the port its proxy
    publishes."""
    try:
        pg_ip = docker_host.container_ip(config.postgres_host, config.network_name)
        redis_ip = docker_host.container_ip(config.redis_host, config.network_name)
    except (DockerException, LookupError) as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EngineError(f"the {engine} stack is not running ({detail}): run invoke up") from None
    proxy = build_stack(config).service(config.proxy_name)  # publishes the API's port
    port = next(p for p in proxy.ports if p.container_port == API_PORT)
    host = "127.0.0.1" if port.host_ip in {"0.0.0.0", ""} else port.host_ip
    return endpoints_at(
        config, passwords, engine, pg_ip, redis_ip, f"http://{host}:{port.host_port}"
    )


def endpoints_at(
    config: StackConfig,
    passwords: Mapping[str, str],
    engine: EngineKind,
    postgres_address: str,
    redis_address: str,
    api_url: str,
) -> StackEndpoints:
    """The endpoints of servers found at these addresses (the owner's and the app's database
    URLs, the app's Redis URL); a missing password is a :class:`ConfigError`."""
    try:
        owner_password = passwords["postgres_owner_password"]
        app_password = passwords["postgres_app_password"]
        redis_password = passwords["redis_app_password"]
    except KeyError as exc:
        raise ConfigError(str(exc.args[0]), "missing: run invoke secrets") from None
    owner, app = config.postgres_owner_user, config.postgres_app_user
    return StackEndpoints(
        engine=engine,
        database_url=database_url(config, owner, owner_password, postgres_address),
        app_database_url=database_url(config, app, app_password, postgres_address),
        redis_url=redis_url(config, config.redis_app_user, redis_password, redis_address),
        api_url=api_url,
    )


def ensure_roles(
    config: StackConfig, passwords: Mapping[str, str], postgres_address: str | None = None
) -> None:
    """Managed mode: create or re-assert the owner and app roles (passwords from the current
    secrets) as the bootstrap superuser. The image's initdb script made them on the first
    start; running this on every ``up`` applies a rotated password, and gives roles to a
    database an earlier version created without them (adopting its tables). The server is
    found at ``postgres_address``, else by its container's address on the network."""
    from app_patch.db_roles import ensure_roles as ensure

    pg_ip = postgres_address or docker_host.container_ip(config.postgres_host, config.network_name)
    ensure(
        database_url(config, config.postgres_user, passwords["postgres_password"], pg_ip),
        database=config.postgres_db,
        owner=config.postgres_owner_user,
        owner_password=passwords["postgres_owner_password"],
        app=config.postgres_app_user,
        app_password=passwords["postgres_app_password"],
    )


def check_external(config: StackConfig) -> None:
    """External mode needs the shared network and servers to exist already."""
    if not docker_host.network_exists(config.network_name):
        raise EngineError(f"mode=external but network {config.network_name} does not exist")
    for name in (config.postgres_host, config.redis_host):
        if docker_host.container_state(name).status == "missing":
            raise EngineError(f"mode=external but container {name} does not exist")


def refuse_managed_to_external(record: StackRecord | None, config: StackConfig) -> None:
    """A stack that manages its servers cannot become external in place: the switch would
    remove the servers it created. One line on how to hand them over instead."""
    if record is None or record.config is None or config.mode != "external":
        return
    if record.config.mode != "managed":
        return
    servers = [
        c
        for c in find_containers([record.config.postgres_host, record.config.redis_host])
        if c.owner == record.owner
    ]
    if servers:
        names = ", ".join(c.name for c in servers)
        raise EngineError(
            f"refusing to switch to mode=external: this checkout's stack manages {names} "
            "(mode=managed) and the switch would remove them; to hand them over, run "
            "`invoke down` (volumes kept), start the servers outside this kit on the same "
            "volumes, then `invoke up` with MA_INFRA_MODE=external"
        )


def database_url(config: StackConfig, role: str, password: str, host: str) -> str:
    user, database = quote(role, safe=""), quote(config.postgres_db, safe="")
    secret = quote(password, safe="")
    return f"postgresql+psycopg://{user}:{secret}@{host}:{POSTGRES_PORT}/{database}"


def redis_url(config: StackConfig, user: str, password: str, host: str) -> str:
    """A Redis URL for ``user`` (the app's or the admin's) at ``host``."""
    name, secret = quote(user, safe=""), quote(password, safe="")
    return f"redis://{name}:{secret}@{host}:{REDIS_PORT}/{config.redis_db}"
