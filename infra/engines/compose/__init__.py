"""The compose engine: the rendered compose file on the local Docker engine, run by the
compose CLI (``docker compose`` v2 preferred; Debian bookworm packages only the v1 Python tool
``docker-compose`` 1.29, which reads the same file).

``up`` builds the images (streaming progress), renders the spec with the checkout's owner
label on every container, adopts a network or volume that exists but is not this project's
(``external: true``: used, never replaced or removed), writes the secret files and starts the
file; no secret ever reaches the CLI's arguments or environment. Tasks never start a Docker
daemon: when none answers, one line says what to run.

Modules: ``project`` (the CLI, the rendered file, adoption, start and stop), ``engine``
(:class:`ComposeEngine`), ``rollout`` (``deploy``: :class:`Rollout`).
"""

from infra.engines.compose.engine import ComposeEngine
from infra.engines.compose.project import (
    ComposeError,
    adopt_existing,
    compose_command,
    existing_resources,
    rendered_path,
    run,
    start,
    stop,
    validate,
    volume_plan,
)
from infra.engines.compose.rollout import Rollout

__all__ = [
    "ComposeEngine",
    "ComposeError",
    "Rollout",
    "adopt_existing",
    "compose_command",
    "existing_resources",
    "rendered_path",
    "run",
    "start",
    "stop",
    "validate",
    "volume_plan",
]
