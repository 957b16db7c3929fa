"""The names the Pulumi program gives the stack's services, and the secrets external mode needs."""

from __future__ import annotations

from tests.infra.pulumi_harness import PASSWORDS

PG, REDIS, API = "af-postgres-1", "af-redis-1", "media-analysis-api"
LOADER = f"{API}-secrets"
PROXY = "media-analysis-proxy"
EXTERNAL_PASSWORDS = {
    key: value
    for key, value in PASSWORDS.items()
    if key not in {"postgresPassword", "redisPassword"}
}
"""External mode needs no password of the shared servers' administrators."""
