"""The services, one builder each: PostgreSQL and Redis (a managed stack's shared servers),
and what every stack declares for the API: its replicas, the proxy in front of them, and
Prometheus when monitoring is on."""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import quote

from app_patch.db_roles import init_sql
from infra.config import StackConfig
from infra.redis_acl import admin_rules, app_rules, maxmemory_bytes
from infra.spec import (
    Build,
    DependencyCondition,
    Deploy,
    Hardening,
    Healthcheck,
    Limits,
    NetworkAttachment,
    PortMapping,
    SecretFile,
    SecretTemplate,
    Service,
    VolumeMount,
)
from infra.stack.layout import (
    API_POOL_BUDGET,
    API_PORT,
    API_READY_PROBE,
    API_TMPFS,
    API_UID,
    API_USER,
    LABELS,
    PG_VOLUME,
    POSTGRES_PORT,
    PROMETHEUS_PORT,
    PROMETHEUS_UID,
    PROMETHEUS_VOLUME,
    PROXY_HEALTH_PROBE,
    PROXY_TMPFS,
    REDIS_PORT,
    REDIS_VOLUME,
    SERVER_CAPS,
    STORAGE_CONSTRAINT,
    STORAGE_ROOT,
    STORAGE_VOLUME,
    api_replica_names,
    http_probe,
    proxy_backend,
    secret_path,
)


def postgres_service(config: StackConfig) -> Service:
    ports: tuple[PortMapping, ...] = ()
    if config.postgres_host_port:
        ports = (PortMapping(POSTGRES_PORT, config.postgres_host_port),)
    return _server(
        config,
        Service(
            name=config.postgres_host,
            image=config.postgres_image,
            build=_local_build(
                "infra/images/postgres",
                config,
                # The initdb hook's SQL: the same grants ensure_roles applies, rendered once here.
                ROLES_SQL=init_sql(
                    config.postgres_db, config.postgres_owner_user, config.postgres_app_user
                ),
            ),
            env={
                "POSTGRES_USER": config.postgres_user,
                "POSTGRES_DB": config.postgres_db,
                "POSTGRES_PASSWORD_FILE": secret_path("postgres_password"),
                "POSTGRES_OWNER_PASSWORD_FILE": secret_path("postgres_owner_password"),
                "POSTGRES_APP_PASSWORD_FILE": secret_path("postgres_app_password"),
            },
            # Read at initdb only: later the roles' passwords change in the database
            # (ensure_roles), so a rotation never restarts PostgreSQL.
            secret_files=(
                _password_file("postgres_password", read_at_start=False),
                _password_file("postgres_owner_password", read_at_start=False),
                _password_file("postgres_app_password", read_at_start=False),
            ),
            volumes=(VolumeMount(PG_VOLUME, "/var/lib/postgresql/data"),),
            ports=ports,
            healthcheck=Healthcheck(
                (
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
                start_period_s=20,
            ),
            limits=Limits(memory_mb=config.postgres_memory_mb, pids=config.postgres_pids_limit),
        ),
    )


def redis_service(config: StackConfig) -> Service:
    return _server(
        config,
        Service(
            name=config.redis_host,
            image=config.redis_image,
            build=_local_build("infra/images/redis", config),
            env={
                "REDIS_ADMIN_USER": config.redis_admin_user,
                "REDIS_ADMIN_RULES": admin_rules(),
                "REDIS_PASSWORD_FILE": secret_path("redis_password"),
                "REDIS_APP_USER": config.redis_app_user,
                "REDIS_APP_RULES": app_rules(),
                "REDIS_APP_PASSWORD_FILE": secret_path("redis_app_password"),
                "REDIS_MAXMEMORY": str(
                    maxmemory_bytes(config.redis_memory_mb, config.redis_maxmemory_percent)
                ),
            },
            secret_files=(_password_file("redis_password"), _password_file("redis_app_password")),
            volumes=(VolumeMount(REDIS_VOLUME, "/data"),),
            healthcheck=Healthcheck(
                ("CMD-SHELL", redis_admin_cli(config, "ping") + " | grep -q PONG"),
                timeout_s=3,
                start_period_s=5,
            ),
            limits=Limits(memory_mb=config.redis_memory_mb, pids=config.redis_pids_limit),
        ),
    )


def redis_admin_cli(config: StackConfig, command: str) -> str:
    """A shell command running ``redis-cli <command>`` as the admin user inside the Redis
    container (password from its secret file, through REDISCLI_AUTH: never on a command line)."""
    return (
        f'REDISCLI_AUTH="$(cat {secret_path("redis_password")})" redis-cli --no-auth-warning'
        f" --user {config.redis_admin_user} -h 127.0.0.1 {command}"
    )


def api_replicas(config: StackConfig) -> list[Service]:
    """The API's replicas: the same container under each name of :func:`api_replica_names`,
    all answering the DNS name ``api_name`` on the network (what the proxy resolves). On a
    swarm, one service with ``apiReplicas`` tasks, rolled start-first."""
    first = api_service(config)
    if config.target == "swarm":
        deploy = Deploy(
            replicas=config.api_replicas,
            constraints=(STORAGE_CONSTRAINT,),  # media-storage is a local volume
            order="start-first",
            monitor_s=5,
        )
        return [replace(first, deploy=deploy)]
    return [replace(first, name=name) for name in api_replica_names(config)]


def api_service(config: StackConfig) -> Service:
    user = quote(config.postgres_app_user, safe="")
    database = quote(config.postgres_db, safe="")
    redis_user = quote(config.redis_app_user, safe="")
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
            "MA_DB_URL_FILE": secret_path("db_url"),
            "MA_REDIS_URL_FILE": secret_path("redis_url"),
            "MA_API_KEYS_FILE": secret_path("api_key_digest"),
            # uvicorn reads it itself: whose X-Forwarded-* headers it believes.
            "FORWARDED_ALLOW_IPS": config.forwarded_allow_ips,
            # One process's default pool is 20 + 30 connections; the replicas share one budget
            # of that size, so N replicas never exceed PostgreSQL's default max_connections.
            "MA_DB_POOL_SIZE": str(max(2, API_POOL_BUDGET[0] // config.api_replicas)),
            "MA_DB_MAX_OVERFLOW": str(max(2, API_POOL_BUDGET[1] // config.api_replicas)),
        },
        secret_files=tuple(
            SecretFile(name, template, uid=API_UID, gid=API_UID)
            for name, template in (
                (
                    "db_url",
                    SecretTemplate(
                        f"postgresql+psycopg://{user}:{{postgres_app_password}}"
                        f"@{config.postgres_host}:{POSTGRES_PORT}/{database}",
                        url_quote=True,
                    ),
                ),
                (
                    "redis_url",
                    SecretTemplate(
                        f"redis://{redis_user}:{{redis_app_password}}@{config.redis_host}"
                        f":{REDIS_PORT}/{config.redis_db}",
                        url_quote=True,
                    ),
                ),
                ("api_key_digest", SecretTemplate("{api_key}", sha256=True)),
            )
        ),
        networks=(NetworkAttachment(config.network_name, (config.api_name,)),),
        volumes=(VolumeMount(STORAGE_VOLUME, STORAGE_ROOT),),
        healthcheck=Healthcheck(("CMD", "python3", "-c", API_READY_PROBE), start_period_s=20),
        depends_on=depends_on,
        user=API_USER,
        limits=Limits(
            memory_mb=config.api_memory_mb, cpus=config.api_cpus, pids=config.api_pids_limit
        ),
        hardening=Hardening(read_only=True, tmpfs=API_TMPFS),
        labels=LABELS,
    )


def proxy_service(config: StackConfig) -> Service:
    """HAProxy in front of the API replicas (infra/images/proxy): publishes the API's port,
    resolves ``api_name`` through Docker's DNS, checks every replica each second, and bounds
    slow and idle clients (``proxyRequestTimeoutS``, ``proxyClientTimeoutS``,
    ``proxyMaxConnections``)."""
    return Service(
        name=config.proxy_name,
        image=config.proxy_image,
        build=Build("infra/images/proxy", "Dockerfile", {"BASE_IMAGE": config.base_image}),
        env={
            "PROXY_BACKEND": proxy_backend(config),
            "PROXY_MAXCONN": str(config.proxy_max_connections),
            "PROXY_REQUEST_TIMEOUT": f"{config.proxy_request_timeout_s}s",
            "PROXY_CLIENT_TIMEOUT": f"{config.proxy_client_timeout_s}s",
            "PROXY_SERVER_TIMEOUT": "300s",
        },
        networks=(NetworkAttachment(config.network_name, (config.proxy_name,)),),
        ports=(PortMapping(API_PORT, config.api_host_port, config.api_host_ip),),
        healthcheck=Healthcheck(
            ("CMD", "bash", "-c", PROXY_HEALTH_PROBE), timeout_s=3, start_period_s=5
        ),
        depends_on={name: "service_healthy" for name in api_replica_names(config)},
        user="haproxy",
        limits=Limits(memory_mb=config.proxy_memory_mb, pids=config.proxy_pids_limit),
        hardening=Hardening(read_only=True, tmpfs=PROXY_TMPFS),
        labels=LABELS,
        # On a swarm it publishes in host mode on the storage node (no ingress: see
        # infra/compose.py): two tasks cannot hold the port at once, so it is stop-first.
        deploy=Deploy(constraints=(STORAGE_CONSTRAINT,), order="stop-first", monitor_s=5),
    )


def prometheus_service(config: StackConfig) -> Service:
    """Prometheus (infra/images/prometheus, Debian's package) for ``invoke up --monitoring``:
    scrapes every API replica through the network's DNS with the API key as a Bearer
    credential (a secret file), and evaluates monitoring/alerts.yml. Not published: ``invoke
    verify`` asks it over the network whether its targets are up and its rules loaded."""
    return Service(
        name=config.prometheus_name,
        image=config.prometheus_image,
        build=Build(".", "infra/images/prometheus/Dockerfile", {"BASE_IMAGE": config.base_image}),
        secret_files=(
            SecretFile(
                "api_key", SecretTemplate("{api_key}"), uid=PROMETHEUS_UID, gid=PROMETHEUS_UID
            ),
        ),
        networks=(NetworkAttachment(config.network_name, (config.prometheus_name,)),),
        volumes=(VolumeMount(PROMETHEUS_VOLUME, "/prometheus"),),
        healthcheck=Healthcheck(
            ("CMD", "bash", "-c", http_probe(PROMETHEUS_PORT, "/-/ready")),
            interval_s=10,
            timeout_s=3,
        ),
        user=f"{PROMETHEUS_UID}:{PROMETHEUS_UID}",
        limits=Limits(memory_mb=config.prometheus_memory_mb, pids=256),
        hardening=Hardening(read_only=True),
        labels=LABELS,
    )


def _server(config: StackConfig, service: Service) -> Service:
    """What both servers are besides ``service``: on the network under their own name, with
    :data:`SERVER_CAPS` only, labelled as ours; on a swarm one task, on the storage node (their
    volumes are local), stopped before its replacement starts (never two servers on one data
    dir)."""
    return replace(
        service,
        networks=(NetworkAttachment(config.network_name, (service.name,)),),
        hardening=Hardening(cap_add=SERVER_CAPS),
        labels=LABELS,
        deploy=Deploy(replicas=1, constraints=(STORAGE_CONSTRAINT,), order="stop-first"),
    )


def _password_file(secret: str, *, read_at_start: bool = True) -> SecretFile:
    """A server's own password file, named after the secret; root-only (its entrypoint reads
    it as root, before dropping privileges)."""
    return SecretFile(secret, SecretTemplate(f"{{{secret}}}"), read_at_start=read_at_start)


def _local_build(context: str, config: StackConfig, **args: str) -> Build | None:
    if not config.build_local_images:
        return None
    return Build(context, "Dockerfile", {"BASE_IMAGE": config.base_image, **args})
