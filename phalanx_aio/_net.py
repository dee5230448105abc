"""Small networking helpers shared by the demo, benchmarks and tests."""

from __future__ import annotations

import socket

__all__ = ["free_loopback_ports"]


def free_loopback_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports on 127.0.0.1 that were free a moment ago (bound together, then
    released, so they differ; another process could still take one before it is used)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
