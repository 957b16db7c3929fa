"""Blocking work off the event loop, safely against cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import suppress
from typing import TypeVar

T = TypeVar("T")


async def in_thread(func: Callable[..., T], *args: object) -> T:
    """``asyncio.to_thread`` that lets the thread finish even if the caller is cancelled.

    A cancelled await must not leave a thread using an fd that the caller then closes.
    """
    task = asyncio.ensure_future(asyncio.to_thread(func, *args))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with suppress(BaseException):
            await asyncio.wait_for(asyncio.shield(task), timeout=30)
        raise
