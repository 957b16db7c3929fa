"""Hardening as the spec asks it: capabilities, no-new-privileges, pids, read-only root, no root.

Checked as the engine applied it (``docker inspect``) and as the kernel enforces it on PID 1
(``/proc/1/status``).
"""

from __future__ import annotations

import secrets

from infra.spec import NO_NEW_PRIVILEGES, Service
from infra.verify.hosts import inside, inspect_container, local
from infra.verify.results import CheckFailed

# Linux capability numbers (include/uapi/linux/capability.h), for reading CapBnd.
_CAPABILITIES = (
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
)
CAPABILITY_BITS = {name: bit for bit, name in enumerate(_CAPABILITIES)}


def not_root(container: str) -> str:
    host = inside(container)
    status = host.file("/proc/1/status").content_string
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    uids = {int(value) for value in uid_line.split()[1:]}
    if 0 in uids:
        raise CheckFailed(f"PID 1 runs with uid(s) {sorted(uids)}")
    exec_user = host.user()
    if exec_user.uid == 0:
        raise CheckFailed("the container's default user is root")
    return f"PID 1 uid {sorted(uids)}, default user {exec_user.name} ({exec_user.uid})"


def hardened(service: Service, container: str | None = None, swarm: bool = False) -> str:
    """What the spec asks, as the engine applied it and as the kernel enforces it on PID 1.
    ``swarm``: a task ``container`` of a swarm service, which cannot have no-new-privileges
    (Docker 20.10 services have no such setting) and gets its tmpfs as a mount."""
    container = container or service.name
    attrs = inspect_container(container)
    host_config = attrs.get("HostConfig") or {}
    hardening = service.hardening
    problems = []
    dropped = {_cap(c) for c in host_config.get("CapDrop") or []}
    added = {_cap(c) for c in host_config.get("CapAdd") or []}
    if "ALL" not in dropped:
        problems.append(f"CapDrop is {sorted(dropped)}, not ALL")
    if added != set(hardening.cap_add):
        problems.append(f"CapAdd is {sorted(added)}, expected {sorted(hardening.cap_add)}")
    no_new_privileges = any(
        o.startswith("no-new-privileges") for o in host_config.get("SecurityOpt") or []
    )
    if not no_new_privileges and not swarm:
        problems.append("no-new-privileges is not set")
    pids = int(host_config.get("PidsLimit") or 0)
    if pids <= 0 or (service.limits.pids is not None and pids != service.limits.pids):
        problems.append(f"PidsLimit is {pids or 'unlimited'}, expected {service.limits.pids}")
    if hardening.read_only:
        if not host_config.get("ReadonlyRootfs"):
            problems.append("the root filesystem is writable")
        tmpfs = set(host_config.get("Tmpfs") or {}) | {
            m.get("Target") for m in host_config.get("Mounts") or [] if m.get("Type") == "tmpfs"
        }
        missing = set(hardening.tmpfs) - tmpfs
        if missing:
            problems.append(f"no tmpfs at {sorted(missing)}")
    status = inside(container).file("/proc/1/status").content_string
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if fields.get("NoNewPrivs", "").strip() != "1" and not swarm:
        problems.append("PID 1 runs without NoNewPrivs")
    bounding = int(fields.get("CapBnd", "0").strip() or "0", 16)
    allowed = sum(1 << CAPABILITY_BITS[cap] for cap in hardening.cap_add)
    if bounding & ~allowed:
        extra = sorted(
            cap for cap, bit in CAPABILITY_BITS.items() if bounding & ~allowed & (1 << bit)
        )
        problems.append(f"PID 1 may still gain {', '.join(extra)}")
    if hardening.read_only:
        # As root, who owns /: only a read-only mount stops it (without caps, root of the
        # container may still write where it owns).
        probe = f"/.verify-{secrets.token_hex(4)}"
        written = local().run("docker exec -u 0 %s touch %s", container, probe)
        if written.rc == 0:
            local().run("docker exec -u 0 %s rm -f %s", container, probe)
            problems.append("writing to / succeeded")
    if problems:
        raise CheckFailed("; ".join(problems))
    kept = ", ".join(sorted(hardening.cap_add)) or "none"
    rootfs = f", read-only root + tmpfs {', '.join(hardening.tmpfs)}" if hardening.read_only else ""
    privileges = (
        "no-new-privileges: not available to swarm services" if swarm else NO_NEW_PRIVILEGES
    )
    return f"caps: ALL dropped, kept {kept}; {privileges}; pids {pids}{rootfs}"


def _cap(name: str) -> str:
    return str(name).upper().removeprefix("CAP_")
