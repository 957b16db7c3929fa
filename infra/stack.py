"""Our stack as a spec: ``af-network``, three volumes, PostgreSQL, Redis and the API.

``managed`` mode declares the shared servers too; ``external`` mode references the existing
network and servers by name and declares only what belongs to the API (its container and the
``media-storage`` volume), so nothing of theirs is created or changed.
"""

from __future__ import annotations

from urllib.parse import quote

from infra.config import StackConfig
from infra.spec import (
    Build,
    DependencyCondition,
    Healthcheck,
    Limits,
    Network,
    NetworkAttachment,
    PortMapping,
    Secret,
    SecretEnv,
    Service,
    Stack,
    Volume,
    VolumeMount,
)

PROJECT = "media-analysis"
# In external mode the API runs as its own compose project, so compose never treats the shared
# servers (even ones an earlier managed deployment labelled) as its own or as orphans.
EXTERNAL_PROJECT = "media-analysis-app"
STORAGE_ROOT = "/opt/services/media-analysis/storage"
API_PORT = 8000
API_USER = "10001:10001"
POSTGRES_PORT = 5432
REDIS_PORT = 6379
PG_VOLUME = "pg-data"
REDIS_VOLUME = "redis-data"
STORAGE_VOLUME = "media-storage"
LABELS = {"io.media-analysis-kit.stack": PROJECT}

SECRETS = (
    Secret("postgres_password", "postgresPassword", "password of the PostgreSQL user"),
    Secret("redis_password", "redisPassword", "password Redis requires (requirepass)"),
)

_READY_PROBE = (
    "import sys, urllib.request; "
    f"r = urllib.request.urlopen('http://127.0.0.1:{API_PORT}/health/ready', timeout=4); "
    "sys.exit(0 if r.status == 200 else 1)"
)


def build_stack(config: StackConfig) -> Stack:
    """The spec for ``config`` (validated first)."""
    config.validate()
    managed = config.mode == "managed"
    network = Network(config.network_name, external=not managed, labels=LABELS if managed else {})
    volumes = [Volume(STORAGE_VOLUME, labels=LABELS)]
    services = [api_service(config)]
    if managed:
        volumes = [Volume(PG_VOLUME, labels=LABELS), Volume(REDIS_VOLUME, labels=LABELS), *volumes]
        services = [postgres_service(config), redis_service(config), *services]
    return Stack(
        project=PROJECT if managed else EXTERNAL_PROJECT,
        networks=(network,),
        volumes=tuple(volumes),
        services=tuple(services),
        secrets=SECRETS,
        referenced_services=() if managed else (config.postgres_host, config.redis_host),
    )


def postgres_service(config: StackConfig) -> Service:
    ports: tuple[PortMapping, ...] = ()
    if config.postgres_host_port:
        ports = (PortMapping(POSTGRES_PORT, config.postgres_host_port),)
    return Service(
        name=config.postgres_host,
        image=config.postgres_image,
        build=_local_build("infra/images/postgres", config),
        env={"POSTGRES_USER": config.postgres_user, "POSTGRES_DB": config.postgres_db},
        secret_env={"POSTGRES_PASSWORD": SecretEnv("{postgres_password}")},
        networks=(NetworkAttachment(config.network_name, (config.postgres_host,)),),
        volumes=(VolumeMount(PG_VOLUME, "/var/lib/postgresql/data"),),
        ports=ports,
        healthcheck=Healthcheck(
            test=(
                "CMD",
                "pg_isready",
                "-h",
                "127.0.0.1",
                "-p",
                str(POSTGRES_PORT),
                "-U",
                config.postgres_user,
                "-d",
                config.postgres_db,
            ),
            interval_s=5,
            timeout_s=5,
            retries=12,
            start_period_s=20,
        ),
        limits=Limits(memory_mb=config.postgres_memory_mb),
        labels=LABELS,
    )


def redis_service(config: StackConfig) -> Service:
    return Service(
        name=config.redis_host,
        image=config.redis_image,
        build=_local_build("infra/images/redis", config),
        secret_env={"REDIS_PASSWORD": SecretEnv("{redis_password}")},
        networks=(NetworkAttachment(config.network_name, (config.redis_host,)),),
        volumes=(VolumeMount(REDIS_VOLUME, "/data"),),
        healthcheck=Healthcheck(
            test=(
                "CMD-SHELL",
                'REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli -h 127.0.0.1 ping | grep -q PONG',
            ),
            interval_s=5,
            timeout_s=3,
            retries=12,
            start_period_s=5,
        ),
        limits=Limits(memory_mb=config.redis_memory_mb),
        labels=LABELS,
    )


def api_service(config: StackConfig) -> Service:
    user = quote(config.postgres_user, safe="")
    database = quote(config.postgres_db, safe="")
    depends_on: dict[str, DependencyCondition] = {}
    if config.mode == "managed":
        depends_on = {config.postgres_host: "service_healthy", config.redis_host: "service_healthy"}
    return Service(
        name=config.api_name,
        image=config.api_image,
        build=Build(".", "infra/images/api/Dockerfile", {"BASE_IMAGE": config.base_image}),
        env={
            "MA_STORAGE_ROOT": STORAGE_ROOT,
            "MA_API_LOG_JSON": "true" if config.api_log_json else "false",
        },
        secret_env={
            "DATABASE_URL": SecretEnv(
                f"postgresql+psycopg://{user}:{{postgres_password}}@{config.postgres_host}"
                f":{POSTGRES_PORT}/{database}",
                url_quote=True,
            ),
            "REDIS_URL": SecretEnv(
                f"redis://:{{redis_password}}@{config.redis_host}:{REDIS_PORT}/{config.redis_db}",
                url_quote=True,
            ),
        },
        networks=(NetworkAttachment(config.network_name, (config.api_name,)),),
        volumes=(VolumeMount(STORAGE_VOLUME, STORAGE_ROOT),),
        ports=(PortMapping(API_PORT, config.api_host_port, config.api_host_ip),),
        healthcheck=Healthcheck(
            test=("CMD", "python3", "-c", _READY_PROBE),
            interval_s=5,
            timeout_s=5,
            retries=12,
            start_period_s=20,
        ),
        depends_on=depends_on,
        user=API_USER,
        limits=Limits(memory_mb=config.api_memory_mb, cpus=config.api_cpus),
        labels=LABELS,
    )


def _local_build(context: str, config: StackConfig) -> Build | None:
    if not config.build_local_images:
        return None
    return Build(context, "Dockerfile", {"BASE_IMAGE": config.base_image})
