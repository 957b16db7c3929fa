"""The cost of persistence, end to end: the API with the kit vs the same API without it.

Both sides run under the same uvicorn (one worker, 127.0.0.1, default loop and HTTP parser,
access log on) in their own process: ``api.main:app`` (the kit, configured as ``api_load``
does: the benchmark's PostgreSQL and Redis, a scratch storage root, JSON logs) and
``bench.bare_api:app`` (the same FastAPI routes, streamed form and analysis code; the upload
goes to a temp file that is deleted, jobs are kept in a dict). The driver runs in this
process: ``CLIENTS`` keep-alive connections speaking plain HTTP/1.1 over asyncio streams
(a few microseconds of client CPU per request, so that on a small machine the client does not
set the ceiling), every loop bounded by a request count and a time cap.

1. ``POST /analyses``: a 64x64 PNG (~12 KB, every one distinct, ``analysis_type=image``).
   Ours stages, analyses, stores and records it (3 statements in 2 transactions + Redis).
2. ``GET /analyses/{id}`` of jobs seeded through the same API: ours is a Redis cache hit
   (write-through at upload), the bare app answers the same ``JobOut`` from memory.
   Throughput ratios ours / bare with targets (POST 70 %, GET 60 %) and p50/p99 per side;
   the sides alternate within each repetition.
3. Peak RSS of the kit's API process (psutil, every ``SAMPLE_S``) while ``big_uploads``
   distinct 10 MiB files are uploaded at once, against its idle RSS just before; the bare
   app's growth under the same load is shown for context.
"""

from bench.persistence_cost.benchmark import run
from bench.persistence_cost.rows import NAME, TITLE

__all__ = ["NAME", "TITLE", "run"]
