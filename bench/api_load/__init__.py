"""200 concurrent clients on the API (pool of 20 + 30 = 50 connections), uvicorn in a subprocess.

The API is served exactly as the container serves it (``uvicorn``, one worker, access log on,
JSON logs, default settings: pool 20 + 30, pool timeout 30 s), on 127.0.0.1, configured through
the environment to use the benchmark's PostgreSQL, Redis and a scratch storage root. It is
wrapped by ``bench.api_server.Counting``, which counts the exceptions that escape the app
(pool timeouts separately) and the pool's peak checked-out connections.

Seeding (untimed): jobs uploaded through the API, so their entries are in the cache. Then each
repetition runs ``bench.load_driver`` in its own process: 200 clients, a bounded number of
requests and a time cap; 1 in ``upload_every`` requests is an upload (``POST /analyses``: a new
file, stored, analysed, 3 history transactions), the others ``GET /analyses/{id}`` of the
seeded (cached) jobs.

Limit: the same driver against ``bench.api_server.bare`` (a framework-free ASGI app answering
the same routes with a stored job's bytes) on the same uvicorn: the HTTP stack's ceiling here.
Both servers run side by side and the repetitions alternate between them.
"""

from bench.api_load.benchmark import run
from bench.api_load.rows import NAME, TITLE

__all__ = ["NAME", "TITLE", "run"]
