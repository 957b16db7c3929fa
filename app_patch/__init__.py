"""Persistence for media-analysis-api: tracked history in PostgreSQL, a Redis cache, a
content-addressed file store, and graceful degradation when any of them is away.

The public entry point is ``install``::

    from app_patch import install

    install(app, analyse=..., analysis_types=..., analysis_errors=(...,))

It is imported on first use, so the ops tools that only need ``app_patch.settings`` or
``app_patch.db`` do not load FastAPI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "1.0.0"
__all__ = ["__version__", "install"]

if TYPE_CHECKING:
    from app_patch.wiring import install


def __getattr__(name: str) -> Any:
    if name == "install":
        from app_patch.wiring import install

        return install
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
