"""Local stack secrets: the passwords in ``.data/stack.env``, and the files containers read.

``.data/stack.env`` (mode 0600) holds one ``MA_INFRA_<SECRET>=`` line per entry of
:data:`infra.config.STACK_SECRETS`, created with random values by ``invoke secrets``; a secret
added to that list later is appended, existing values are never changed. Values already in
the environment win over the file. Only for stacks started by ``invoke up``; a Pulumi stack
keeps its passwords as config secrets and uploads the files itself.

The containers never get a password in their environment: each reads a file under
``/run/secrets`` (see :class:`infra.spec.SecretFile`). For compose they are written here, one
per consumer, under ``.data/secrets/<service>/<name>`` (directories 0700), and bind-mounted
read-only. docker-compose v1 mounts a file with its host owner and mode (compose's ``uid``/
``gid``/``mode`` apply to swarm only), so the owner is set here: run as root (as ``invoke up``
on a Docker host usually is), each file is ``0400`` owned by the uid that reads it (10001 for
the API's URLs, 0 for the server entrypoints, which read theirs before dropping to their
service user). Run as another user, that chown is impossible: the files are then ``0444``, so
the container user can read them, and the 0700 directories keep other host users out.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Mapping
from pathlib import Path

from dotenv import dotenv_values

from infra.config import DATA_DIR, STACK_SECRETS, env_key
from infra.spec import SecretFile, Stack

STACK_ENV = DATA_DIR / "stack.env"
SECRETS_ROOT = Path(os.environ.get("MA_INFRA_SECRETS_DIR") or DATA_DIR / "secrets")
"""Where compose's secret files are written (``MA_INFRA_SECRETS_DIR`` overrides)."""
PASSWORD_VARS = tuple(env_key(secret.name) for secret in STACK_SECRETS)


def ensure_stack_env(path: Path = STACK_ENV) -> list[str]:
    """Create the file, or append the variables it lacks, with fresh random passwords.

    Returns the variables written (empty when the file already had them all)."""
    existing = dotenv_values(path) if path.exists() else {}
    missing = [name for name in PASSWORD_VARS if not (existing.get(name) or "").strip()]
    if not missing:
        return []
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = path.read_text(encoding="utf-8") if path.exists() else ""
    if kept and not kept.endswith("\n"):
        kept += "\n"
    added = "".join(f"{name}={secrets.token_hex(24)}\n" for name in missing)
    _atomic_write(path, kept + added, 0o600, None)
    return missing


def host_path(service: str, secret_file: SecretFile, root: Path | None = None) -> Path:
    """The host file compose mounts at ``secret_file.target`` in ``service``."""
    return (root or SECRETS_ROOT) / service / secret_file.name


def write_secret_files(
    spec: Stack, values: Mapping[str, str], root: Path | None = None
) -> list[str]:
    """Write every service's secret files from ``values`` (secret name -> value).

    Returns the services with a changed file they read at start, which the caller recreates
    (a running container keeps the file it started with: each is replaced, not rewritten)."""
    root = root or SECRETS_ROOT
    changed: list[str] = []
    _private_dir(root)
    for service in spec.services:
        if not service.secret_files:
            continue
        _private_dir(root / service.name)
        touched = False
        for secret_file in service.secret_files:
            path = host_path(service.name, secret_file, root)
            content = secret_file.content.resolve(values)
            owner = (secret_file.uid, secret_file.gid) if os.geteuid() == 0 else None
            mode = secret_file.mode if owner is not None else 0o444
            if _unchanged(path, content, mode, owner):
                continue
            _atomic_write(path, content, mode, owner)
            touched = touched or secret_file.read_at_start
        if touched:
            changed.append(service.name)
    return changed


def secret_files_present(spec: Stack, root: Path | None = None) -> bool:
    """Every file the spec mounts exists (compose refuses to start without them)."""
    return all(
        host_path(service.name, secret_file, root).is_file()
        for service in spec.services
        for secret_file in service.secret_files
    )


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)


def _unchanged(path: Path, content: str, mode: int, owner: tuple[int, int] | None) -> bool:
    try:
        status = path.stat()
        same = path.read_text(encoding="utf-8") == content
    except (FileNotFoundError, PermissionError, UnicodeDecodeError):
        return False
    if owner is not None and (status.st_uid, status.st_gid) != owner:
        return False
    return same and (status.st_mode & 0o777) == mode


def _atomic_write(path: Path, content: str, mode: int, owner: tuple[int, int] | None) -> None:
    """Write a sibling temp file with its final owner and mode, then rename it over ``path``:
    a reader sees the old file or the new one, never a partial one, and never a moment of
    wider permissions."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        if owner is not None:
            os.chown(tmp, *owner)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
