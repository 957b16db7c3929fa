"""The swarm engine: the stack spec (target ``swarm``) rendered to a stack file and applied with
``docker stack deploy`` on a swarm manager (``invoke up --engine swarm``; never chosen
automatically).

* **Network.** Managed: ``af-network`` is an attachable overlay (plain containers of other
  projects can still join it). External: an existing overlay ``af-network``; an existing
  *bridge* of that name is refused in one line before anything is created.
* **Secrets.** The same values as the other engines (``.data/stack.env``), written to the same
  files under ``.data/secrets``, become swarm secrets named after a hash of their content
  (:func:`infra.compose.swarm_secret_names`); a rotated value is a new secret, which rolls the
  services that mount it; the superseded versions are removed after the stack converged.
* **Placement.** PostgreSQL, Redis and the API run on the node labelled
  ``media-analysis.storage=true`` (their volumes are local); ``up`` labels the node itself
  when the swarm has one node, and says so.
* **Images** are run by id (locally built: no registry; ``--resolve-image never``), so the
  daemon never tries to pull them and a rebuild rolls out. A multi-node swarm needs them in
  a registry instead.
* **From this host** the servers answer on their task's ``docker_gwbridge`` address (the
  overlay is not reachable from the host; nothing is published but the proxy's port), so the
  tasks that use them (migrate, verify, roles) run on the storage node, where they are.
* **Owner.** Every service (and so every task) carries this checkout's owner label; tasks
  refuse a stack whose services carry another.
* ``deploy`` is ``docker service update --image <new id>`` of the API service (start-first,
  one task at a time, healthcheck-gated), waited for; a new image that is not healthy in time
  is rolled back (by swarm's ``failure_action``, or by us at the deadline).

Modules: ``cluster`` (the manager, the docker CLI, the network, the storage node), ``services``
(the stack's services and their tasks), ``stack_file`` (the stack file and its secrets),
``waits`` (bounded waits), ``rollout`` (``deploy``), ``checks`` (its ``verify`` checks),
``engine`` (:class:`SwarmEngine`).
"""

from infra.engines.swarm.cluster import (
    BRIDGE_REFUSAL,
    SwarmError,
    check_network,
    gwbridge_ip,
    network_driver,
    require_manager,
    swarm_state,
)
from infra.engines.swarm.engine import SwarmEngine
from infra.engines.swarm.services import (
    full_name,
    require_owned,
    server_address,
    task_container,
    task_containers,
)
from infra.engines.swarm.stack_file import deploy_stack, stack_path

__all__ = [
    "BRIDGE_REFUSAL",
    "SwarmEngine",
    "SwarmError",
    "check_network",
    "deploy_stack",
    "full_name",
    "gwbridge_ip",
    "network_driver",
    "require_manager",
    "require_owned",
    "server_address",
    "stack_path",
    "swarm_state",
    "task_container",
    "task_containers",
]
