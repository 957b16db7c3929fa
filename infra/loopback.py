"""Loopback helpers shared by the local tasks, the benchmarks and the tests."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now (the OS picks it).

    Another process may take it before the caller binds; callers that start a server on it
    retry or fail loudly, they never assume.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
