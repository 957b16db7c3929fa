"""The finished job every variant writes: the same columns and values on every side."""

from __future__ import annotations

import datetime as dt
from typing import Any

from api.analysis import ANALYZER_NAME, ANALYZER_VERSION
from app_patch import repository as repo
from app_patch.repository import NewJob
from app_patch.schemas import ResultIn

RESULT: dict[str, Any] = {
    "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "size_bytes": 4096,
    "content_type": "text/plain",
}
SUMMARY = "text/plain, 4096 bytes"
ANALYZER = (ANALYZER_NAME, ANALYZER_VERSION)
DURATION_MS = 0.42


def result_in() -> ResultIn:
    return ResultIn(
        result=RESULT,
        summary=SUMMARY,
        engine_name=ANALYZER[0],
        engine_version=ANALYZER[1],
        duration_ms=DURATION_MS,
    )


def new_job(i: int) -> NewJob:
    return NewJob(analysis_type="basic", params={"bench": i}, client_ref="bench")


def finished_job(i: int, when: dt.datetime) -> repo.FinishedJob:
    return repo.FinishedJob(new=new_job(i), started_at=when, finished_at=when, result=result_in())
