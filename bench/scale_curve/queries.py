"""The timed history queries, called through the repository as the API calls them."""

from __future__ import annotations

import datetime as dt
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import psycopg
from sqlalchemy.ext.asyncio import AsyncSession

from app_patch import repository as repo
from app_patch.db import create_engine, create_session_factory
from app_patch.models import JobStatus
from app_patch.schemas import HistoryFilter, encode_cursor
from bench.common import BenchError
from bench.env import BenchEnv
from bench.scale_curve.ids import seq_uuid
from bench.scale_curve.plans import PlanRecorder, plan_summary
from bench.scale_curve.seed import Seeded
from bench.scale_curve.sizes import History, Sizes

PAGE = 50  # the API's default page size (GET /analyses)
DEEP_PAGE = 1_000
WINDOW = dt.timedelta(days=30)


@dataclass(frozen=True)
class Query:
    key: str
    label: str
    tables: tuple[str, ...]  # whose plans go into the notes


QUERIES = (
    Query("newest", "newest page", ("analysis_jobs", "analysis_results")),
    Query("deep", f"page {DEEP_PAGE:,} deep (keyset)", ("analysis_jobs", "analysis_results")),
    Query("filtered", "status=failed + 30-day range", ("analysis_jobs", "analysis_results")),
    Query("get", "get_job(random id)", ("analysis_jobs", "analysis_results")),
)
Call = Callable[[AsyncSession], Awaitable[object]]


def deep_cursor(libpq_url: str, jobs: int) -> tuple[str, int]:
    """The cursor the API issues at the end of page ``DEEP_PAGE`` (or of the middle page when
    the history is shorter than twice that), read straight from the index order."""
    page = min(DEEP_PAGE, max(1, jobs // PAGE // 2))
    with psycopg.connect(libpq_url) as conn:
        row = conn.execute(
            "SELECT created_at, id FROM analysis_jobs ORDER BY created_at DESC, id DESC"
            " OFFSET %s LIMIT 1",
            (page * PAGE - 1,),
        ).fetchone()
    if row is None:
        raise BenchError(f"no row at page {page}")
    return encode_cursor(row[0], row[1]), page + 1


def calls(seeded: Seeded, cursor: str, rng: random.Random) -> dict[str, Call]:
    """One call of each query; every call draws its own window or id."""
    now = dt.datetime.fromtimestamp(seeded.now, dt.UTC)

    async def newest(session: AsyncSession) -> object:
        return await repo.list_history(session, limit=PAGE)

    async def deep(session: AsyncSession) -> object:
        page = await repo.list_history(session, limit=PAGE, cursor=cursor)
        if len(page.items) != PAGE:
            raise BenchError(f"deep page has {len(page.items)} jobs")
        return page

    async def filtered(session: AsyncSession) -> object:
        start = now - dt.timedelta(days=30 + rng.random() * 330)
        window = HistoryFilter(
            status=JobStatus.failed, created_from=start, created_to=start + WINDOW
        )
        return await repo.list_history(session, limit=PAGE, filters=window)

    async def get(session: AsyncSession) -> object:
        job = await repo.get_job(session, seq_uuid("job", rng.randrange(seeded.jobs)))
        if job is None:
            raise BenchError("get_job missed a seeded id")
        return job

    return {"newest": newest, "deep": deep, "filtered": filtered, "get": get}


async def time_queries(env: BenchEnv, histories: list[History], sizes: Sizes) -> None:
    """Per size and query: the latency of each timed call (ms), and the EXPLAIN ANALYZE
    summaries of one untimed call. One session per call, as the service's reads; a warm-up
    first gets psycopg to prepare the statements. The sizes take turns call by call, in
    rotating order, so a swing in the machine's load hits them alike."""
    engines = [create_engine(env.settings(h.db_url).db, h.db_url) for h in histories]
    try:
        runs = []
        for n, (history, engine) in enumerate(zip(histories, engines, strict=True)):
            queries = calls(history.seeded, history.cursor, random.Random(7 + n))
            runs.append((history, engine, create_session_factory(engine), queries))
            history.latencies_ms = {q.key: [] for q in QUERIES}
        for history, engine, sessions, queries in runs:
            for _ in range(10):
                for query in QUERIES:
                    async with sessions() as session:
                        await queries[query.key](session)
            for query in QUERIES:
                with PlanRecorder(engine, analyze=True) as recorder:
                    async with sessions() as session:
                        await queries[query.key](session)
                history.plans[query.key] = [plan_summary(doc) for _, doc in recorder.plans]
        for i in range(sizes.calls):
            for query in QUERIES:
                for history, _, sessions, queries in runs[i % len(runs) :] + runs[: i % len(runs)]:
                    started = time.perf_counter()
                    async with sessions() as session:
                        await queries[query.key](session)
                    history.latencies_ms[query.key].append((time.perf_counter() - started) * 1000)
    finally:
        for engine in engines:
            await engine.dispose()
