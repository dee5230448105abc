"""The gRPC transport's connection limits (issue 23): a cap on open connections, paced set-up,
a handshake timeout, the HTTP/2 stream limit, and keepalive PINGs that report a frozen peer
unreachable. Real sockets on loopback; waits have generous deadlines, nothing asserts wall time.

Clients that must not count as peers connect from 127.0.0.2 (any 127/8 address reaches the
loopback server on Linux); the transports' peers are at 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality

from phalanx_aio._grpc import WireBytes
from phalanx_aio.errors import ConfigError
from phalanx_aio.transport.codec import STREAM_METHOD
from phalanx_aio.transport.grpc import GrpcTransport
from tests.transport.harness import DEADLINE, Factory, Recorder, connect, eventually, node

__all__ = ["node"]  # the fixture, imported for use here

STRANGER = "127.0.0.2"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def dial(address: str) -> socket.socket:
    """A blocking TCP connection from :data:`STRANGER` (not a peer's host)."""
    host, port = address.rsplit(":", 1)
    sock = socket.socket()
    sock.settimeout(DEADLINE)
    sock.bind((STRANGER, 0))
    sock.connect((host, int(port)))
    return sock


async def first_bytes(sock: socket.socket) -> bytes:
    """What the server sends first (b"" if it closes the connection)."""
    try:
        return await asyncio.to_thread(sock.recv, 4096)
    except ConnectionResetError:
        return b""


async def until_closed(sock: socket.socket) -> int:
    """Read until the server closes the connection; the bytes it sent."""
    total = 0
    while data := await first_bytes(sock):
        total += len(data)
    return total


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    made: list[socket.socket] = []
    yield made
    for s in made:
        s.close()


async def test_connections_over_the_cap_are_closed_on_arrival(
    node: Factory, sockets: list[socket.socket]
) -> None:
    t, _ = await node("n1", max_connections=3)
    for _ in range(5):
        sockets.append(dial(t.address))
    await eventually(lambda: t.stats["connections_refused"] == 2)
    got = [await first_bytes(s) for s in sockets]
    assert sum(1 for data in got if data) == 3  # the server's HTTP/2 settings
    assert got[3:] == [b"", b""]
    assert t.stats["connections_accepted"] == 3
    for s in sockets[:3]:
        s.close()
    # Closed connections free their places.
    await eventually(lambda: len(t._server.protocols) == 0)  # type: ignore[union-attr]
    sockets.append(dial(t.address))
    assert await first_bytes(sockets[-1])


async def test_a_connection_that_opens_no_call_is_closed(node: Factory, sockets: list[socket.socket]) -> None:
    t, _ = await node("n1", handshake_timeout=0.3)
    silent = dial(t.address)
    sockets.append(silent)
    assert await until_closed(silent) > 0  # admitted (the server's settings), then closed: no call
    assert t.stats["connections_timed_out"] == 1
    # A connection that opens a call is kept past the timeout (here: a peer's stream).
    a, _ = await node("a", handshake_timeout=0.3)
    b, rec_b = await node("b", handshake_timeout=0.3)
    connect(a, b)
    await eventually(lambda: a.stats["streams_opened"] == 1 and b.stats["streams_opened"] == 1)
    late = dial(b.address)  # its timeout expires after those of the peers' connections
    sockets.append(late)
    assert await until_closed(late) > 0
    assert b.stats["connections_timed_out"] == 1  # only the late one
    assert rec_b.unreachable == [] and a.stats["stream_failures"] == 0


async def test_new_connections_are_paced(node: Factory, sockets: list[socket.socket]) -> None:
    t, _ = await node("n1", max_connection_rate=1.0)  # one a second, in bursts of one
    sockets += [dial(t.address) for _ in range(3)]
    for s in sockets:
        assert await first_bytes(s)  # each set up in its turn
    assert t.stats["connections_accepted"] == 3 and t.stats["connections_delayed"] >= 1


async def test_a_peers_host_skips_the_limits(node: Factory, sockets: list[socket.socket]) -> None:
    a, _ = await node("a", max_connections=1, max_connection_rate=1.0)
    b, _ = await node("b")
    sockets.append(dial(a.address))  # a stranger takes the only place
    await eventually(lambda: a.stats["connections_accepted"] == 1)
    connect(a, b)  # b (at 127.0.0.1, a's peer host) connects all the same, at once
    await eventually(lambda: b.stats["streams_opened"] == 1)
    assert a.stats["connections_refused"] == 0 and a.stats["connections_delayed"] == 0


async def test_calls_per_connection_are_limited_by_the_http2_setting(node: Factory) -> None:
    t, _ = await node("n1", max_concurrent_streams=2)
    host, port = t.address.rsplit(":", 1)
    channel = Channel(host, int(port))
    try:
        calls = [
            channel.request(STREAM_METHOD, Cardinality.STREAM_UNARY, WireBytes, WireBytes) for _ in range(3)
        ]
        await calls[0].__aenter__()
        await calls[0].send_request()
        protocol = channel._protocol
        assert protocol is not None
        settings = protocol.connection._connection.remote_settings
        await eventually(lambda: settings.max_concurrent_streams == 2)  # the node's setting arrived
        await calls[1].__aenter__()
        await calls[1].send_request()
        third = calls[2]
        await third.__aenter__()
        with pytest.raises(TimeoutError):  # the client waits for a free stream: never opened
            async with asyncio.timeout(0.5):
                await third.send_request()
    finally:
        channel.close()


class Frozen:
    """A transport served by an event loop in another thread, which can be frozen (like a
    SIGSTOPped process: its kernel still accepts and acknowledges TCP)."""

    def __init__(self, **kw: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.release = threading.Event()
        self.transport = GrpcTransport(listen="127.0.0.1:0", **kw)
        asyncio.run_coroutine_threadsafe(self.transport.start(Recorder()), self.loop).result(DEADLINE)

    def freeze(self) -> None:
        self.loop.call_soon_threadsafe(self.release.wait)

    def close(self) -> None:
        self.release.set()
        asyncio.run_coroutine_threadsafe(self.transport.aclose(), self.loop).result(DEADLINE)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(DEADLINE)
        self.loop.close()


async def test_a_frozen_peer_is_reported_unreachable(node: Factory) -> None:
    a, rec = await node("a", keepalive_interval=0.2, keepalive_timeout=0.5, send_timeout=60.0)
    frozen = Frozen(node_id="b", cluster_id=a.cluster_id, peers={"a": a.address})
    try:
        a.set_peers({"b": frozen.transport.address})
        await eventually(lambda: a.stats["streams_opened"] == 1)
        frozen.freeze()
        # Without keepalive nothing is sent on an idle stream and nothing ever fails.
        await rec.wait(lambda: rec.unreachable == ["b"])
    finally:
        frozen.close()


def test_bad_connection_settings_are_refused() -> None:
    for bad in (
        {"max_connections": 0},
        {"max_connection_rate": 0},
        {"handshake_timeout": -1},
        {"max_concurrent_streams": 0},
        {"keepalive_interval": 0},
    ):
        with pytest.raises(ConfigError):
            GrpcTransport(node_id="n1", cluster_id="c", listen="127.0.0.1:0", **bad)  # type: ignore[arg-type]
