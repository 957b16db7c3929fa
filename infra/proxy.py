"""The API proxy's runtime API (HAProxy's admin socket inside the proxy container).

``invoke deploy`` drains a replica before it is stopped and waits until the proxy sees a new
one UP; ``invoke verify`` checks that the proxy sees every replica UP. The socket is reached
with ``docker exec <proxy> socat`` (it is a Unix socket in the container's tmpfs: nothing is
published, and no other container on the shared network can reach it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from infra import docker_host

SOCKET = "/tmp/haproxy-admin.sock"
BACKEND = "api"
_ALLOWED = frozenset("abcdefghijklmnopqrstuvwxyz0123456789 /._-")


class ProxyError(RuntimeError):
    """The proxy did not answer or did not reach the wanted state in time."""


@dataclass(frozen=True)
class ProxyServer:
    """One server slot of the API backend as the proxy sees it."""

    name: str  # api1 ... api10
    address: str  # the container's IP, or "" for an empty slot
    up: bool
    draining: bool
    sessions: int


def command(proxy: str, line: str) -> str:
    """One runtime-API command; its answer. ``line`` is one of ours (checked: no quoting)."""
    if not set(line) <= _ALLOWED:
        raise ValueError(f"unexpected characters in proxy command {line!r}")
    code, output = docker_host.exec_run(
        proxy, ["sh", "-c", f"echo '{line}' | socat -t 5 stdio {SOCKET}"]
    )
    if code != 0:
        raise ProxyError(f"the proxy {proxy} did not answer its runtime API ({output.strip()})")
    return output


def servers(proxy: str) -> list[ProxyServer]:
    """The API backend's server slots, with their state and current sessions."""
    state = command(proxy, f"show servers state {BACKEND}").splitlines()
    header = next((line[2:].split() for line in state if line.startswith("# ")), [])
    stats = _sessions(command(proxy, "show stat"))
    found: list[ProxyServer] = []
    for line in state:
        if not line.strip() or line.startswith("#") or len(line.split()) < len(header) // 2:
            continue
        row = dict(zip(header, line.split(), strict=False))
        if row.get("be_name") != BACKEND:
            continue
        name = row.get("srv_name", "")
        admin = int(row.get("srv_admin_state", "0") or 0)
        address = row.get("srv_addr", "")
        unresolved = address in {"", "-", "0.0.0.0"} or bool(admin & 0x20)  # RMAINT: no DNS
        found.append(
            ProxyServer(
                name=name,
                address="" if unresolved else address,
                up=row.get("srv_op_state") == "2" and not unresolved,
                draining=bool(admin & 0x08),
                sessions=stats.get(name, 0),
            )
        )
    return found


def _sessions(csv: str) -> dict[str, int]:
    lines = [line for line in csv.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("# "):
        return {}
    header = lines[0][2:].split(",")
    index = {name: i for i, name in enumerate(header)}
    result: dict[str, int] = {}
    for line in lines[1:]:
        cells = line.split(",")
        if len(cells) < len(header) or cells[index["pxname"]] != BACKEND:
            continue
        try:
            result[cells[index["svname"]]] = int(cells[index["scur"]] or 0)
        except ValueError:
            continue
    return result


def wait_for(
    proxy: str,
    condition: Callable[[list[ProxyServer]], bool],
    timeout_s: float,
    what: str,
    poll_s: float = 0.5,
) -> list[ProxyServer]:
    """Poll the proxy's view until ``condition`` holds (bounded); :class:`ProxyError` naming
    ``what`` otherwise."""
    deadline = time.monotonic() + timeout_s
    while True:
        seen = servers(proxy)
        if condition(seen):
            return seen
        if time.monotonic() >= deadline:
            up = ", ".join(f"{s.address}{' (draining)' if s.draining else ''}"
                           for s in seen if s.up) or "none"  # fmt: skip
            raise ProxyError(f"{what} not reached within {timeout_s:.0f}s (UP: {up})")
        time.sleep(poll_s)


def drain(proxy: str, address: str, timeout_s: float) -> int:
    """Stop new requests to the server at ``address`` and wait (bounded) until its requests in
    flight are done; returns how many were still open at the deadline (0: drained)."""
    slot = next((s for s in servers(proxy) if s.address == address), None)
    if slot is None:
        return 0  # the proxy no longer routes to it
    command(proxy, f"set server {BACKEND}/{slot.name} state drain")
    deadline = time.monotonic() + timeout_s
    while True:
        current = next((s for s in servers(proxy) if s.name == slot.name), None)
        if current is None or current.address != address or current.sessions == 0:
            return 0
        if time.monotonic() >= deadline:
            return current.sessions
        time.sleep(0.25)
