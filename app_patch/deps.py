"""FastAPI dependencies of the patch's routes, each a named type: a route's signature says
what it touches, and tests swap one with ``app.dependency_overrides``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app_patch.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    """The runtime the lifespan built (``app_patch.wiring.install``)."""
    runtime: Runtime = request.app.state.ma_runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
