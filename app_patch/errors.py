"""Turn expected operational failures into one readable line for the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from alembic.util.exc import CommandError
from pydantic import ValidationError
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

from app_patch.db import DatabaseConfigError
from app_patch.embedded import EmbeddedServerError


class OperatorError(Exception):
    """A failure an operator can fix; the message says how, on one line."""


def describe(exc: BaseException) -> str | None:
    """One line for a known failure, None for a bug (which should keep its traceback)."""
    if isinstance(exc, OperatorError | DatabaseConfigError | EmbeddedServerError):
        return str(exc)
    if isinstance(exc, ArgumentError):
        return f"malformed database URL: {exc}"
    if isinstance(getattr(exc, "orig", None), psycopg.errors.InsufficientPrivilege):
        return (
            "permission denied in the database: migrations need the schema owner's URL "
            "(MA_DB_MIGRATION_URL), the API and retention the application role's (MA_DB_URL)"
        )
    if isinstance(exc, OperationalError | DBAPIError):
        detail = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        return f"database unreachable: {detail}"
    if isinstance(exc, CommandError):
        return f"migration error: {exc}"
    if isinstance(exc, ValidationError):
        return f"invalid settings: {_settings_problems(exc)}"
    if isinstance(exc, psycopg.OperationalError):
        return f"database unreachable: {str(exc).strip().splitlines()[0]}"
    return None


def _settings_problems(exc: ValidationError) -> str:
    """Name each bad setting by its env var, e.g. ``MA_DB_POOL_SIZE``."""
    from app_patch import settings as settings_module

    group = getattr(settings_module, exc.title, None)
    prefix = str(group.model_config.get("env_prefix", "")) if group is not None else ""
    return "; ".join(
        f"{(prefix + '_'.join(str(p) for p in err['loc'])).upper() or exc.title}: {err['msg']}"
        for err in exc.errors()
    )


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Re-raise known failures as ``SystemExit`` with a one-line message (exit code 1)."""
    try:
        yield
    except Exception as exc:
        line = describe(exc) or describe(exc.__cause__ or exc)
        if line is None:
            raise
        raise SystemExit(f"error: {line}") from None
