"""History write: finished jobs (``analysis_jobs`` row + ``analysis_results`` row).

Ours, through ``app_patch.repository`` (and ``HistoryService`` on top of it):

* ``finished``: ``record_finished`` -- what the API does for an analysis that already ran:
  one transaction per job, N concurrent writers (and ``service_finished``: the same through
  ``HistoryService``, i.e. plus the Redis write-through and history bump);
* ``batch``: ``record_finished_many`` -- batches of B jobs, one transaction per batch;
* ``three_txn``: ``create_job`` + ``mark_running`` + ``mark_succeeded`` -- the state machine,
  three transactions per job, N concurrent writers.

Limits, same server, same tables, same columns and values:

* ``raw executemany``: psycopg ``executemany`` of the job rows then the result rows, batches of
  B, one transaction per batch, one connection (the driver's best rate for these rows; the
  like-for-like limit of ``batch``);
* ``raw 1 txn/job``: psycopg, the two INSERTs in one transaction per job on N async
  connections (the like-for-like limit of ``finished``);
* ``pgbench``: a custom script inserting one job and its result per transaction
  (``-n -c N -j 2 -T secs -f script``) over the same socket.

Peer, same server, same tables, same rows: ``peer``, the write done the way
fastapi/full-stack-fastapi-template does it (``bench.peer_sqlmodel``: SQLModel session, add +
commit + refresh per job, sync route in the threadpool), N concurrent requests; ``finished``
should be at least twice as fast.

Context (no target): ``raw 3 txns/job``: psycopg doing the state machine's three transactions
with minimal SQL, the like-for-like limit of ``three_txn``.
"""

from bench.history_write.benchmark import run
from bench.history_write.rows import NAME, TITLE

__all__ = ["NAME", "TITLE", "run"]
