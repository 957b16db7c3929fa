"""Typed configuration of the container stack, and its two sources.

Every field of :class:`StackConfig` is a setting with the same meaning everywhere:

* Pulumi stack config, key = camelCase field name (``pulumi config set apiHostPort 8080``);
* environment, for ``invoke up`` = ``MA_INFRA_`` + upper-case field (``MA_INFRA_API_HOST_PORT``).

Passwords are not fields: they are the secrets of :data:`STACK_SECRETS` (the one list: Pulumi
key = its ``setting``, set with ``--secret``; env = ``MA_INFRA_`` + upper-case name, e.g.
``MA_INFRA_POSTGRES_APP_PASSWORD``). Any bad or missing value raises :class:`ConfigError`
naming the setting.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Literal, get_args

from app_patch.settings import DEFAULT_DATA_DIR
from infra.spec import Secret

Mode = Literal["managed", "external"]
Target = Literal["containers", "swarm"]
ENV_PREFIX = "MA_INFRA_"
DATA_DIR = DEFAULT_DATA_DIR
"""Local state of the tasks (stack record, passwords, compose's secret files)."""

STACK_SECRETS: tuple[Secret, ...] = (
    Secret(
        "postgres_password",
        "postgresPassword",
        "the PostgreSQL bootstrap superuser's password (initdb, role upkeep)",
        managed_only=True,
    ),
    Secret(
        "postgres_owner_password",
        "postgresOwnerPassword",
        "the password of the role that owns the schema (migrations)",
    ),
    Secret(
        "postgres_app_password",
        "postgresAppPassword",
        "the password of the API's role (DML only)",
    ),
    Secret(
        "redis_password",
        "redisPassword",
        "the Redis admin user's password (healthcheck, operators)",
        managed_only=True,
    ),
    Secret(
        "redis_app_password",
        "redisAppPassword",
        "the password of the API's Redis user (cache commands on ma:v1:* only)",
    ),
    Secret(
        "api_key",
        "apiKey",
        "the key clients send as X-API-Key (the API holds only its SHA-256 digest)",
    ),
)
"""Every password the stack knows, once. Managed-only ones belong to servers the stack creates;
external mode (the servers exist) needs only the API's and the migration owner's."""

_DOCKER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
_IDENTIFIER = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_IMAGE = re.compile(r"^[a-z0-9][a-z0-9._/:@-]*$")
_REDIS_USER = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
# uvicorn's --forwarded-allow-ips list: addresses or networks; "*" (trust anyone) is refused.
_FORWARDED = re.compile(r"^[0-9a-fA-F.:/]+(,[0-9a-fA-F.:/]+)*$")


MAX_API_REPLICAS = 10
"""The proxy's server slots (``server-template api 1-10`` in infra/images/proxy/haproxy.cfg):
API containers beyond them would get no traffic. A deploy's surge container takes a slot too."""


class ConfigError(ValueError):
    """One setting is missing or wrong; ``setting`` is its name in the source used."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"configuration setting {setting}: {problem}")
        self.setting = setting
        self.problem = problem


@dataclass(frozen=True)
class StackConfig:
    """Everything that varies between deployments of the stack (passwords excepted)."""

    mode: Mode = "managed"
    # containers: one Docker engine (compose, Pulumi containers); swarm: services on a swarm
    # (the swarm engine, Pulumi's swarm target).
    target: Target = "containers"
    network_name: str = "af-network"
    postgres_host: str = "af-postgres-1"
    redis_host: str = "af-redis-1"
    api_name: str = "media-analysis-api"
    postgres_user: str = "media"
    postgres_db: str = "media_analysis"
    postgres_owner_user: str = "media_owner"
    postgres_app_user: str = "media_app"
    redis_db: int = 0
    redis_app_user: str = "media-app"
    redis_admin_user: str = "ma-admin"
    postgres_image: str = "media-analysis-kit/postgres:15-bookworm"
    redis_image: str = "media-analysis-kit/redis:7-bookworm"
    api_image: str = "media-analysis-kit/api:latest"
    build_local_images: bool = True
    base_image: str = "debian:bookworm-slim"
    api_host_ip: str = "127.0.0.1"
    api_host_port: int = 8000
    postgres_host_port: int = 0
    api_memory_mb: int = 1024
    api_cpus: float = 1.0
    postgres_memory_mb: int = 1024
    redis_memory_mb: int = 256
    redis_maxmemory_percent: int = 75
    api_pids_limit: int = 512
    postgres_pids_limit: int = 512
    redis_pids_limit: int = 128
    api_log_json: bool = True
    forwarded_allow_ips: str = "127.0.0.1"
    # The reverse proxy in front of the API replicas (HAProxy), and rollouts through it.
    proxy_name: str = "media-analysis-proxy"
    proxy_image: str = "media-analysis-kit/proxy:latest"
    api_replicas: int = 1
    proxy_request_timeout_s: int = 10
    proxy_client_timeout_s: int = 30
    proxy_max_connections: int = 2000
    proxy_memory_mb: int = 128
    proxy_pids_limit: int = 128
    deploy_timeout_s: int = 30
    drain_timeout_s: int = 30
    # `invoke up --monitoring`: a Prometheus on the network, scraping the API, with the rules.
    monitoring: bool = False
    prometheus_name: str = "media-analysis-prometheus"
    prometheus_image: str = "media-analysis-kit/prometheus:latest"
    prometheus_memory_mb: int = 512

    def validate(self, key_of: Callable[[str], str] = lambda name: name) -> StackConfig:
        """Raise :class:`ConfigError` (named with ``key_of(field)``) on the first bad value."""
        if self.mode not in get_args(Mode):
            raise ConfigError(key_of("mode"), f"must be 'managed' or 'external', not {self.mode!r}")
        if self.target not in get_args(Target):
            raise ConfigError(
                key_of("target"), f"must be 'containers' or 'swarm', not {self.target!r}"
            )
        for name in (
            "network_name", "postgres_host", "redis_host", "api_name", "proxy_name",
            "prometheus_name",
        ):  # fmt: skip
            _check(key_of(name), getattr(self, name), _DOCKER_NAME, "a Docker object name")
        for name in ("postgres_user", "postgres_db", "postgres_owner_user", "postgres_app_user"):
            _check(key_of(name), getattr(self, name), _IDENTIFIER, "a plain SQL identifier")
        if len({self.postgres_user, self.postgres_owner_user, self.postgres_app_user}) != 3:
            raise ConfigError(key_of("postgres_app_user"), "the three PostgreSQL roles must differ")
        for name in ("redis_app_user", "redis_admin_user"):
            _check(key_of(name), getattr(self, name), _REDIS_USER, "a Redis user name")
        if self.redis_app_user == self.redis_admin_user or "default" in {
            self.redis_app_user,
            self.redis_admin_user,
        }:
            raise ConfigError(
                key_of("redis_app_user"), "the Redis users must differ and not be 'default'"
            )
        _check(
            key_of("forwarded_allow_ips"),
            self.forwarded_allow_ips,
            _FORWARDED,
            "comma-separated IP addresses or networks (no '*')",
        )
        for name in (
            "postgres_image", "redis_image", "api_image", "proxy_image", "prometheus_image",
            "base_image",
        ):  # fmt: skip
            _check(key_of(name), getattr(self, name), _IMAGE, "an image reference")
        _in_range(key_of("api_host_port"), self.api_host_port, 1, 65535)
        _in_range(key_of("postgres_host_port"), self.postgres_host_port, 0, 65535)
        _in_range(key_of("redis_db"), self.redis_db, 0, 15)
        for name in (
            "api_memory_mb", "postgres_memory_mb", "redis_memory_mb", "proxy_memory_mb",
            "prometheus_memory_mb",
        ):  # fmt: skip
            _in_range(key_of(name), getattr(self, name), 64, 1 << 20)
        _in_range(key_of("redis_maxmemory_percent"), self.redis_maxmemory_percent, 10, 90)
        for name in (
            "api_pids_limit",
            "postgres_pids_limit",
            "redis_pids_limit",
            "proxy_pids_limit",
        ):
            _in_range(key_of(name), getattr(self, name), 32, 1 << 16)
        _in_range(key_of("api_replicas"), self.api_replicas, 1, MAX_API_REPLICAS - 1)
        for name in ("proxy_request_timeout_s", "proxy_client_timeout_s"):
            _in_range(key_of(name), getattr(self, name), 1, 3600)
        for name in ("deploy_timeout_s", "drain_timeout_s"):
            _in_range(key_of(name), getattr(self, name), 1, 3600)
        _in_range(key_of("proxy_max_connections"), self.proxy_max_connections, 10, 1_000_000)
        if not 0 < self.api_cpus <= 64:
            raise ConfigError(key_of("api_cpus"), f"must be in (0, 64], not {self.api_cpus}")
        if self.target == "swarm" and self.monitoring:
            raise ConfigError(key_of("monitoring"), "is not available on target swarm (yet)")
        names = {self.postgres_host, self.redis_host, self.api_name, self.proxy_name}
        if len(names | {self.prometheus_name}) != 5:
            raise ConfigError(key_of("api_name"), "container names must differ")
        return self


def pulumi_key(field_name: str) -> str:
    head, *rest = field_name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def env_key(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def config_from_source(
    get: Callable[[str], str | None], key_of: Callable[[str], str]
) -> StackConfig:
    """Build a validated config from raw strings; ``get(key)`` returns None when unset."""
    values: dict[str, object] = {}
    for spec_field in fields(StackConfig):
        key = key_of(spec_field.name)
        raw = get(key)
        if raw is None or raw == "":
            continue
        values[spec_field.name] = _parse(key, raw.strip(), spec_field.default)
    return StackConfig(**values).validate(key_of)  # type: ignore[arg-type]


def config_from_env(environ: Mapping[str, str]) -> StackConfig:
    return config_from_source(environ.get, env_key)


def config_to_env(config: StackConfig) -> dict[str, str]:
    """The ``MA_INFRA_*`` variables that :func:`config_from_env` reads back as ``config``."""
    env: dict[str, str] = {}
    for spec_field in fields(StackConfig):
        value = getattr(config, spec_field.name)
        if value is None:
            continue
        spelled = str(value).lower() if isinstance(value, bool) else str(value)
        env[env_key(spec_field.name)] = spelled
    return env


def secrets_for(mode: Mode) -> tuple[Secret, ...]:
    """The secrets a stack in ``mode`` needs (external: not those of the shared servers)."""
    return tuple(s for s in STACK_SECRETS if mode == "managed" or not s.managed_only)


def secrets_from_source(
    get: Callable[[str], str | None],
    key_of: Callable[[str], str],
    wanted: tuple[Secret, ...] = STACK_SECRETS,
) -> dict[str, str]:
    """The ``wanted`` passwords by name; a missing or blank one is a :class:`ConfigError`
    naming its setting."""
    secrets: dict[str, str] = {}
    for secret in wanted:
        key = key_of(secret.name)
        value = get(key)
        if value is None or not value.strip():
            raise ConfigError(key, f"is required ({secret.description}) and is not set")
        secrets[secret.name] = value
    return secrets


def secrets_from_env(
    environ: Mapping[str, str], wanted: tuple[Secret, ...] = STACK_SECRETS
) -> dict[str, str]:
    return secrets_from_source(environ.get, env_key, wanted)


def _parse(key: str, raw: str, default: object) -> object:
    if isinstance(default, bool):
        lowered = raw.lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(key, f"must be true or false, not {raw!r}")
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(key, f"must be an integer, not {raw!r}") from None
    if isinstance(default, float):
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(key, f"must be a number, not {raw!r}") from None
    return raw


def _check(key: str, value: str, pattern: re.Pattern[str], what: str) -> None:
    if not pattern.fullmatch(value):
        raise ConfigError(key, f"must be {what}, not {value!r}")


def _in_range(key: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ConfigError(key, f"must be between {low} and {high}, not {value}")
