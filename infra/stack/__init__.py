"""Our stack as a spec: ``af-network``, three volumes, PostgreSQL, Redis and the API.

``managed`` mode declares the shared servers too; ``external`` mode references the existing
network and servers by name and declares only what belongs to the API (its container and the
``media-storage`` volume), so nothing of theirs is created or changed.

One job per module: ``layout`` (the fixed names and numbers, and the container names a config
gives), ``services`` (one builder per service) and ``assemble`` (:func:`build_stack`, the whole
spec for a config).
"""

from infra.stack.assemble import build_stack
from infra.stack.layout import (
    API_PORT,
    API_UID,
    API_USER,
    EXTERNAL_PROJECT,
    LABELS,
    OWNER_LABEL,
    PG_VOLUME,
    POSTGRES_PORT,
    PROJECT,
    PROMETHEUS_PORT,
    PROMETHEUS_UID,
    PROMETHEUS_VOLUME,
    REDIS_PORT,
    REDIS_VOLUME,
    STORAGE_CONSTRAINT,
    STORAGE_NODE_LABEL,
    STORAGE_ROOT,
    STORAGE_VOLUME,
    api_replica_names,
    proxy_backend,
)
from infra.stack.services import redis_admin_cli

__all__ = [
    "API_PORT",
    "API_UID",
    "API_USER",
    "EXTERNAL_PROJECT",
    "LABELS",
    "OWNER_LABEL",
    "PG_VOLUME",
    "POSTGRES_PORT",
    "PROJECT",
    "PROMETHEUS_PORT",
    "PROMETHEUS_UID",
    "PROMETHEUS_VOLUME",
    "REDIS_PORT",
    "REDIS_VOLUME",
    "STORAGE_CONSTRAINT",
    "STORAGE_NODE_LABEL",
    "STORAGE_ROOT",
    "STORAGE_VOLUME",
    "api_replica_names",
    "build_stack",
    "proxy_backend",
    "redis_admin_cli",
]
