"""testinfra checks of the running container stack (``invoke verify``).

Every check goes through pytest-testinfra: ``local://`` for ``docker inspect`` on the host,
``docker://<container>`` to look inside a container (the one exception connects to PostgreSQL
from here, with the URL read from the API container's own secret file, to ask
``app_patch.db_roles.role_problems``). Besides health and networking they hold the trust
boundary: no secret in any container's env or command line, each container hardened as the
spec says (checked in ``docker inspect`` and in the kernel's view of PID 1), the API's database
role unprivileged, the Redis app user refused admin commands (``ACL DRYRUN``) and ``maxmemory``
below the container's limit. ``run_checks`` never raises for a failed check: each becomes a
:class:`CheckResult`; ``report`` prints them and returns the exit code.

One job per module: ``results`` (the result, running one check, the report), ``hosts`` (the
testinfra hosts), ``network`` (health, aliases, ports, the proxy, the storage volume),
``hardening``, ``exposure`` (secrets in ``docker inspect``, forwarded headers), ``servers``
(PostgreSQL role, Redis, Prometheus), ``boundary`` (the checks both runners list),
and ``containers`` (:func:`run_checks`, one engine). The swarm engine's checks are its own
(:mod:`infra.engines.swarm.checks`), built from these modules.
"""

from infra.verify.containers import run_checks
from infra.verify.results import Check, CheckFailed, CheckResult, report, run_check

__all__ = [
    "Check",
    "CheckFailed",
    "CheckResult",
    "report",
    "run_check",
    "run_checks",
]
