"""History scale curve: the same queries on 10k, 100k and 1M jobs.

Per size, a fresh database on the benchmark's server, migrated by ``app_patch.migrate``, then
seeded in bulk with COPY (``seed``) and ANALYZEd: a year of history, written roughly in
creation order as the API writes it. Media files are shared by several jobs (1 + a geometric
number, 3 on average); a job's analysis type and status follow fixed weights; media whose
last access is more than ``uploads_days`` ago were swept before (``deleted_at`` set), except
10 % of all media rows, live and just expired (as if the sweeper had been off for a day).

Timed, through the app's own functions (the repository's, on the engine and session factory
the API uses; no Redis, so every read reaches PostgreSQL):

* ``newest``: ``list_history`` with the API's default page size (50);
* ``deep``: ``list_history`` with the keyset cursor of the row ending page 1,000, built
  directly (the cursor the API would have issued there); with fewer than 2,000 pages, the
  middle page of the history (keyset cost does not depend on depth);
* ``filtered``: ``list_history`` with ``status=failed`` and a random 30-day window;
* ``get``: ``get_job`` of a random existing id (``GET /analyses/{id}`` with the cache off);
* ``sweep``: ``Sweeper.sweep(policies=[uploads])`` over the 10 % expired media rows, whose
  files are created (64 bytes each, outside the timing) in a fresh storage root.

Targets: every history query's p50 at the largest size within 2 x its p50 at 10k, and the
sweep's files/s at the largest size at least 75 % of its rate at 10k. The plan of each query at
the largest size (EXPLAIN ANALYZE of the SQL the function sent) is in the notes, with the
table and index sizes per million jobs.
"""

from bench.scale_curve.benchmark import run
from bench.scale_curve.rows import NAME, TITLE

__all__ = ["NAME", "TITLE", "run"]
