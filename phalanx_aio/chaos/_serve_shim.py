"""Run ``phalanx-aio serve`` with its outgoing peer connections routed through chaos proxies.

``python -m phalanx_aio.chaos._serve_shim serve --id n1 ...`` is ``phalanx-aio serve`` with one
difference: before it starts, the gRPC channels this process opens (peer streams, snapshot
transfers, the ``--join`` client) are redirected from a member's real address to this node's
proxy for that member, read from the environment variable ``PHALANX_CHAOS_ROUTES``
(``host:port=host:port`` pairs, comma-separated). Nothing else changes: the node keeps its real
address in the Raft configuration, so membership changes keep working, and every node's log
holds the same addresses.

Routing at connect time rather than by giving each node proxy addresses as peers matters: a
configuration entry carries the leader's whole address map, so after the first membership change
every node would adopt the leader's proxies (and the leader's own real address), and the
founders' first log entries would differ.

The process also asks the kernel to SIGKILL it when its parent dies (Linux), so a crashed
harness leaves no node behind.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Any

ROUTES_ENV = "PHALANX_CHAOS_ROUTES"
PARENT_ENV = "PHALANX_CHAOS_PARENT"


def parse_routes(text: str) -> dict[tuple[str, int], tuple[str, int]]:
    """``"h:p=h:q,..."`` -> ``{(h, p): (h, q)}``; raises :class:`ValueError` on malformed input."""
    routes: dict[tuple[str, int], tuple[str, int]] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        real, sep, proxy = item.partition("=")
        if not sep:
            raise ValueError(f"route {item!r} is not HOST:PORT=HOST:PORT")
        routes[_hostport(real)] = _hostport(proxy)
    return routes


def _hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    parent = os.environ.get(PARENT_ENV)
    if parent and parent.isdigit() and os.getppid() != int(parent):
        os._exit(1)  # the parent died before prctl took effect


def install_routes(routes: dict[tuple[str, int], tuple[str, int]]) -> None:
    """Make every grpclib channel this process opens to a routed address go to its proxy."""
    import grpclib.client

    import phalanx_aio.kv.client
    import phalanx_aio.transport.grpc

    original = grpclib.client.Channel

    def routed_channel(host: str | None = None, port: int | None = None, **kwargs: Any) -> Any:
        if host is not None and port is not None:
            host, port = routes.get((host, int(port)), (host, port))
        return original(host, port, **kwargs)

    attr = "Channel"
    for module in (phalanx_aio.transport.grpc, phalanx_aio.kv.client):
        setattr(module, attr, routed_channel)


def main(argv: list[str] | None = None) -> int:
    """Install the routes from the environment, then run ``phalanx-aio`` with ``argv``."""
    _die_with_parent()
    install_routes(parse_routes(os.environ.get(ROUTES_ENV, "")))
    from phalanx_aio.cli.main import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
