"""Cold ``invoke migrate`` on an empty database: wall time of the subprocess.

Each repetition creates an empty database on the benchmark's server and runs
``python -m invoke migrate`` with ``MA_DB_URL`` pointing at it (the operator's command: a new
interpreter, the tasks package, Alembic, the advisory lock, every revision).

Limit: the same DDL (``alembic upgrade head --sql``, generated once, untimed) executed by psycopg
in one transaction on another empty database, in-process. Context: the interpreter + invoke
floor (``python -m invoke --list``) and Alembic's online upgrade in-process
(``app_patch.migrate.upgrade``), which together explain the gap.
"""

from __future__ import annotations

import io
import os
import sys
import time
from dataclasses import dataclass

import psycopg
from alembic import command

from app_patch import migrate as migrations
from app_patch.db import libpq_url
from app_patch.settings import PROJECT_ROOT
from bench.common import BenchError, run_timed, tail
from bench.env import BenchEnv
from bench.report import BenchResult, Ratio, Series

NAME = "migrate"
TITLE = "Cold invoke migrate (empty database)"


@dataclass(frozen=True)
class Sizes:
    repetitions: int


QUICK = Sizes(repetitions=3)
FULL = Sizes(repetitions=7)


def offline_sql(url: str) -> str:
    """The upgrade's DDL as Alembic's ``--sql`` mode renders it."""
    config = migrations.alembic_config(url)
    buffer = io.StringIO()
    config.output_buffer = buffer
    command.upgrade(config, "head", sql=True)
    text = buffer.getvalue()
    if "CREATE TABLE" not in text:
        raise BenchError("alembic --sql produced no DDL")
    return text


def subprocess_env(db_url: str) -> dict[str, str]:
    env = {**os.environ, "MA_DB_URL": db_url}
    env.pop("DATABASE_URL", None)
    return env


def invoke(args: list[str], db_url: str) -> float:
    done = run_timed(
        [sys.executable, "-m", "invoke", *args],
        env=subprocess_env(db_url),
        cwd=PROJECT_ROOT,
        timeout_s=300,
    )
    if done.returncode != 0:
        raise BenchError(f"invoke {' '.join(args)} failed: {tail(done.stdout + done.stderr)}")
    if args == ["migrate"] and "migrated base ->" not in done.stdout:
        raise BenchError(f"invoke migrate did not start from an empty database: {done.stdout}")
    return done.seconds


def raw_ddl(db_url: str, ddl: str) -> float:
    with psycopg.connect(libpq_url(db_url)) as conn:
        started = time.perf_counter()
        conn.execute(ddl.encode())  # the whole script, one transaction (psycopg: not autocommit)
        conn.commit()
        return time.perf_counter() - started


def alembic_in_process(db_url: str) -> float:
    started = time.perf_counter()
    migrations.upgrade(db_url)
    return time.perf_counter() - started


def run(env: BenchEnv, quick: bool) -> BenchResult:
    sizes = QUICK if quick else FULL
    probe = env.create_database("sqlgen", migrate=False)
    ddl = offline_sql(probe)
    env.drop_database(probe)
    ours: list[float] = []
    limit: list[float] = []
    floor: list[float] = []
    inproc: list[float] = []
    for _ in range(sizes.repetitions):
        for sink, measure in (
            (ours, lambda url: invoke(["migrate"], url)),
            (limit, lambda url: raw_ddl(url, ddl)),
            (inproc, alembic_in_process),
            (floor, lambda url: invoke(["--list"], url)),
        ):
            url = env.create_database("cold", migrate=False)
            sink.append(measure(url))
            env.drop_database(url)
    return BenchResult(
        name=NAME,
        title=TITLE,
        series=[
            Series(
                "ours",
                "ours: invoke migrate (subprocess wall)",
                "s",
                ours,
                better="lower",
                note="new interpreter, the tasks package, Alembic online, advisory lock",
            ),
            Series(
                "raw",
                "same DDL via psycopg, in-process",
                "s",
                limit,
                role="limit",
                better="lower",
                note="alembic --sql output, one transaction",
            ),
            Series(
                "inproc",
                "Alembic upgrade in-process",
                "s",
                inproc,
                role="context",
                better="lower",
                note="app_patch.migrate.upgrade, no new interpreter",
            ),
            Series(
                "floor",
                "invoke --list (interpreter + tasks import)",
                "s",
                floor,
                role="context",
                better="lower",
                note="nothing migrated",
            ),
        ],
        ratios=[Ratio("ours", "raw"), Ratio("inproc", "raw")],
        params={"repetitions": sizes.repetitions, "ddl_bytes": len(ddl)},
        notes=[
            "Every measurement gets its own freshly created empty database (CREATE DATABASE "
            "untimed).",
        ],
    )
