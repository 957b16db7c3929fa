"""The reference media-analysis-api with the persistence patch installed.

Served by ``invoke serve`` or ``uvicorn api.main:app``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from api.analysis import ANALYSIS_TYPES, AnalysisError, AnalysisOutcome, FileFacts, run_analysis
from app_patch import __version__, install
from app_patch.settings import Settings

VERSION = __version__
"""The API's version in its OpenAPI document: the kit's own (``app_patch.__version__``)."""


def analyse(analysis_type: str, path: Path, sha256: str, size_bytes: int) -> AnalysisOutcome:
    return run_analysis(analysis_type, FileFacts(path=path, sha256=sha256, size_bytes=size_bytes))


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(
        title="media-analysis-api",
        version=VERSION,
        description="Analyses uploaded media and keeps a tracked, persistent history.",
    )
    install(
        app,
        analyse=analyse,
        analysis_types=ANALYSIS_TYPES,
        analysis_errors=(AnalysisError,),
        settings=settings,
    )
    return app


app = create_app()
