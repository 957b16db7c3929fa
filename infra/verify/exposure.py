"""What a container shows in ``docker inspect``: no secret in its env or command line, and
whose ``X-Forwarded-*`` headers the API believes."""

from __future__ import annotations

import re
import shlex
from urllib.parse import quote, unquote, urlsplit

from infra.spec import SECRETS_DIR
from infra.verify.hosts import inside, inspect_container
from infra.verify.results import CheckFailed

URL_WITH_PASSWORD = re.compile(r"://[^/@\s:]*:[^/@\s]+@")
_SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|_URL$", re.I)


def secret_variable(key: str, value: str) -> bool:
    """A variable that is set and named like a secret (a ``*_FILE`` one names its file)."""
    return bool(_SECRET_NAME.search(key)) and not key.endswith("_FILE") and bool(value)


def no_secret_exposed(container: str, all_containers: tuple[str, ...]) -> str:
    """No secret value (any container's, read from their own secret files) and nothing that
    looks like one (a *PASSWORD* variable, a URL with a password) in the container's
    environment or command line as ``docker inspect`` shows them."""
    attrs = inspect_container(container)
    config = attrs.get("Config") or {}
    env = [str(item) for item in config.get("Env") or []]
    raw = [
        attrs.get("Path"),
        *(attrs.get("Args") or []),
        *(config.get("Cmd") or []),
        *(config.get("Entrypoint") or []),
    ]
    words = [str(word) for word in raw if word]
    values = secret_values(all_containers)
    problems = []
    for item in env:
        key, _, value = item.partition("=")
        if secret_variable(key, value):
            problems.append(f"env {key} is set")
        if URL_WITH_PASSWORD.search(value):
            problems.append(f"env {key} holds a URL with a password")
    for text in env + words:
        if any(secret in text for secret in values):
            problems.append(f"a secret value appears in {text.partition('=')[0][:40]!r}")
    if problems:
        raise CheckFailed("; ".join(sorted(set(problems))))
    return f"{len(env)} env vars and {len(words)} args checked against {len(values)} secret values"


def secret_values(containers: tuple[str, ...]) -> set[str]:
    """Every secret the stack's containers hold, from their files under /run/secrets (read
    inside each container as its own user), passwords in URLs also as they appear quoted."""
    values: set[str] = set()
    for container in containers:
        try:
            host = inside(container)
        except CheckFailed:
            continue
        listing = host.run(f"ls -1 {SECRETS_DIR} 2>/dev/null")
        for name in listing.stdout.split():
            text = host.run(f"cat {SECRETS_DIR}/{shlex.quote(name)}").stdout.strip()
            if not text:
                continue
            password = urlsplit(text).password if "://" in text else None
            if password:
                values |= {unquote(password), password}
            else:
                values |= {text, quote(text, safe="")}
    return {value for value in values if len(value) >= 8}


def forwarded_allow_ips(container: str) -> str:
    attrs = inspect_container(container)
    config = attrs.get("Config") or {}
    words = [
        *(config.get("Entrypoint") or []),
        *(config.get("Cmd") or []),
        *(attrs.get("Args") or []),
    ]
    env = dict(str(item).partition("=")[::2] for item in config.get("Env") or [])
    if "--forwarded-allow-ips" in words:
        raise CheckFailed(f"the command sets --forwarded-allow-ips: {' '.join(map(str, words))}")
    trusted = env.get("FORWARDED_ALLOW_IPS", "127.0.0.1 (uvicorn's default)")
    if "*" in trusted:
        raise CheckFailed("FORWARDED_ALLOW_IPS trusts any client")
    return f"FORWARDED_ALLOW_IPS={trusted}"
