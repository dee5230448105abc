"""The grpclib internals that :mod:`phalanx_aio._grpc` reaches into, one test per function.

grpclib offers no public way to do these things (wrap the protocol of a server's connections,
listen with a TLS handshake timeout, change an HTTP/2 setting of an accepted connection, read a
message's length before buffering it, read a call's trailers once the server ended it). Each
is isolated behind one function; if a grpclib release changes what it relies on, the test of
that function fails here, naming it, instead of the library misbehaving somewhere else.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpclib
import grpclib.const
import grpclib.server
import h2.connection
import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.protocol import H2Protocol

from phalanx_aio._grpc import (
    Admission,
    AdmissionServer,
    WireBytes,
    adopt_listener,
    grpclib_protocol,
    h2_connection,
    raw_stream,
    recv_bounded,
)

METHOD = "/test.Echo/Echo"
GRPCLIB = f"grpclib {grpclib.__version__}"


class _Echo:
    def __init__(self) -> None:
        self.seen: list[Any] = []

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return {METHOD: grpclib.const.Handler(self._echo, Cardinality.UNARY_UNARY, WireBytes, WireBytes)}

    async def _echo(self, stream: grpclib.server.Stream[WireBytes, WireBytes]) -> None:
        self.seen.append(raw_stream(stream))
        data = await recv_bounded(stream, 1024)
        assert data is not None
        await stream.send_message(WireBytes(data))


@pytest.fixture
async def served() -> AsyncIterator[tuple[AdmissionServer, _Echo, int]]:
    echo = _Echo()
    server = AdmissionServer([echo], Admission(10, 1000.0, 5.0, 7), Counter())
    await server.listen("127.0.0.1", 0, None)
    try:
        yield server, echo, server.bound_port()
    finally:
        server.close()
        await server.wait_closed()


async def test_grpclib_protocol_is_the_servers_own() -> None:
    server = grpclib.server.Server([_Echo()])
    protocol = grpclib_protocol(server)
    assert isinstance(protocol, H2Protocol), f"{GRPCLIB}: Server._protocol_factory changed"
    for name in ("handler", "config", "h2_config"):
        assert hasattr(protocol, name), f"{GRPCLIB}: H2Protocol has no {name!r} any more"


async def test_adopt_listener_makes_close_and_wait_closed_work() -> None:
    server = grpclib.server.Server([_Echo()])
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(lambda: grpclib_protocol(server), "127.0.0.1", 0)
    adopt_listener(server, listener)
    server.close()
    async with asyncio.timeout(5):
        await server.wait_closed()
    assert not listener.is_serving(), f"{GRPCLIB}: Server.close() no longer closes Server._server"


async def test_h2_connection_carries_the_admission_setting(
    served: tuple[AdmissionServer, _Echo, int],
) -> None:
    server, _, port = served
    channel = Channel("127.0.0.1", port)
    try:
        reply = await channel.request(METHOD, Cardinality.UNARY_UNARY, WireBytes, WireBytes).__aenter__()
        await reply.send_message(WireBytes(b"x"), end=True)
        assert (await reply.recv_message()).data == b"x"  # type: ignore[union-attr]
        await reply.__aexit__(None, None, None)
        (protocol,) = server.protocols
        conn = h2_connection(protocol)
        assert isinstance(conn, h2.connection.H2Connection), f"{GRPCLIB}: Connection._connection changed"
        assert conn.local_settings.max_concurrent_streams == 7
    finally:
        channel.close()


async def test_raw_stream_reads_data_and_trailers(served: tuple[AdmissionServer, _Echo, int]) -> None:
    _, echo, port = served
    channel = Channel("127.0.0.1", port)
    try:
        async with channel.request(METHOD, Cardinality.UNARY_UNARY, WireBytes, WireBytes) as call:
            await call.send_message(WireBytes(b"hello"), end=True)
            reply = await call.recv_message()
            assert reply is not None and reply.data == b"hello"
            await call.recv_trailing_metadata()
            client_raw = raw_stream(call)
        (server_raw,) = echo.seen
        assert server_raw is not None and hasattr(server_raw, "recv_data"), (
            f"{GRPCLIB}: a server Stream has no _stream.recv_data any more (recv_bounded cannot bound)"
        )
        trailers = dict(getattr(client_raw, "trailers", None) or ())
        assert trailers.get("grpc-status") == "0", f"{GRPCLIB}: a client Stream has no _stream.trailers"
    finally:
        channel.close()
