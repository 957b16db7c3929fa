"""Where the servers are: configured URLs, or the embedded defaults under ``.data/``."""

from __future__ import annotations

import logging

from app_patch.embedded import EmbeddedRedis
from app_patch.settings import Settings

log = logging.getLogger(__name__)


def database_url(settings: Settings) -> str:
    """The application role's URL: configured, or the embedded PostgreSQL's app role."""
    from app_patch.target import resolve_target

    return resolve_target(settings).database_url


def redis_url(settings: Settings, *, start_embedded: bool = False) -> str | None:
    """The configured Redis URL; with ``start_embedded``, a local redis-server if installed."""
    if not settings.cache.enabled:
        return None
    if settings.redis.url is not None:
        return settings.redis.url.get_secret_value()
    if start_embedded and EmbeddedRedis.available():
        return EmbeddedRedis(settings.data_dir / "redis").start()
    return None
