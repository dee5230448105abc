"""The KV service's buffer limits (issue 23): a client that does not read its answers, or that
sends requests it never finishes, holds a bounded number of bytes and is shed with a gRPC status
naming the limit; the node and the other calls carry on. One node on loopback; every wait has a
generous deadline and nothing asserts wall time."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from grpclib.client import Channel
from grpclib.client import Stream as ClientStream
from grpclib.config import Configuration
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.metadata import decode_grpc_message

from phalanx_aio import RaftNode, SQLiteStorage
from phalanx_aio._grpc import WireBytes
from phalanx_aio._net import free_loopback_ports
from phalanx_aio.errors import LocalError
from phalanx_aio.kv import KVClient, KVService, KVStateMachine
from phalanx_aio.kv import messages as m
from phalanx_aio.kv.stream_codec import KV_STREAM_METHOD, decode_kv_stream_responses, encode_kv_stream_request
from phalanx_aio.transport.grpc import GrpcTransport
from tests.helpers import find_leader
from tests.kv.cluster import CFG, CLUSTER, DEADLINE, grpc_call, hdr

BIG = 256 << 10
"""The value every read returns: one answer is a little over 256 KiB."""
SMALL_WINDOW = Configuration(http2_connection_window_size=65535, http2_stream_window_size=65535)
"""A client that reads nothing accepts 64 KiB before flow control stops the node."""


class OneNode:
    def __init__(self, node: RaftNode, service: KVService, address: str) -> None:
        self.node, self.service, self.address = node, service, address

    def channel(self, config: Configuration | None = None) -> Channel:
        host, port = self.address.rsplit(":", 1)
        return Channel(host, int(port), config=config)


async def start_one(tmp: pathlib.Path, **limits: Any) -> OneNode:
    address = f"127.0.0.1:{free_loopback_ports(1)[0]}"
    service = KVService(**limits)
    transport = GrpcTransport(node_id="n1", cluster_id=CLUSTER, listen=address, extra_handlers=[service])
    node = RaftNode(
        "n1",
        address=address,
        peers={},
        state_machine=KVStateMachine(),
        storage=SQLiteStorage(tmp / "n1.db"),
        config=CFG,
        cluster_id=CLUSTER,
        transport=transport,
    )
    service.attach(node)
    await node.start()
    one = OneNode(node, service, address)
    await find_leader(lambda: [node], DEADLINE)
    put = await grpc_call(address, m.PutRequest(hdr("setup", 1), b"big", b"b" * BIG))
    assert put.header.error is m.ErrorCode.OK, put.header
    return one


@pytest.fixture
async def node_factory(tmp_path: pathlib.Path) -> AsyncIterator[Callable[..., Any]]:
    started: list[OneNode] = []

    async def make(**limits: Any) -> OneNode:
        one = await start_one(tmp_path, **limits)
        started.append(one)
        return one

    yield make
    for one in started:
        await one.node.aclose()


async def wait_for(pred: Callable[[], bool], what: str, sample: Callable[[], None] = lambda: None) -> None:
    async with asyncio.timeout(DEADLINE):
        while not pred():
            sample()
            await asyncio.sleep(0.005)
    assert pred(), what


def reads(n: int, key: bytes = b"big", first_id: int = 0) -> bytes:
    return b"".join(encode_kv_stream_request(first_id + i, 0, m.GetRequest(hdr(), key)) for i in range(n))


async def open_stream(channel: Channel, batch: bytes) -> ClientStream[WireBytes, WireBytes]:
    stream = channel.request(KV_STREAM_METHOD, Cardinality.STREAM_STREAM, WireBytes, WireBytes)
    await stream.__aenter__()
    await stream.send_message(WireBytes(batch))
    return stream


async def read_until_end(stream: ClientStream[WireBytes, WireBytes]) -> tuple[int, BaseException | None]:
    """Read answers until the call ends: (answers read, the error that ended it)."""
    got = 0
    try:
        async with asyncio.timeout(DEADLINE):
            while (reply := await stream.recv_message()) is not None:
                got += len(decode_kv_stream_responses(reply.data))
    except (GRPCError, StreamTerminatedError, AssertionError) as exc:  # AssertionError: cut mid-message
        return got, exc
    return got, None


async def close_status(stream: ClientStream[WireBytes, WireBytes]) -> GRPCError | None:
    """The gRPC status the node ended the call with (``None``: OK), then leave the call."""
    raw = stream._stream

    def status_fields() -> dict[str, str]:
        for block in (raw.trailers, raw.headers):
            fields = dict(block or ())
            if "grpc-status" in fields:
                return fields
        return {}

    await wait_for(lambda: bool(status_fields()), "the node ends the call")
    fields = status_fields()
    with contextlib.suppress(Exception):
        await stream.__aexit__(None, None, None)
    status = Status(int(fields["grpc-status"]))
    if status is Status.OK:
        return None
    return GRPCError(status, decode_grpc_message(fields.get("grpc-message", "")))


async def test_a_client_that_does_not_read_holds_one_message_then_is_shed(node_factory: Any) -> None:
    one = await node_factory(max_stream_buffer_bytes=64 << 10, stall_timeout=0.5)
    channel = one.channel(SMALL_WINDOW)
    peak = 0

    def sample() -> None:
        nonlocal peak
        peak = max(peak, one.service.buffer_stats()["buffered_bytes"])

    try:
        # 400 reads of 256 KiB: 100 MiB of answers, had they been queued for this client.
        stream = await open_stream(channel, reads(400))
        stats = one.service.buffer_stats
        await wait_for(lambda: stats()["shed_stalled"] == 1, "the stalled call is shed", sample)
        assert 0 < peak < BIG + (4 << 10)  # one message, of one answer: never the 100 MiB
        assert one.service.buffer_stats()["buffered_bytes"] == 0
        got, error = await read_until_end(stream)
        assert error is not None and got < 400
        status = await close_status(stream)
        assert status is not None and status.status is Status.RESOURCE_EXHAUSTED
        assert "without progress for 0.5 s" in (status.message or "")
    finally:
        channel.close()
    # The node still serves, this client too once it reads.
    async with KVClient([one.address], cluster_id=CLUSTER, timeout=DEADLINE) as kv:
        assert await kv.get(b"big") == b"b" * BIG


async def test_over_the_connection_limit_the_slowest_call_is_shed(node_factory: Any) -> None:
    one = await node_factory(
        max_stream_buffer_bytes=64 << 10, max_connection_buffer_bytes=BIG + (BIG // 2), stall_timeout=120.0
    )
    channel = one.channel(SMALL_WINDOW)
    try:
        slow = await open_stream(channel, reads(50))
        await wait_for(lambda: one.service.buffer_stats()["buffered_bytes"] >= BIG, "the first call blocks")
        other = await open_stream(channel, reads(2, first_id=1000))
        await wait_for(
            lambda: one.service.buffer_stats()["shed_connection_bytes"] == 1, "the connection limit sheds"
        )
        _, error = await read_until_end(slow)  # the first call, idle the longest, was shed
        assert error is not None
        status = await close_status(slow)
        assert status is not None and status.status is Status.RESOURCE_EXHAUSTED
        assert f"per-connection limit of {BIG + BIG // 2}" in (status.message or "")
        await other.end()
        got, error = await read_until_end(other)  # the other one is answered in full
        assert (got, error) == (2, None)
        assert await close_status(other) is None
    finally:
        channel.close()
    stats = one.service.buffer_stats()
    assert {k: v for k, v in stats.items() if not k.startswith("quota_")} == {
        "buffered_bytes": 0,
        "shed_connection_bytes": 1,
        "shed_total_bytes": 0,
        "shed_stalled": 0,
    }


async def start_partial_put(
    channel: Channel, announced: int, sent: int
) -> ClientStream[WireBytes, WireBytes]:
    """A unary Put whose message announces ``announced`` bytes, of which only ``sent`` come."""
    path = next(p for p, (req, _) in m.KV_METHODS.items() if req is m.PutRequest)
    stream = channel.request(path, Cardinality.UNARY_UNARY, WireBytes, WireBytes)
    await stream.__aenter__()
    await stream.send_request()
    await stream._stream.send_data(struct.pack(">BI", 0, announced) + b"\x00" * sent)
    return stream


async def test_requests_that_never_finish_are_bounded_and_shed(node_factory: Any) -> None:
    one = await node_factory(max_connection_buffer_bytes=(5 << 20) // 2, stall_timeout=120.0)
    channel = one.channel()
    try:
        calls = []
        for i in range(3):  # each announces 1 MiB and sends 64 KiB short of it
            calls.append(await start_partial_put(channel, 1 << 20, (1 << 20) - (64 << 10)))
            if i < 2:
                await wait_for(
                    lambda i=i: one.service.buffer_stats()["buffered_bytes"] == (i + 1) << 20,  # type: ignore[misc]
                    "the partial request is held",
                )
        error = await close_status(calls[0])  # the oldest one goes when the third arrives
        assert error is not None and error.status is Status.RESOURCE_EXHAUSTED
        assert "per-connection limit of 2621440" in (error.message or "")
        assert one.service.buffer_stats()["buffered_bytes"] == 2 << 20
        for stream in calls[1:]:
            stream._stream.reset_nowait()
    finally:
        channel.close()
    await wait_for(lambda: one.service.buffer_stats()["buffered_bytes"] == 0, "the others are released")
    assert one.service.buffer_stats()["shed_connection_bytes"] == 1


async def test_a_request_body_that_stops_coming_times_out(node_factory: Any) -> None:
    one = await node_factory(stall_timeout=0.3)
    channel = one.channel()
    try:
        stream = await start_partial_put(channel, 100_000, 10)
        error = await close_status(stream)
        assert error is not None and error.status is Status.RESOURCE_EXHAUSTED
        assert "without progress for 0.3 s" in (error.message or "")
    finally:
        channel.close()
    assert one.service.buffer_stats()["shed_stalled"] == 1
    assert one.service.buffer_stats()["buffered_bytes"] == 0


def test_bad_buffer_limits_are_refused() -> None:
    with pytest.raises(LocalError, match="max_buffer_bytes"):
        KVService(max_buffer_bytes=0)
    with pytest.raises(LocalError, match="stall_timeout"):
        KVService(stall_timeout=0)
