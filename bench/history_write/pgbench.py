"""The pgbench limit: a custom script inserting one job and its result per transaction."""

from __future__ import annotations

import os

from bench.common import BenchError, pg_binary, run_timed, tail
from bench.env import BenchEnv, PgTarget
from bench.history_write.job import ANALYZER, DURATION_MS, RESULT, SUMMARY
from bench.history_write.sizes import Sizes
from bench.parsers import pgbench_failed, pgbench_tps

PGBENCH_SCRIPT = """\\set i random(1, 1000000000)
WITH job AS (
  INSERT INTO analysis_jobs (id, analysis_type, status, params, client_ref, started_at,
                             finished_at, attempts)
  VALUES (gen_random_uuid(), 'basic', 'succeeded', jsonb_build_object('bench', :i), 'bench',
          now(), now(), 1)
  RETURNING id
)
INSERT INTO analysis_results (id, job_id, result, summary, engine_name, engine_version,
                              duration_ms)
SELECT gen_random_uuid(), job.id, '{result}'::jsonb, '{summary}', '{engine}', '{version}',
       {duration} FROM job;
"""


def pgbench_script() -> str:
    import json

    return (
        PGBENCH_SCRIPT.replace("{result}", json.dumps(RESULT))
        .replace("{summary}", SUMMARY)
        .replace("{engine}", ANALYZER[0])
        .replace("{version}", ANALYZER[1])
        .replace("{duration}", str(DURATION_MS))
    )


def run_pgbench(env: BenchEnv, db_url: str, sizes: Sizes) -> float:
    binary = pg_binary("pgbench")
    if binary is None:
        raise BenchError("pgbench not found (pgserver's bin dir or PATH)")
    script = env.scratch_dir("pgbench") / "insert_job.sql"
    script.write_text(pgbench_script(), encoding="utf-8")
    target = PgTarget.from_url(db_url)
    args: list[str | os.PathLike[str]] = [
        binary, "-n", "-c", str(sizes.concurrency), "-j", "2", "-T", str(sizes.pgbench_s),
        "-f", script, *target.args(), target.database,
    ]  # fmt: skip
    done = run_timed(args, env=target.env(), timeout_s=sizes.pgbench_s + 60)
    if done.returncode != 0:
        raise BenchError(f"pgbench failed ({done.returncode}): {tail(done.stderr + done.stdout)}")
    failed = pgbench_failed(done.stdout)
    if failed:
        raise BenchError(f"pgbench reported {failed} failed transactions")
    return pgbench_tps(done.stdout)
