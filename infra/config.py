"""Typed configuration of the container stack, and its two sources.

Every field of :class:`StackConfig` is a setting with the same meaning everywhere:

* Pulumi stack config, key = camelCase field name (``pulumi config set apiHostPort 8080``);
* environment, for ``invoke up`` = ``MA_INFRA_`` + upper-case field (``MA_INFRA_API_HOST_PORT``).

Passwords are not fields: they are secrets (``postgresPassword`` / ``redisPassword`` in Pulumi,
set with ``--secret``; ``MA_INFRA_POSTGRES_PASSWORD`` / ``MA_INFRA_REDIS_PASSWORD`` in the
environment). Any bad or missing value raises :class:`ConfigError` naming the setting.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Literal, get_args

Mode = Literal["managed", "external"]
ENV_PREFIX = "MA_INFRA_"
SECRET_NAMES = {
    "postgres_password": "the password of the PostgreSQL user",
    "redis_password": "the password Redis requires",
}

_DOCKER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
_IDENTIFIER = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_IMAGE = re.compile(r"^[a-z0-9][a-z0-9._/:@-]*$")


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
    network_name: str = "af-network"
    postgres_host: str = "af-postgres-1"
    redis_host: str = "af-redis-1"
    api_name: str = "media-analysis-api"
    postgres_user: str = "media"
    postgres_db: str = "media_analysis"
    redis_db: int = 0
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
    api_log_json: bool = True

    def validate(self, key_of: Callable[[str], str] = lambda name: name) -> StackConfig:
        """Raise :class:`ConfigError` (named with ``key_of(field)``) on the first bad value."""
        if self.mode not in get_args(Mode):
            raise ConfigError(key_of("mode"), f"must be 'managed' or 'external', not {self.mode!r}")
        for name in ("network_name", "postgres_host", "redis_host", "api_name"):
            _check(key_of(name), getattr(self, name), _DOCKER_NAME, "a Docker object name")
        for name in ("postgres_user", "postgres_db"):
            _check(key_of(name), getattr(self, name), _IDENTIFIER, "a plain SQL identifier")
        for name in ("postgres_image", "redis_image", "api_image", "base_image"):
            _check(key_of(name), getattr(self, name), _IMAGE, "an image reference")
        _in_range(key_of("api_host_port"), self.api_host_port, 1, 65535)
        _in_range(key_of("postgres_host_port"), self.postgres_host_port, 0, 65535)
        _in_range(key_of("redis_db"), self.redis_db, 0, 15)
        for name in ("api_memory_mb", "postgres_memory_mb", "redis_memory_mb"):
            _in_range(key_of(name), getattr(self, name), 64, 1 << 20)
        if not 0 < self.api_cpus <= 64:
            raise ConfigError(key_of("api_cpus"), f"must be in (0, 64], not {self.api_cpus}")
        if len({self.postgres_host, self.redis_host, self.api_name}) != 3:
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


def secrets_from_source(
    get: Callable[[str], str | None], key_of: Callable[[str], str]
) -> dict[str, str]:
    """Both passwords; a missing or blank one is a :class:`ConfigError` naming it."""
    secrets: dict[str, str] = {}
    for name, meaning in SECRET_NAMES.items():
        key = key_of(name)
        value = get(key)
        if value is None or not value.strip():
            raise ConfigError(key, f"is required ({meaning}) and is not set")
        secrets[name] = value
    return secrets


def secrets_from_env(environ: Mapping[str, str]) -> dict[str, str]:
    return secrets_from_source(environ.get, env_key)


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
