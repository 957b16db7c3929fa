"""A year of history as COPY text: media shared by jobs, a status and type mix, expiries."""

from __future__ import annotations

import array
import datetime as dt
import functools
import random
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg

from app_patch.settings import RetentionSettings
from app_patch.storage import upload_key
from bench.scale_curve.ids import media_sha, seq_uuid_text

YEAR_S = 365 * 86_400.0
ANALYSIS_TYPES = (("basic", 50), ("faces", 20), ("ocr", 15), ("transcript", 10), ("nsfw", 5))
FAILED_SHARE = 0.08
EXPIRED_SHARE = 0.10
MEDIA_BYTES = 64  # the size of the files the sweep deletes
_COPY_CHUNK = 1 << 20


@functools.cache
def _day(days: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=days)).isoformat()


def _ts(epoch: float) -> str:
    """COPY text of a UTC timestamp (several times faster than datetime.isoformat)."""
    days, rest = divmod(epoch, 86_400.0)
    seconds, micros = divmod(int(rest * 1_000_000), 1_000_000)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    return f"{_day(int(days))} {hours:02d}:{minutes:02d}:{seconds:02d}.{micros:06d}+00"


@dataclass
class Seeded:
    """What the queries need to know about a seeded history."""

    jobs: int
    results: int
    media: int
    media_live: int
    expired_shas: list[str]
    now: float  # epoch seconds the history ends at
    seconds: float = 0.0


class _History:
    """A year of history as compact arrays (a million jobs fit in ~50 MB)."""

    def __init__(
        self, jobs: int, now: float, rng: random.Random, uploads_days: float, expired: float
    ) -> None:
        self.now = now
        self.rng = rng
        self.ttl = uploads_days * 86_400
        self.job_created = array.array("d")
        self.job_media = array.array("l")
        self.media_rows: list[tuple[float, float, int]] = []  # created, last access, state
        counts: list[int] = []  # each media file used by 1 + geometric jobs, 2.5 on average
        total = 0
        while total < jobs:
            counts.append(min(1 + int(rng.expovariate(1 / 2)), jobs - total))
            total += counts[-1]
        starts = sorted(now - rng.random() * YEAR_S for _ in counts)  # uploads over the year
        for created, count in zip(starts, counts, strict=True):
            window = rng.random() * 60 * 86_400
            last = created
            for _ in range(count):
                at = min(now - 1.0, created + rng.random() * window)
                last = max(last, at)
                self.job_created.append(at)
                self.job_media.append(len(self.media_rows))
            state = 2 if rng.random() < expired else (0 if last + self.ttl > now else 1)
            self.media_rows.append((created, last, state))  # 0 live, 1 swept, 2 expired
        self.order = sorted(range(len(self.job_created)), key=self.job_created.__getitem__)
        self.succeeded = bytearray(len(self.order))

    def media_lines(self) -> Iterator[str]:
        rng, now = self.rng, self.now
        for i, (created, last, state) in enumerate(self.media_rows):
            sha = media_sha(i)
            expires = now - 60 - rng.random() * 86_400 if state == 2 else last + self.ttl
            if state == 0:  # not one more expiry while the benchmark runs
                expires = max(expires, now + 86_400)
            deleted = _ts(expires + rng.random() * 86_400) if state == 1 else "\\N"
            kind = "image/jpeg" if i % 3 else "video/mp4"
            yield (
                f"{seq_uuid_text('media', i)}\t{sha}\t{MEDIA_BYTES}\t{kind}\tupload-{i}.bin\t"
                f"{upload_key(sha)}\t{_ts(created)}\t{_ts(last)}\t{_ts(expires)}\t{deleted}\n"
            )

    def job_lines(self) -> Iterator[str]:
        rng, now = self.rng, self.now
        types = [name for name, weight in ANALYSIS_TYPES for _ in range(weight)]
        for position, j in enumerate(self.order):
            created = self.job_created[j]
            media = seq_uuid_text("media", self.job_media[j])
            kind = types[int(rng.random() * len(types))]
            finished: str | float = "\\N"
            error = "\\N"
            if now - created < 900:  # the last quarter of an hour: some still in flight
                status = "queued" if rng.random() < 0.5 else "running"
            elif rng.random() < FAILED_SHARE:
                status, error = "failed", "engine error: decoder gave up"
                finished = _ts(created + 0.2 + rng.random() * 5)
            else:
                status = "succeeded"
                finished = _ts(created + 0.2 + rng.random() * 5)
                self.succeeded[position] = 1
            idem, fingerprint = "\\N", "\\N"
            if position % 3 == 0:
                idem, fingerprint = f"scale-{position}", f"{position:064x}"
            started = "\\N" if status == "queued" else _ts(created)
            attempts = 0 if status == "queued" else 1
            yield (
                f"{seq_uuid_text('job', position)}\t{media}\t{kind}\t{status}\t"
                f'{{"lang": "en", "detail": {position % 4}}}\tclient-{position % 50}\t'
                f"{idem}\t{fingerprint}\t{_ts(created)}\t{started}\t{finished}\t{error}\t"
                f"{attempts}\n"
            )

    def result_lines(self) -> Iterator[str]:
        rng = self.rng
        for position, j in enumerate(self.order):
            if not self.succeeded[position]:
                continue
            took = 200 + rng.random() * 5000
            finished = _ts(self.job_created[j] + took / 1000)
            labels = int(rng.random() * 12)
            yield (
                f"{seq_uuid_text('result', position)}\t{seq_uuid_text('job', position)}\t"
                f'{{"labels": {labels}, "score": {rng.random():.4f}, "model": "ref-1"}}\t'
                f"{labels} labels\tmedia-analysis-reference\t1.0.0\t{took:.3f}\t{finished}\n"
            )


def _copy(cur: psycopg.Cursor[tuple[object, ...]], statement: str, lines: Iterator[str]) -> int:
    count = 0
    with cur.copy(statement) as copy:
        buffer: list[str] = []
        size = 0
        for line in lines:
            buffer.append(line)
            size += len(line)
            count += 1
            if size >= _COPY_CHUNK:
                copy.write("".join(buffer))
                buffer, size = [], 0
        if buffer:
            copy.write("".join(buffer))
    return count


def seed(
    libpq_url: str, jobs: int, *, expired_share: float = EXPIRED_SHARE, seed: int = 1
) -> Seeded:
    """COPY a year of history of ``jobs`` jobs into the (migrated, empty) database; ANALYZE.

    ``expired_share`` of the media rows are live and just expired (the sweep's work)."""
    ended = dt.datetime.now(dt.UTC).timestamp()
    uploads_days = RetentionSettings().uploads_days
    history = _History(jobs, ended, random.Random(seed), uploads_days, expired_share)
    with psycopg.connect(libpq_url) as conn:
        with conn.cursor() as cur:
            media = _copy(
                cur,
                "COPY media_files (id, sha256, size_bytes, content_type, original_name,"
                " storage_key, created_at, last_accessed_at, expires_at, deleted_at) FROM STDIN",
                history.media_lines(),
            )
            copied = _copy(
                cur,
                "COPY analysis_jobs (id, media_file_id, analysis_type, status, params, client_ref,"
                " idempotency_key, request_fingerprint, created_at, started_at, finished_at,"
                " error, attempts) FROM STDIN",
                history.job_lines(),
            )
            results = _copy(
                cur,
                "COPY analysis_results (id, job_id, result, summary, engine_name,"
                " engine_version, duration_ms, created_at) FROM STDIN",
                history.result_lines(),
            )
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE media_files, analysis_jobs, analysis_results")
    states = [state for _, _, state in history.media_rows]
    return Seeded(
        jobs=copied,
        results=results,
        media=media,
        media_live=states.count(0) + states.count(2),
        expired_shas=[media_sha(i) for i, state in enumerate(states) if state == 2],
        now=ended,
    )
