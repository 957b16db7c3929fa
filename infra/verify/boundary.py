"""The trust-boundary checks both runners list, each named once (``invoke verify`` prints these
names): the API's user, forwarded headers and database role, the storage volume, and the Redis
users and memory limit.

Each takes how to find its container at check time (a plain name on one engine, a task's
container on a swarm), so looking it up fails that check alone.
"""

from __future__ import annotations

from collections.abc import Callable

from infra.config import StackConfig
from infra.stack import STORAGE_ROOT, STORAGE_VOLUME
from infra.verify.exposure import forwarded_allow_ips
from infra.verify.hardening import not_root
from infra.verify.network import storage_writable
from infra.verify.results import Check
from infra.verify.servers import redis_app_acl, redis_maxmemory, redis_requires_auth


def api_checks(
    config: StackConfig, api: Callable[[], str], database_role: Callable[[], str]
) -> list[Check]:
    """The API process (in the container ``api()`` names): not root, trusting forwarded
    headers only from ``FORWARDED_ALLOW_IPS``, and its database role unprivileged."""
    return [
        (f"{config.api_name} process is not root", lambda: not_root(api())),
        (
            f"{config.api_name} trusts X-Forwarded-* only from FORWARDED_ALLOW_IPS",
            lambda: forwarded_allow_ips(api()),
        ),
        (f"{config.api_name}'s database role is unprivileged (role_problems)", database_role),
    ]


def storage_check(api: Callable[[], str]) -> Check:
    return (
        f"{STORAGE_VOLUME} mounted at {STORAGE_ROOT} and writable by the API user",
        lambda: storage_writable(api()),
    )


def redis_auth_check(config: StackConfig, redis: Callable[[], StackConfig]) -> Check:
    """``redis()``: the config whose ``redis_host`` is the container to look inside."""
    return (
        f"{config.redis_host} refuses unauthenticated commands",
        lambda: redis_requires_auth(redis()),
    )


def redis_user_checks(config: StackConfig, redis: Callable[[], StackConfig]) -> list[Check]:
    """Only for a Redis this stack declares: the app user's ACL and the memory limit."""
    return [
        (
            f"{config.redis_host}: {config.redis_app_user} denied admin commands (ACL DRYRUN)",
            lambda: redis_app_acl(redis()),
        ),
        (
            f"{config.redis_host}: maxmemory below the container limit, evicting",
            lambda: redis_maxmemory(redis()),
        ),
    ]
