"""PostgreSQL is SIGKILLed under continuous uploads, three times.

Acceptance: 0 answers >= 500, 0 dropped connections, every 2xx job present exactly once after
recovery, and after one retention run 0 files without a live row and 0 live rows without a
file.

A SIGKILL is not a fast shutdown: the postmaster gets no chance to close its backends' sockets
cleanly or write a shutdown checkpoint, so transactions die mid-commit (the app may never learn
whether its COMMIT landed) and the next start runs crash recovery.
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psycopg

from app_patch.db import create_engine, libpq_url
from app_patch.embedded import EmbeddedPostgres
from app_patch.retention import Policy, Sweeper, SweepReport
from app_patch.settings import RetentionSettings
from app_patch.storage import Storage
from tests.integration.api.harness import (
    LiveApp,
    fresh_settings,
    job_rows,
    ready,
    running_app,
    scalar,
    wait_for,
)
from tests.integration.api.kill_traffic import N_LOOPS, ROUNDS, Answer, run_traffic

REQUEST_TIMEOUT_S = 30.0
RECOVERY_TIMEOUT_S = 60.0
LEAK_MARKERS = ("SQL", "parameters", "Traceback")


# --------------------------------------------------------------------------- checks


def files_under(root: Path, area: str) -> set[str]:
    top = root / area
    if not top.exists():
        return set()
    return {path.relative_to(root).as_posix() for path in top.rglob("*") if path.is_file()}


async def live_media_keys(db_url: str) -> set[str]:
    async with await psycopg.AsyncConnection.connect(libpq_url(db_url), autocommit=True) as conn:
        cur = await conn.execute("SELECT storage_key FROM media_files WHERE deleted_at IS NULL")
        return {str(row[0]) for row in await cur.fetchall()}


async def run_retention(live: LiveApp) -> SweepReport:
    engine = create_engine(live.settings.db, live.db_url)
    try:
        storage = await Storage.open(live.settings.storage, clean_tmp=False)
        return await Sweeper(engine, storage, RetentionSettings(orphan_grace_s=0)).sweep()
    finally:
        await engine.dispose()


def recovered(probe: tuple[int, dict[str, Any]]) -> bool:
    body = probe[1]
    return body.get("outbox_backlog") == 0 and body.get("checks", {}).get("postgres") == "ok"


async def wait_recovered(client: httpx.AsyncClient) -> tuple[float, dict[str, Any]]:
    started = time.monotonic()
    _, body = await wait_for(
        lambda: ready(client),
        recovered,
        timeout_s=RECOVERY_TIMEOUT_S,
        interval_s=0.25,
    )
    return time.monotonic() - started, body


def job_id_of(answer: Answer) -> uuid.UUID:
    return uuid.UUID(json.loads(answer.body)["id"])


# --------------------------------------------------------------------------- the test


async def test_postgres_sigkill_under_uploads_loses_nothing(
    dedicated_pg: EmbeddedPostgres, redis_url: str, tmp_path: Path
) -> None:
    settings = fresh_settings(db_url=dedicated_pg.url, redis_url=redis_url, data_dir=tmp_path)
    settings.retention = RetentionSettings(orphan_grace_s=0)
    async with (
        running_app(settings) as live,
        live.client(timeout=REQUEST_TIMEOUT_S, connections=N_LOOPS * 2) as client,
    ):
        traffic_started = time.monotonic()
        traffic, timings = await run_traffic(client, dedicated_pg)
        traffic_s = time.monotonic() - traffic_started
        answers, dropped = traffic.answers, traffic.dropped

        codes = Counter(a.status for a in answers)
        by_phase = {
            phase: Counter(a.status for a in answers if a.phase == phase)
            for phase in ("up", "down")
        }
        latencies = sorted(a.seconds for a in answers)
        print(
            f"\ntraffic {traffic_s:.1f} s: {len(answers)} answers, {len(dropped)} dropped;"
            f" codes {dict(sorted(codes.items()))}; by phase"
            f" {{up: {dict(by_phase['up'])}, down: {dict(by_phase['down'])}}}"
        )
        if latencies:
            print(
                f"latency p50 {statistics.median(latencies):.3f} s,"
                f" p99 {latencies[int(len(latencies) * 0.99) - 1]:.3f} s,"
                f" max {latencies[-1]:.3f} s"
            )
        for n, t in enumerate(timings, 1):
            created_after = [
                a.sent_at - t.restarted_at
                for a in answers
                if a.status == 201 and a.sent_at >= t.restarted_at
            ]
            first_201 = f"{min(created_after):.2f} s" if created_after else "never"
            print(
                f"round {n}: postmaster {t.kill.pid} gone {t.kill.gone_after_s:.2f} s after"
                f" SIGKILL ({t.kill.backends} backends, {t.kill.backends_killed} outlived it,"
                f" stale lock files removed: {t.kill.stale_files_removed}); down"
                f" {t.down_s:.2f} s, restart() {t.restart_s:.2f} s, first 201 sent"
                f" {first_201} after the restart"
            )

        # the HTTP contract under the kills
        assert len(timings) == ROUNDS, f"only {len(timings)} kill rounds ran"
        server_errors = [a.described for a in answers if a.status >= 500]
        assert server_errors == [], f"{len(server_errors)} answers >= 500:\n" + "\n".join(
            server_errors[:20]
        )
        assert dropped == [], f"{len(dropped)} dropped connections:\n" + "\n".join(
            f"loop {d.loop} #{d.seq} ({d.phase}, {d.seconds:.2f} s): {d.error}"
            for d in dropped[:20]
        )
        leaks = [a.described for a in answers if any(marker in a.body for marker in LEAK_MARKERS)]
        assert leaks == [], "internals leaked into answers:\n" + "\n".join(leaks[:20])
        unexpected = [a.described for a in answers if a.status not in (200, 201, 202)]
        assert unexpected == [], "\n".join(unexpected[:20])
        assert codes[201] > 0 and codes[202] > 0, f"no outage was seen: {dict(codes)}"
        assert by_phase["down"][202] > 0, "nothing was deferred while PostgreSQL was dead"
        wrong_header = [
            a.described for a in answers if (a.status == 202) != (a.deferred_header == "outbox")
        ]
        assert wrong_header == [], "X-History-Deferred only on 202:\n" + "\n".join(
            wrong_header[:20]
        )
        jobs = {job_id_of(a): a for a in answers}
        assert len(jobs) == len(answers), "two uploads of distinct files got the same job id"
        not_succeeded = [
            a.described for a in answers if '"status":"succeeded"' not in a.body.replace(" ", "")
        ]
        assert not_succeeded == [], "\n".join(not_succeeded[:20])

        # recovery: the outbox drains, readiness says PostgreSQL is ok
        recovered_s, body = await wait_recovered(client)
        print(f"recovered {recovered_s:.2f} s after the traffic stopped: {body}")
        assert body.get("outbox_backlog") == 0, body
        assert body.get("checks", {}).get("postgres") == "ok", body
        assert body.get("outbox_failed") == 0, f"outbox entries quarantined: {body}"
        assert live.outbox_files() == [], [p.name for p in live.outbox_files()]
        leftovers = {
            sub.name: sum(1 for _ in sub.iterdir())
            for sub in sorted(live.outbox_dir.iterdir())
            if sub.is_dir()
        }
        print(f"outbox after the drain: 0 pending, per folder {leftovers}")

        # every 2xx job exactly once, and no job nobody was told about
        rows = Counter(await job_rows(live.db_url))
        missing = [str(j) for j in jobs if rows[j] == 0]
        doubled = [str(j) for j in jobs if rows[j] > 1]
        extra = [str(j) for j in rows if j not in jobs]
        assert not missing, f"{len(missing)} answered jobs missing: {missing[:10]}"
        assert not doubled, f"{len(doubled)} jobs stored twice: {doubled[:10]}"
        assert not extra, f"{len(extra)} jobs nobody was answered: {extra[:10]}"
        assert sum(rows.values()) == len(jobs)
        without_result = await scalar(
            live.db_url,
            "SELECT count(*) FROM analysis_jobs j LEFT JOIN analysis_results r"
            " ON r.job_id = j.id WHERE r.id IS NULL",
        )
        assert without_result == 0, f"{without_result} jobs lost their result"

        # one retention run, then files and live rows match one to one
        root = live.storage_root
        files_before = files_under(root, "uploads")
        rows_before = await live_media_keys(live.db_url)
        report = await run_retention(live)
        files_after = files_under(root, "uploads")
        rows_after = await live_media_keys(live.db_url)
        print(
            f"before retention: {len(files_before)} upload files, {len(rows_before)} live rows,"
            f" {len(files_before - rows_before)} files without a row,"
            f" {len(rows_before - files_before)} rows without a file"
        )
        print(f"retention: {report.as_dict()}")
        print(
            f"counts: uploads {len(answers)} (201: {codes[201]}, 202: {codes[202]},"
            f" 200: {codes[200]}), jobs {sum(rows.values())}, files {len(files_after)},"
            f" live media rows {len(rows_after)}"
        )
        assert report.error_count == 0, report.errors
        assert files_after - rows_after == set(), (
            f"{len(files_after - rows_after)} files without a live row"
        )
        assert rows_after - files_after == set(), (
            f"{len(rows_after - files_after)} live rows without a file"
        )
        assert report.policies[Policy.missing].objects == 0, "the sweep found rows without files"
        jobs_without_media = await scalar(
            live.db_url,
            "SELECT count(*) FROM analysis_jobs j LEFT JOIN media_files m"
            " ON m.id = j.media_file_id AND m.deleted_at IS NULL WHERE m.id IS NULL",
        )
        assert jobs_without_media == 0, f"{jobs_without_media} jobs without a live media row"
        assert len(rows_after) == len(jobs), "one live media row per distinct upload"
