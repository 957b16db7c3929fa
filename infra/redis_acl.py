"""The Redis users of the stack and what each may do, in one place.

Why: the API used to log in as ``default``, which may run FLUSHALL, CONFIG SET, SHUTDOWN or
DEBUG and read ``requirepass`` back with CONFIG GET. Now the image's entrypoint disables
``default`` and declares two users from these rules (passwords stored only as SHA-256):

* the app user: keys ``ma:v1:*`` only, and exactly the commands ``app_patch/cache/client.py`` sends.
  Those are ``GET`` and ``PING`` directly, ``EVALSHA`` for its registered Lua scripts
  (``SCRIPT LOAD`` when Redis answers NOSCRIPT) and, inside the scripts, ``GET``, ``SET``,
  ``INCR`` and ``INCRBY`` (Redis checks a script's calls against the caller's ACL too).
  ``tests/infra/test_redis_acl.py`` derives that list from the module's source and drives the
  real cache through a user with these rules, with an empty ``ACL LOG`` afterwards.
* the admin user (healthcheck, operators, ``invoke verify``): everything.
"""

from __future__ import annotations

from typing import Final

from app_patch.cache import PREFIX

APP_KEY_PATTERN: Final = f"{PREFIX}:*"
APP_COMMANDS: Final = ("get", "set", "incr", "incrby", "evalsha", "script|load", "ping")
"""Lower-case Redis commands (``command|subcommand``) the cache needs; nothing else."""

DENIED_TO_APP: Final[tuple[tuple[str, ...], ...]] = (
    ("FLUSHALL",),
    ("FLUSHDB",),
    ("CONFIG", "GET", "requirepass"),
    ("CONFIG", "SET", "maxmemory", "0"),
    ("DEBUG", "SLEEP", "0"),
    ("MODULE", "LIST"),
    ("SHUTDOWN",),
    ("KEYS", "*"),
    ("EVAL", "return 1", "0"),
    ("SCRIPT", "FLUSH"),
    ("ACL", "LIST"),
    ("INFO",),
)
"""Commands ``invoke verify`` asks ``ACL DRYRUN`` about: each must be refused to the app."""

ALLOWED_TO_APP: Final[tuple[tuple[str, ...], ...]] = (
    ("GET", f"{PREFIX}:verify"),
    ("SET", f"{PREFIX}:verify", "1", "PX", "1000"),
    ("PING",),
)
"""...and these must be allowed, so the check also proves the user exists and works."""

OUTSIDE_KEY: Final = ("GET", "not-ma:v1:key")
"""A key outside the app's prefix: refused."""


def app_rules() -> str:
    """ACL rules of the app user, after its name, ``on`` and its password hash."""
    commands = " ".join(f"+{command}" for command in APP_COMMANDS)
    return f"resetkeys resetchannels ~{APP_KEY_PATTERN} -@all {commands}"


def admin_rules() -> str:
    """ACL rules of the admin user: every key, channel and command."""
    return "~* &* +@all"


def maxmemory_bytes(limit_mb: int, percent: int) -> int:
    """``maxmemory`` for a container limited to ``limit_mb``: ``percent`` of it, so that
    Redis evicts (allkeys-lru) well before the kernel OOM-kills the container; the rest covers
    fragmentation, client buffers and the process itself."""
    return limit_mb * 1024 * 1024 * percent // 100
