"""Loopback ports for the servers the tests start (redis-server, RabbitMQ, HTTP).

A port from the kernel's ephemeral range (what ``bind(0)`` returns) is unsafe for a server
a test stops and starts again on the same port: while it is down, any outgoing connection
may be given that port as its source, and a client retrying ``127.0.0.1:PORT`` can even
connect to itself (TCP simultaneous open). Either way the restart fails with EADDRINUSE.
Ports below the ephemeral range are never handed out that way.
"""

from __future__ import annotations

import random
import socket

__all__ = ["free_port"]

_given: set[int] = set()


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A loopback TCP port below the ephemeral range that nobody listens on now, and that
    this process has not handed out before."""
    high = _ephemeral_low()
    low = max(1024, high - 20000)
    for _ in range(1000):
        port = random.randrange(low, high)
        if port in _given:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError(f"no free loopback port in {low}-{high - 1}")
