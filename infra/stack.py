"""Our stack as a spec: ``af-network``, three volumes, PostgreSQL, Redis and the API.

``managed`` mode declares the shared servers too; ``external`` mode references the existing
network and servers by name and declares only what belongs to the API (its container and the
``media-storage`` volume), so nothing of theirs is created or changed.
"""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import quote

from app_patch.db_roles import init_sql
from infra.config import StackConfig, secrets_for
from infra.redis_acl import admin_rules, app_rules, maxmemory_bytes
from infra.spec import (
    SECRETS_DIR,
    Build,
    DependencyCondition,
    Deploy,
    Hardening,
    Healthcheck,
    Limits,
    Network,
    NetworkAttachment,
    PortMapping,
    SecretFile,
    SecretTemplate,
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
API_UID = 10001
API_USER = f"{API_UID}:{API_UID}"
POSTGRES_PORT = 5432
REDIS_PORT = 6379
PG_VOLUME = "pg-data"
REDIS_VOLUME = "redis-data"
STORAGE_VOLUME = "media-storage"
PROMETHEUS_VOLUME = "prometheus-data"
PROMETHEUS_UID = 10003
PROMETHEUS_PORT = 9090
LABELS = {"io.media-analysis-kit.stack": PROJECT}
OWNER_LABEL = "io.media-analysis-kit.owner"
"""Every container of a stack carries its owner (``infra.engines.record``): tasks compare it with
their checkout's record before they touch a container."""

# The entrypoints start as root only to read their root-only secret files and drop to their
# service user with setpriv (setresuid/setresgid/setgroups): SETUID and SETGID, nothing else.
# Measured on fresh volumes: without either, setpriv fails with EPERM; CHOWN, FOWNER and
# DAC_OVERRIDE are not needed (the image's data directory already belongs to the service user,
# and root reads its own 0400 files). A volume owned by someone else makes the entrypoint stop
# with one line saying how to chown it once.
POSTGRES_CAPS = ("SETGID", "SETUID")
REDIS_CAPS = ("SETGID", "SETUID")
# The API's root filesystem is read-only; it writes media under STORAGE_ROOT (a volume) and
# temporary files (uploads being received, Python's tempfile) under /tmp.
API_POOL_BUDGET = (20, 30)
"""Pool size and overflow of the whole API (app_patch.settings' defaults), split evenly over
its replicas."""
API_TMPFS = {"/tmp": "rw,noexec,nosuid,nodev,size=256m,mode=1777"}
STORAGE_NODE_LABEL = "media-analysis.storage"
STORAGE_CONSTRAINT = f"node.labels.{STORAGE_NODE_LABEL}==true"
"""Swarm: the node that holds the local volumes (pg-data, redis-data, media-storage). The
servers and the API run there only; ``invoke up`` labels a one-node swarm's node itself."""


# The proxy's own liveness: its monitor-uri on a loopback-only port (bash's /dev/tcp: the image
# has no HTTP client).
def _http_probe(port: int, path: str) -> str:
    """A bash one-liner that succeeds when ``GET path`` on loopback answers 200."""
    return (
        f"exec 3<>/dev/tcp/127.0.0.1/{port} && printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' >&3"
        " && head -n1 <&3 | grep -q ' 200 '"
    )


PROXY_HEALTH_PROBE = _http_probe(8405, "/healthz")
# The proxy's root filesystem is read-only; its runtime socket lives in this tmpfs.
PROXY_TMPFS = {"/tmp": "rw,noexec,nosuid,nodev,size=1m,mode=1777"}
_READY_PROBE = (
    "import sys, urllib.request; "
    f"r = urllib.request.urlopen('http://127.0.0.1:{API_PORT}/health/ready', timeout=4); "
    "sys.exit(0 if r.status == 200 else 1)"
)


def build_stack(config: StackConfig, owner: str | None = None) -> Stack:
    """The spec for ``config`` (validated first); with ``owner``, every container carries it
    in :data:`OWNER_LABEL`."""
    config.validate()
    managed = config.mode == "managed"
    swarm = config.target == "swarm"
    network = Network(
        config.network_name,
        driver="overlay" if swarm else "bridge",
        external=not managed,
        labels=LABELS if managed else {},
        attachable=swarm,
    )
    volumes = [Volume(STORAGE_VOLUME, labels=LABELS)]
    services = [*api_replicas(config), proxy_service(config)]
    if config.monitoring:
        volumes.append(Volume(PROMETHEUS_VOLUME, labels=LABELS))
        services.append(prometheus_service(config))
    if managed:
        volumes = [Volume(PG_VOLUME, labels=LABELS), Volume(REDIS_VOLUME, labels=LABELS), *volumes]
        services = [postgres_service(config), redis_service(config), *services]
    if owner:
        services = [replace(s, labels={**s.labels, OWNER_LABEL: owner}) for s in services]
    return Stack(
        project=PROJECT if managed else EXTERNAL_PROJECT,
        networks=(network,),
        volumes=tuple(volumes),
        services=tuple(services),
        secrets=secrets_for(config.mode),
        referenced_services=() if managed else (config.postgres_host, config.redis_host),
    )


def postgres_service(config: StackConfig) -> Service:
    ports: tuple[PortMapping, ...] = ()
    if config.postgres_host_port:
        ports = (PortMapping(POSTGRES_PORT, config.postgres_host_port),)
    return Service(
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
            "POSTGRES_PASSWORD_FILE": _file("postgres_password"),
            "POSTGRES_OWNER_PASSWORD_FILE": _file("postgres_owner_password"),
            "POSTGRES_APP_PASSWORD_FILE": _file("postgres_app_password"),
        },
        # Read at initdb only: later the roles' passwords change in the database (ensure_roles),
        # so a rotation never restarts PostgreSQL.
        secret_files=(
            _password_file("postgres_password", read_at_start=False),
            _password_file("postgres_owner_password", read_at_start=False),
            _password_file("postgres_app_password", read_at_start=False),
        ),
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
        limits=Limits(memory_mb=config.postgres_memory_mb, pids=config.postgres_pids_limit),
        hardening=Hardening(cap_add=POSTGRES_CAPS),
        labels=LABELS,
        deploy=_server_deploy(config),
    )


def redis_service(config: StackConfig) -> Service:
    return Service(
        name=config.redis_host,
        image=config.redis_image,
        build=_local_build("infra/images/redis", config),
        env={
            "REDIS_ADMIN_USER": config.redis_admin_user,
            "REDIS_ADMIN_RULES": admin_rules(),
            "REDIS_PASSWORD_FILE": _file("redis_password"),
            "REDIS_APP_USER": config.redis_app_user,
            "REDIS_APP_RULES": app_rules(),
            "REDIS_APP_PASSWORD_FILE": _file("redis_app_password"),
            "REDIS_MAXMEMORY": str(
                maxmemory_bytes(config.redis_memory_mb, config.redis_maxmemory_percent)
            ),
        },
        secret_files=(_password_file("redis_password"), _password_file("redis_app_password")),
        networks=(NetworkAttachment(config.network_name, (config.redis_host,)),),
        volumes=(VolumeMount(REDIS_VOLUME, "/data"),),
        healthcheck=Healthcheck(
            test=("CMD-SHELL", redis_admin_cli(config, "ping") + " | grep -q PONG"),
            interval_s=5,
            timeout_s=3,
            retries=12,
            start_period_s=5,
        ),
        limits=Limits(memory_mb=config.redis_memory_mb, pids=config.redis_pids_limit),
        hardening=Hardening(cap_add=REDIS_CAPS),
        labels=LABELS,
        deploy=_server_deploy(config),
    )


def redis_admin_cli(config: StackConfig, command: str) -> str:
    """A shell command running ``redis-cli <command>`` as the admin user inside the Redis
    container (password from its secret file, through REDISCLI_AUTH: never on a command line)."""
    return (
        f'REDISCLI_AUTH="$(cat {_file("redis_password")})" redis-cli --no-auth-warning'
        f" --user {config.redis_admin_user} -h 127.0.0.1 {command}"
    )


def api_replica_names(config: StackConfig) -> tuple[str, ...]:
    """The API containers: ``api_name``, then ``api_name-2`` ... (``apiReplicas`` of them).
    On a swarm the replicas are tasks of one service: ``(api_name,)``."""
    if config.target == "swarm":
        return (config.api_name,)
    return (config.api_name, *(f"{config.api_name}-{i}" for i in range(2, config.api_replicas + 1)))


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


def proxy_backend(config: StackConfig) -> str:
    """The DNS name the proxy resolves to one address per API replica: the replicas' shared
    alias on one engine; on a swarm ``tasks.<api>`` (the service name alone is its VIP)."""
    return f"tasks.{config.api_name}" if config.target == "swarm" else config.api_name


def _server_deploy(config: StackConfig) -> Deploy:
    """PostgreSQL and Redis on a swarm: one task, on the storage node (their volumes are
    local), stopped before its replacement starts (never two servers on one data dir)."""
    return Deploy(replicas=1, constraints=(STORAGE_CONSTRAINT,), order="stop-first")


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
            test=("CMD", "bash", "-c", PROXY_HEALTH_PROBE),
            interval_s=5,
            timeout_s=3,
            retries=12,
            start_period_s=5,
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
            test=("CMD", "bash", "-c", _http_probe(PROMETHEUS_PORT, "/-/ready")),
            interval_s=10,
            timeout_s=3,
            retries=12,
            start_period_s=10,
        ),
        user=f"{PROMETHEUS_UID}:{PROMETHEUS_UID}",
        limits=Limits(memory_mb=config.prometheus_memory_mb, pids=256),
        hardening=Hardening(read_only=True),
        labels=LABELS,
    )


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
            "MA_DB_URL_FILE": _file("db_url"),
            "MA_REDIS_URL_FILE": _file("redis_url"),
            "MA_API_KEYS_FILE": _file("api_key_digest"),
            # uvicorn reads it itself: whose X-Forwarded-* headers it believes.
            "FORWARDED_ALLOW_IPS": config.forwarded_allow_ips,
            # One process's default pool is 20 + 30 connections; the replicas share one budget
            # of that size, so N replicas never exceed PostgreSQL's default max_connections.
            "MA_DB_POOL_SIZE": str(max(2, API_POOL_BUDGET[0] // config.api_replicas)),
            "MA_DB_MAX_OVERFLOW": str(max(2, API_POOL_BUDGET[1] // config.api_replicas)),
        },
        secret_files=(
            SecretFile(
                "db_url",
                SecretTemplate(
                    f"postgresql+psycopg://{user}:{{postgres_app_password}}"
                    f"@{config.postgres_host}:{POSTGRES_PORT}/{database}",
                    url_quote=True,
                ),
                uid=API_UID,
                gid=API_UID,
            ),
            SecretFile(
                "redis_url",
                SecretTemplate(
                    f"redis://{redis_user}:{{redis_app_password}}@{config.redis_host}"
                    f":{REDIS_PORT}/{config.redis_db}",
                    url_quote=True,
                ),
                uid=API_UID,
                gid=API_UID,
            ),
            SecretFile(
                "api_key_digest",
                SecretTemplate("{api_key}", sha256=True),
                uid=API_UID,
                gid=API_UID,
            ),
        ),
        networks=(NetworkAttachment(config.network_name, (config.api_name,)),),
        volumes=(VolumeMount(STORAGE_VOLUME, STORAGE_ROOT),),
        healthcheck=Healthcheck(
            test=("CMD", "python3", "-c", _READY_PROBE),
            interval_s=5,
            timeout_s=5,
            retries=12,
            start_period_s=20,
        ),
        depends_on=depends_on,
        user=API_USER,
        limits=Limits(
            memory_mb=config.api_memory_mb, cpus=config.api_cpus, pids=config.api_pids_limit
        ),
        hardening=Hardening(read_only=True, tmpfs=API_TMPFS),
        labels=LABELS,
    )


def _file(name: str) -> str:
    """Where a service finds its secret file ``name``."""
    return f"{SECRETS_DIR}/{name}"


def _password_file(secret: str, *, read_at_start: bool = True) -> SecretFile:
    """A server's own password file, named after the secret; root-only (its entrypoint reads
    it as root, before dropping privileges)."""
    return SecretFile(secret, SecretTemplate(f"{{{secret}}}"), read_at_start=read_at_start)


def _local_build(context: str, config: StackConfig, **args: str) -> Build | None:
    if not config.build_local_images:
        return None
    return Build(context, "Dockerfile", {"BASE_IMAGE": config.base_image, **args})
