"""Local stack passwords: ``.data/stack.env`` (mode 0600), created once with random values.

Only for stacks started by ``invoke up``; a Pulumi stack keeps its passwords as config
secrets. Values already in the environment win over the file.
"""

from __future__ import annotations

import os
import secrets

from infra.engine import DATA_DIR

STACK_ENV = DATA_DIR / "stack.env"
PASSWORD_VARS = ("MA_INFRA_POSTGRES_PASSWORD", "MA_INFRA_REDIS_PASSWORD")


def ensure_stack_env() -> bool:
    """Create the file with fresh passwords if it does not exist; True when created."""
    if STACK_ENV.exists():
        return False
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    lines = [f"{name}={secrets.token_hex(24)}" for name in PASSWORD_VARS]
    fd = os.open(STACK_ENV, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return True
