"""Every knob of the persistence kit, read from the environment (pydantic-settings).

Each group has its own env prefix, so a setting's env var is ``<PREFIX><FIELD>`` upper-cased,
e.g. ``MA_DB_POOL_SIZE``. The two URLs also accept the conventional ``DATABASE_URL`` and
``REDIS_URL`` names that container platforms set.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = PROJECT_ROOT / ".data"


def _read_secret_file(path: Path) -> str:
    """The content of a mounted secret (``*_FILE``), surrounding whitespace stripped.

    Containers mount secrets as files so URLs with passwords stay out of the environment
    (``docker inspect``, ``/proc/<pid>/environ``). Errors name the path, never the content.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ValueError(f"cannot read {path}: {reason}") from None
    value = text.strip()
    if not value:
        raise ValueError(f"{path} is empty")
    return value


def _secret_from_file(current: SecretStr | None, path: Path | None) -> SecretStr | None:
    """``current`` when set (the plain variable wins), else the file's content, if any."""
    if current is not None or path is None:
        return current
    return SecretStr(_read_secret_file(path))


class DatabaseSettings(BaseSettings):
    """PostgreSQL connection and pool. No URL means: start the embedded server."""

    model_config = SettingsConfigDict(env_prefix="MA_DB_", extra="ignore", populate_by_name=True)

    url: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("MA_DB_URL", "DATABASE_URL"),
        description="application role's postgresql+psycopg:// URL; unset starts the embedded "
        "PostgreSQL",
    )
    url_file: Path | None = Field(
        default=None, description="file holding MA_DB_URL (a mounted secret), read if that is unset"
    )
    migration_url: SecretStr | None = Field(
        default=None,
        description="schema owner's URL, used by migrations only; unset: MA_DB_URL",
    )
    migration_url_file: Path | None = Field(
        default=None, description="file holding MA_DB_MIGRATION_URL, read if that is unset"
    )
    pool_size: int = Field(default=20, ge=1, description="connections kept open")
    max_overflow: int = Field(default=30, ge=0, description="extra connections under load")
    pool_timeout_s: float = Field(default=30.0, gt=0, description="wait for a free connection")
    pool_recycle_s: int = Field(default=1800, ge=-1, description="reconnect after this age")
    pool_pre_ping: bool = Field(default=True, description="test a connection before use")
    connect_timeout_s: int = Field(default=5, ge=1, description="TCP/libpq connect timeout")
    statement_timeout_ms: int = Field(default=15000, ge=0, description="server-side cap per query")
    echo: bool = Field(default=False, description="log every SQL statement")

    @model_validator(mode="after")
    def _cap_total_connections(self) -> DatabaseSettings:
        if self.pool_size + self.max_overflow > 500:
            raise ValueError("MA_DB_POOL_SIZE + MA_DB_MAX_OVERFLOW must stay <= 500")
        return self

    @field_validator("url_file", "migration_url_file")
    @classmethod
    def _readable_when_used(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        """Fail here, so the error names ``MA_DB_*_FILE``; only when its variable is unset."""
        plain = str(info.field_name).removesuffix("_file")
        if value is not None and info.data.get(plain) is None:
            _read_secret_file(value)
        return value

    @model_validator(mode="after")
    def _urls_from_files(self) -> DatabaseSettings:
        self.url = _secret_from_file(self.url, self.url_file)
        self.migration_url = _secret_from_file(self.migration_url, self.migration_url_file)
        return self

    @property
    def max_connections(self) -> int:
        return self.pool_size + self.max_overflow


class RedisSettings(BaseSettings):
    """Redis connection. No URL means: the cache is disabled (the app still works)."""

    model_config = SettingsConfigDict(env_prefix="MA_REDIS_", extra="ignore", populate_by_name=True)

    url: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("MA_REDIS_URL", "REDIS_URL"),
        description="redis:// or rediss:// URL; unset disables the cache",
    )
    url_file: Path | None = Field(
        default=None,
        description="file holding MA_REDIS_URL (a mounted secret), read if that is unset",
    )
    password: SecretStr | None = Field(default=None, description="overrides the URL's password")
    tls: bool = Field(default=False, description="use TLS (rediss) even for a redis:// URL")
    socket_timeout_s: float = Field(default=0.25, gt=0, description="per-command timeout")
    connect_timeout_s: float = Field(default=0.25, gt=0, description="connect timeout")
    op_timeout_s: float = Field(
        default=0.5, gt=0, description="hard cap on one cache call, connecting included"
    )
    max_connections: int = Field(default=100, ge=1, description="client pool size")

    @field_validator("url_file")
    @classmethod
    def _readable_when_used(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        """Fail here, so the error names ``MA_REDIS_URL_FILE``; only when MA_REDIS_URL is unset."""
        if value is not None and info.data.get("url") is None:
            _read_secret_file(value)
        return value

    @model_validator(mode="after")
    def _url_from_file(self) -> RedisSettings:
        self.url = _secret_from_file(self.url, self.url_file)
        return self


class CacheSettings(BaseSettings):
    """TTL policy per cached kind, in seconds, with +/- jitter as a fraction."""

    model_config = SettingsConfigDict(env_prefix="MA_CACHE_", extra="ignore")

    enabled: bool = Field(default=True, description="set false to bypass Redis entirely")
    ttl_job_running_s: float = Field(default=5, gt=0, description="a queued/running job")
    ttl_job_finished_s: float = Field(default=3600, gt=0, description="a finished job")
    ttl_result_s: float = Field(default=86400, gt=0, description="an analysis result")
    ttl_history_page_s: float = Field(default=30, gt=0, description="one history page")
    ttl_media_s: float = Field(default=3600, gt=0, description="media metadata by sha256")
    jitter: float = Field(default=0.1, ge=0, lt=1, description="TTL jitter fraction")
    breaker_failure_threshold: int = Field(default=3, ge=1, description="errors that open it")
    breaker_recovery_s: float = Field(default=5, gt=0, description="open -> half-open delay")


class StorageSettings(BaseSettings):
    """File store root. Containers use /opt/services/media-analysis/storage."""

    model_config = SettingsConfigDict(env_prefix="MA_STORAGE_", extra="ignore")

    root: Path = Field(default=DEFAULT_DATA_DIR / "storage", description="storage root")
    max_upload_bytes: int = Field(default=100 * 1024 * 1024, ge=1, description="413 above this")
    chunk_bytes: int = Field(default=1024 * 1024, ge=4096, description="streaming chunk size")
    usage_cache_s: float = Field(default=5, ge=0, description="reuse usage figures this long")
    min_free_bytes: int = Field(
        default=256 * 1024 * 1024, ge=0, description="507 for uploads when less is free (0: off)"
    )


class RetentionSettings(BaseSettings):
    """Retention policies applied by the sweeper."""

    model_config = SettingsConfigDict(env_prefix="MA_RETENTION_", extra="ignore")

    uploads_days: float = Field(default=30, gt=0, description="uploads, after last access")
    artifacts_days: float = Field(default=14, gt=0, description="artifacts, after creation")
    tmp_days: float = Field(default=1, gt=0, description="leftovers in tmp/")
    orphan_grace_s: float = Field(default=3600, ge=0, description="age before an orphan goes")
    quota_bytes: int | None = Field(default=None, ge=0, description="optional total byte cap")
    batch_size: int = Field(default=500, ge=1, description="rows per sweep batch")
    batch_pause_s: float = Field(default=0, ge=0, description="pause between batches (IO budget)")
    touch_interval_s: float = Field(
        default=60, ge=0, description="min. seconds between last-access updates of one file"
    )
    reconcile_max_fraction: float = Field(
        default=0.5, ge=0, description="reconciliation refuses above this share (1: never)"
    )


class ResilienceSettings(BaseSettings):
    """PostgreSQL breaker and outbox replayer."""

    model_config = SettingsConfigDict(env_prefix="MA_RESILIENCE_", extra="ignore")

    db_failure_threshold: int = Field(default=3, ge=1, description="errors that open it")
    db_recovery_s: float = Field(default=2, gt=0, description="open -> half-open delay")
    replay_interval_s: float = Field(default=1, gt=0, description="outbox drain period")


class ApiSettings(BaseSettings):
    """HTTP service knobs."""

    model_config = SettingsConfigDict(env_prefix="MA_API_", extra="ignore")

    host: str = Field(default="127.0.0.1", description="bind address of invoke serve")
    port: int = Field(default=8000, ge=1, le=65535, description="bind port")
    log_json: bool = Field(default=False, description="JSON logs (containers) vs console")
    log_level: str = Field(default="INFO", description="root log level")
    history_page_max: int = Field(default=200, ge=1, description="largest accepted limit")
    max_concurrent_uploads: int = Field(
        default=128, ge=1, description="uploads in flight per process; more: 503 + Retry-After"
    )
    keys: SecretStr | None = Field(
        default=None, description="SHA-256 digests of the API keys, comma-separated; unset: open"
    )
    keys_file: Path | None = Field(
        default=None, description="file with the key digests (one per line; wins over MA_API_KEYS)"
    )
    metrics_access: Literal["public", "key", "off"] = Field(
        default="key", description="/metrics: public, behind the key, or off"
    )
    docs_access: Literal["public", "key", "off"] = Field(
        default="key", description="/docs, /redoc, /openapi.json: public, key or off"
    )

    @field_validator("log_level")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()

    def key_digests(self) -> frozenset[str]:
        """The configured digests (``MA_API_KEYS_FILE`` first); empty: no key needed."""
        from app_patch.access import parse_digests

        if self.keys_file is not None:
            try:
                raw = self.keys_file.read_text(encoding="utf-8")
            except OSError as exc:
                raise ValueError(f"MA_API_KEYS_FILE cannot be read ({exc.strerror})") from None
            return parse_digests(raw)
        return parse_digests(self.keys.get_secret_value()) if self.keys is not None else frozenset()


class Settings(BaseSettings):
    """All groups together; build one with ``get_settings()``."""

    model_config = SettingsConfigDict(env_prefix="MA_", extra="ignore")

    data_dir: Path = Field(default=DEFAULT_DATA_DIR, description="embedded servers' data")
    db: DatabaseSettings = Field(default_factory=DatabaseSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    resilience: ResilienceSettings = Field(default_factory=ResilienceSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
