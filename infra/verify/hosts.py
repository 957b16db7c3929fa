"""The testinfra hosts the checks use: ``local://`` for ``docker inspect``, ``docker://`` inside."""

from __future__ import annotations

import json
from typing import Any

import testinfra

from infra.verify.results import CheckFailed


def local() -> Any:
    return testinfra.get_host("local://")


def inside(container: str) -> Any:
    """A testinfra host inside a running container (commands run as its configured user)."""
    status = inspect_container(container)["State"].get("Status")
    if status != "running":
        raise CheckFailed(f"{container} is {status}, not running")
    return testinfra.get_host(f"docker://{container}")


def inspect_container(container: str) -> dict[str, Any]:
    result = local().run("docker inspect --type container %s", container)
    if result.rc != 0:
        reason = (result.stderr.strip().splitlines() or ["docker inspect failed"])[0]
        raise CheckFailed(f"cannot inspect {container} (is the stack up?): {reason}")
    attrs: dict[str, Any] = json.loads(result.stdout)[0]
    return attrs
