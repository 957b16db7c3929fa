"""Checks that ask the servers themselves: the API's PostgreSQL role, Redis's users and memory
limit, and what Prometheus scrapes and evaluates."""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from infra import docker_host
from infra.config import StackConfig
from infra.redis_acl import ALLOWED_TO_APP, DENIED_TO_APP, OUTSIDE_KEY
from infra.spec import SECRETS_DIR
from infra.stack import API_PORT, POSTGRES_PORT, PROMETHEUS_PORT, api_replica_names, redis_admin_cli
from infra.verify.hosts import inside, inspect_container
from infra.verify.results import CheckFailed


def database_role(api: str, postgres_address: Callable[[], str], where: str = "") -> str:
    """The API's own URL (its secret file, read inside the ``api`` container), pointed at
    PostgreSQL's address on the network (this host cannot resolve the server's name);
    ``where`` ends the message when the file is missing."""
    from app_patch.db_roles import role_problems

    url = inside(api).run(f"cat {SECRETS_DIR}/db_url").stdout.strip()
    if not url:
        raise CheckFailed(f"{SECRETS_DIR}/db_url is missing or empty{where}")
    parts = urlsplit(url)
    address = postgres_address()
    netloc = parts.netloc.rsplit("@", 1)[0] + f"@{address}:{parts.port or POSTGRES_PORT}"
    problems = role_problems(urlunsplit(parts._replace(netloc=netloc)))
    if problems:
        raise CheckFailed("; ".join(problems))
    return f"role {parts.username}: not a superuser, cannot CREATE or DROP tables, owns nothing"


def redis_requires_auth(config: StackConfig) -> str:
    host = inside(config.redis_host)
    anonymous = host.run("redis-cli -h 127.0.0.1 ping")
    answer = (anonymous.stdout + anonymous.stderr).strip()
    if "NOAUTH" not in answer:
        raise CheckFailed(f"unauthenticated PING answered {answer!r}")
    as_default = host.run("redis-cli -h 127.0.0.1 --no-auth-warning --user default --pass x ping")
    refused = (as_default.stdout + as_default.stderr).strip()
    if "PONG" in refused:
        raise CheckFailed("the default user still logs in")
    authed = host.run(redis_admin_cli(config, "ping"))
    if authed.stdout.strip() != "PONG":
        raise CheckFailed(f"PING as {config.redis_admin_user} answered {authed.stdout.strip()!r}")
    return f"anonymous: NOAUTH; default user: refused; {config.redis_admin_user}: PONG"


def redis_app_acl(config: StackConfig) -> str:
    """``ACL DRYRUN`` (Redis 7) answers what a user could do without running anything."""
    host = inside(config.redis_host)
    user = config.redis_app_user

    def dryrun(command: tuple[str, ...]) -> str:
        words = " ".join(shlex.quote(part) for part in command)
        result = host.run(redis_admin_cli(config, f"ACL DRYRUN {shlex.quote(user)} {words}"))
        return str(result.stdout + result.stderr).strip()

    allowed = [
        " ".join(c) for c in (*DENIED_TO_APP, OUTSIDE_KEY) if "no permissions" not in dryrun(c)
    ]
    if allowed:
        raise CheckFailed(f"{user} may run: {'; '.join(allowed)}")
    refused = {" ".join(c): dryrun(c) for c in ALLOWED_TO_APP}
    broken = [f"{command}: {answer}" for command, answer in refused.items() if answer != "OK"]
    if broken:
        raise CheckFailed(f"{user} lacks what the cache needs: {'; '.join(broken)}")
    denied = ", ".join(
        c[0] if c[0] not in {"CONFIG", "SCRIPT", "ACL"} else " ".join(c[:2]) for c in DENIED_TO_APP
    )
    return f"refused: {denied}, keys outside ma:v1:*; allowed: GET/SET/PING"


def redis_maxmemory(config: StackConfig) -> str:
    host = inside(config.redis_host)
    limit = int(inspect_container(config.redis_host)["HostConfig"].get("Memory") or 0)
    answer = host.run(redis_admin_cli(config, "CONFIG GET maxmemory*"))
    words = answer.stdout.split()
    settings = dict(zip(words[::2], words[1::2], strict=False))
    maxmemory = int(settings.get("maxmemory", "0") or 0)
    policy = settings.get("maxmemory-policy", "")
    if not limit:
        raise CheckFailed("the container has no memory limit")
    if not 0 < maxmemory <= limit * 0.9:
        raise CheckFailed(f"maxmemory {maxmemory} is not below 90% of the limit {limit}")
    if policy not in {"allkeys-lru", "allkeys-lfu"}:
        raise CheckFailed(f"maxmemory-policy is {policy!r}: a full cache would refuse writes")
    share = 100 * maxmemory // limit
    return f"maxmemory {maxmemory >> 20} MiB ({share}% of {limit >> 20} MiB), {policy}"


def _prometheus_api(config: StackConfig, path: str) -> Any:
    address = docker_host.container_ip(config.prometheus_name, config.network_name)
    answer = httpx.get(f"http://{address}:{PROMETHEUS_PORT}{path}", timeout=5)
    if answer.status_code != 200:
        raise CheckFailed(f"GET {path}: HTTP {answer.status_code}")
    return answer.json()["data"]


def prometheus_targets(config: StackConfig) -> str:
    """Every replica's address is an active target whose last scrape succeeded (a fresh
    Prometheus scrapes within its interval: waited for, bounded)."""
    wanted = {
        f"{docker_host.container_ip(name, config.network_name)}:{API_PORT}"
        for name in api_replica_names(config)
    }
    deadline = time.monotonic() + 45
    while True:
        active = _prometheus_api(config, "/api/v1/targets")["activeTargets"]
        health = {t["labels"].get("instance"): t["health"] for t in active}
        if all(health.get(target) == "up" for target in wanted):
            return f"{len(wanted)} target(s) up: {', '.join(sorted(wanted))}"
        if time.monotonic() >= deadline:
            raise CheckFailed(f"targets: {json.dumps(health)}; wanted up: {sorted(wanted)}")
        time.sleep(2)


def prometheus_rules(config: StackConfig) -> str:
    groups = _prometheus_api(config, "/api/v1/rules")["groups"]
    rules = [rule["name"] for group in groups for rule in group.get("rules", [])]
    if not rules:
        raise CheckFailed("no rules loaded")
    return f"{len(rules)} rules in {len(groups)} group(s)"
