"""What this checkout started, and who "this checkout" is.

``up`` writes a :class:`StackRecord` to ``.data/infra-stack.json`` (``MA_INFRA_STATE_FILE``
moves it: a test stack, a second checkout); every other task reads it to act on the same
stack, and ``down`` removes it. The record names the engine, the compose project, the mode,
the API's address and the stack's **owner**: ``checkout:<id>`` for the compose and embedded
engines (``<id>`` is random, made once and kept in ``checkout-id`` beside the record, so it
survives ``down``), ``pulumi:<project>/<stack>`` for Pulumi. Every container the stack
creates carries the owner in the :data:`OWNER_LABEL` label; tasks compare the two before
they touch a container, so a second checkout (or another Pulumi stack) on the same Docker
host is refused instead of stopped.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from infra.config import DATA_DIR, StackConfig, config_from_env
from infra.engines.kinds import EngineError, EngineKind
from infra.stack import OWNER_LABEL

__all__ = [
    "OWNER_LABEL",
    "StackRecord",
    "checkout_owner",
    "clear",
    "config_or_env",
    "load",
    "save",
    "state_file",
]
STATE_ENV = "MA_INFRA_STATE_FILE"


def state_file() -> Path:
    """The record's path (read at each call: a test or a shell may point it elsewhere)."""
    return Path(os.environ.get(STATE_ENV) or DATA_DIR / "infra-stack.json")


def state_dir() -> Path:
    """Where this checkout keeps its local state beside the record (pid files, logs)."""
    return state_file().parent


def checkout_id(*, create: bool = False) -> str | None:
    """This checkout's id (``checkout-id`` beside the record); made when ``create``."""
    path = state_dir() / "checkout-id"
    try:
        found = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        found = ""
    if found or not create:
        return found or None
    path.parent.mkdir(parents=True, exist_ok=True)
    made = secrets.token_hex(8)
    try:
        with path.open("x", encoding="ascii") as out:  # two first ups race: one id wins
            out.write(made + "\n")
    except FileExistsError:
        return path.read_text(encoding="ascii").strip() or made
    return made


def checkout_owner(*, create: bool = False) -> str | None:
    """``checkout:<id>``: the owner value of stacks this checkout starts with compose."""
    found = checkout_id(create=create)
    return f"checkout:{found}" if found else None


@dataclass(frozen=True)
class StackRecord:
    """What ``up`` started. ``owner`` is None only in records written before owners existed
    (their containers carry no owner label)."""

    engine: EngineKind
    owner: str | None = None
    project: str | None = None
    config: StackConfig | None = None
    api_url: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mode(self) -> str | None:
        return self.config.mode if self.config is not None else None


def load() -> StackRecord | None:
    """The record, or None when nothing is recorded (or it is unreadable)."""
    try:
        raw: dict[str, Any] = json.loads(state_file().read_text(encoding="utf-8"))
        engine = EngineKind(raw["engine"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    config = raw.get("config")
    known = {f.name for f in fields(StackConfig)}
    return StackRecord(
        engine=engine,
        owner=raw.get("owner"),
        project=raw.get("project"),
        config=StackConfig(**{k: v for k, v in config.items() if k in known}) if config else None,
        api_url=raw.get("api_url") or raw.get("local_api"),
        extra={k: v for k, v in raw.get("extra", {}).items()},
    )


def config_or_env() -> StackConfig:
    """The recorded stack's config, else the ``MA_INFRA_*`` environment's."""
    found = load()
    return (found.config if found else None) or config_from_env(os.environ)


def load_for(kind: EngineKind) -> StackRecord | None:
    """The record, like :func:`load`, refusing one of another engine's stack (an
    :class:`EngineError`): ``up`` of one engine never starts beside another's stack."""
    previous = load()
    if previous is not None and previous.engine is not kind:
        raise EngineError(f"this checkout runs a {previous.engine} stack: run invoke down first")
    return previous


def save(record: StackRecord) -> Path:
    """Write the record atomically (a crash leaves the old one or the new one)."""
    path = state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "engine": str(record.engine),
        "owner": record.owner,
        "project": record.project,
        "config": asdict(record.config) if record.config is not None else None,
        "api_url": record.api_url,
        "extra": record.extra,
    }
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(document, indent=2), encoding="utf-8")
    os.replace(temporary, path)
    return path


def clear() -> None:
    """Forget the stack (``down`` did its job); the checkout id stays."""
    state_file().unlink(missing_ok=True)
