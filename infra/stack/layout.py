"""The stack's fixed names and numbers (projects, ports, users, volumes, labels, placement,
capabilities, tmpfs mounts, health probes) and the container names a config gives."""

from __future__ import annotations

from infra.config import StackConfig
from infra.spec import SECRETS_DIR

PROJECT = "media-analysis"
# In external mode the API runs as its own compose project, so compose never treats the shared
# servers (even ones an earlier managed deployment labelled) as its own or as orphans.
EXTERNAL_PROJECT = "media-analysis-app"
STORAGE_ROOT = "/opt/services/media-analysis/storage"
API_PORT = 8000
API_UID = 10001
API_USER = f"{API_UID}:{API_UID}"
POSTGRES_PORT = 5432
REDIS_PORT = 6379
PG_VOLUME = "pg-data"
REDIS_VOLUME = "redis-data"
STORAGE_VOLUME = "media-storage"
PROMETHEUS_VOLUME = "prometheus-data"
PROMETHEUS_UID = 10003
PROMETHEUS_PORT = 9090
LABELS = {"io.media-analysis-kit.stack": PROJECT}
OWNER_LABEL = "io.media-analysis-kit.owner"
"""Every container of a stack carries its owner (``infra.engines.record``): tasks compare it with
their checkout's record before they touch a container."""
STORAGE_NODE_LABEL = "media-analysis.storage"
STORAGE_CONSTRAINT = f"node.labels.{STORAGE_NODE_LABEL}==true"
"""Swarm: the node that holds the local volumes (pg-data, redis-data, media-storage). The
servers and the API run there only; ``invoke up`` labels a one-node swarm's node itself."""


# The entrypoints start as root only to read their root-only secret files and drop to their
# service user with setpriv (setresuid/setresgid/setgroups): SETUID and SETGID, nothing else.
# Measured on fresh volumes: without either, setpriv fails with EPERM; CHOWN, FOWNER and
# DAC_OVERRIDE are not needed (the image's data directory already belongs to the service user,
# and root reads its own 0400 files). A volume owned by someone else makes the entrypoint stop
# with one line saying how to chown it once.
SERVER_CAPS = ("SETGID", "SETUID")
API_POOL_BUDGET = (20, 30)
"""Pool size and overflow of the whole API (app_patch.settings' defaults), split evenly over
its replicas."""
# The API's root filesystem is read-only; it writes media under STORAGE_ROOT (a volume) and
# temporary files (uploads being received, Python's tempfile) under /tmp.
API_TMPFS = {"/tmp": "rw,noexec,nosuid,nodev,size=256m,mode=1777"}


# The proxy's own liveness: its monitor-uri on a loopback-only port (bash's /dev/tcp: the image
# has no HTTP client).
def http_probe(port: int, path: str) -> str:
    """A bash one-liner that succeeds when ``GET path`` on loopback answers 200."""
    return (
        f"exec 3<>/dev/tcp/127.0.0.1/{port} && printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' >&3"
        " && head -n1 <&3 | grep -q ' 200 '"
    )


PROXY_HEALTH_PROBE = http_probe(8405, "/healthz")
# The proxy's root filesystem is read-only; its runtime socket lives in this tmpfs.
PROXY_TMPFS = {"/tmp": "rw,noexec,nosuid,nodev,size=1m,mode=1777"}
API_READY_PROBE = (
    "import sys, urllib.request; "
    f"r = urllib.request.urlopen('http://127.0.0.1:{API_PORT}/health/ready', timeout=4); "
    "sys.exit(0 if r.status == 200 else 1)"
)


def secret_path(name: str) -> str:
    """Where a service finds its secret file ``name``."""
    return f"{SECRETS_DIR}/{name}"


def api_replica_names(config: StackConfig) -> tuple[str, ...]:
    """The API containers: ``api_name``, then ``api_name-2`` ... (``apiReplicas`` of them).
    On a swarm the replicas are tasks of one service: ``(api_name,)``."""
    if config.target == "swarm":
        return (config.api_name,)
    return (config.api_name, *(f"{config.api_name}-{i}" for i in range(2, config.api_replicas + 1)))


def proxy_backend(config: StackConfig) -> str:
    """The DNS name the proxy resolves to one address per API replica: the replicas' shared
    alias on one engine; on a swarm ``tasks.<api>`` (the service name alone is its VIP)."""
    return f"tasks.{config.api_name}" if config.target == "swarm" else config.api_name
