"""Cached ``GET /analyses/{id}`` through the service layer, on a warm cache.

Ours: ``HistoryService.get_job(id)`` for a finished job whose entry is in Redis (written
through by ``mark_succeeded``): breaker, single-flight, GET, envelope parse, orjson, pydantic.
Every timed call must be a hit (the benchmark fails if PostgreSQL is consulted).

Limits, same Redis server, same key, same bytes:

* ``redis-py asyncio GET``: ``redis.asyncio.Redis.get(key)`` at the same concurrency;
* ``redis-benchmark -t set,get -d <len>``: the server's GET rate from C clients (``-c 1``
  for the sequential pair, ``-c 50`` for the concurrent one).

Peer, same Redis server, same JSON body, same key shape: ``cashews``, the read done the way a
cashews user caches a loader: ``@cache(ttl=...)`` on the same PostgreSQL loader ``get_job``
uses, the JSON codec registered with ``cashews.serialize.register_type``, a pool as large as
ours; warmed, then every timed call must be a hit (the loader is counted). Ours should be at
least as fast (ours / cashews >= 1.0).

Context: sync redis-py GET (sequential).

The sides of each pair run in a rotating order in every repetition, so that a burst of load
from elsewhere on the machine does not always land on the same side.
"""

from bench.cached_read.benchmark import run
from bench.cached_read.rows import NAME, TITLE

__all__ = ["NAME", "TITLE", "run"]
