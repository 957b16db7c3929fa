"""History writes and reads on PostgreSQL (no caching here; see the cache package).

One job per module: ``jobs`` (a new or finished job's row, creating one, idempotency keys),
``transitions`` (queued to running to finished), ``finished`` (``record_finished``: fixed SQL
on the driver, through ``driver``), ``reads`` (one job, the paginated history), ``replay``
(the outbox's idempotent write of a job accepted while PostgreSQL was down).
"""

from app_patch.repository.finished import record_finished, record_finished_many
from app_patch.repository.jobs import (
    FinishedJob,
    IdempotencyConflictError,
    NewJob,
    create_job,
    job_by_key,
    same_request,
)
from app_patch.repository.reads import JobNotFoundError, get_job, get_job_or_raise, list_history
from app_patch.repository.replay import MediaSnapshot, ReplayOutcome, replay_finished
from app_patch.repository.transitions import (
    InvalidTransitionError,
    mark_failed,
    mark_running,
    mark_succeeded,
)

__all__ = [
    "FinishedJob",
    "IdempotencyConflictError",
    "InvalidTransitionError",
    "JobNotFoundError",
    "MediaSnapshot",
    "NewJob",
    "ReplayOutcome",
    "create_job",
    "get_job",
    "get_job_or_raise",
    "job_by_key",
    "list_history",
    "mark_failed",
    "mark_running",
    "mark_succeeded",
    "record_finished",
    "record_finished_many",
    "replay_finished",
    "same_request",
]
