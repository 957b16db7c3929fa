"""Graceful degradation: what counts as a PostgreSQL outage (the breaker is ``app_patch.breaker``).

While PostgreSQL is down the API keeps analysing and defers the history to the outbox
(``app_patch.outbox``); the breaker decides when it is down.
"""

from __future__ import annotations

import asyncio

import psycopg
from sqlalchemy import exc as sa_exc

from app_patch.breaker import Breaker, DependencyUnavailableError

__all__ = ["Breaker", "DependencyUnavailableError", "is_database_outage"]


def is_database_outage(exc: BaseException) -> bool:
    """Connection-level failures count against the breaker; bad queries and conflicts do not."""
    if isinstance(exc, sa_exc.DBAPIError):
        return bool(exc.connection_invalidated) or isinstance(
            exc, sa_exc.OperationalError | sa_exc.InterfaceError
        )
    if isinstance(exc, sa_exc.TimeoutError | sa_exc.PendingRollbackError):
        return True  # pool exhausted by hung connections; a transaction broken by a dead one
    # a bare OSError may come from the file store (EIO, EROFS): never PostgreSQL's breaker
    return isinstance(exc, psycopg.OperationalError | ConnectionError | asyncio.TimeoutError)
