"""The standard gRPC health service on a node's port (grpc.health.v1.Health)."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator

import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError

from phalanx_aio import Config, MemoryStorage, RaftNode
from phalanx_aio._grpc import WireBytes
from phalanx_aio._net import free_loopback_ports
from phalanx_aio.observability import HealthService
from phalanx_aio.observability.grpc_health import CHECK_METHOD, NOT_SERVING, SERVING, WATCH_METHOD
from phalanx_aio.transport.grpc import GrpcTransport
from tests.helpers import poll_until
from tests.node.harness import Counter


def _request(service: str) -> bytes:
    raw = service.encode()
    return b"\x0a" + bytes((len(raw),)) + raw if raw else b""


def _status(reply: bytes) -> int:
    return reply[1] if reply else 0  # field 1, a one-byte varint (0 when left out)


@pytest.fixture
async def served(tmp_path: pathlib.Path) -> AsyncIterator[tuple[RaftNode, Channel, HealthService]]:
    (port,) = free_loopback_ports(1)
    health = HealthService(watch_interval=0.05)
    transport = GrpcTransport(
        node_id="h1", cluster_id="c", listen=f"127.0.0.1:{port}", extra_handlers=[health]
    )
    node = RaftNode(
        "h1",
        address=f"127.0.0.1:{port}",
        peers={},
        state_machine=Counter(),
        storage=MemoryStorage("h1"),
        config=Config.lan(tick_interval=0.01),
        transport=transport,
    )
    health.attach(node)
    channel = Channel("127.0.0.1", port)
    async with node:
        await node.wait_for_leader(10)
        try:
            yield node, channel, health
        finally:
            channel.close()


async def check(channel: Channel, service: str) -> int:
    async with channel.request(CHECK_METHOD, Cardinality.UNARY_UNARY, WireBytes, WireBytes) as stream:
        await stream.send_message(WireBytes(_request(service)), end=True)
        reply = await stream.recv_message()
        assert reply is not None
        return _status(reply.data)


async def test_check_says_serving_for_the_server_and_its_services(
    served: tuple[RaftNode, Channel, HealthService],
) -> None:
    _, channel, _ = served
    for service in ("", "phalanx.v1.KV", "phalanx.v1.RaftPeer"):
        assert await check(channel, service) == SERVING
    with pytest.raises(GRPCError) as info:
        await check(channel, "no.such.Service")
    assert info.value.status is Status.NOT_FOUND


async def test_a_failed_node_is_not_serving_and_a_watch_sees_it_change(
    served: tuple[RaftNode, Channel, HealthService],
) -> None:
    node, channel, health = served
    async with channel.request(WATCH_METHOD, Cardinality.UNARY_STREAM, WireBytes, WireBytes) as stream:
        await stream.send_message(WireBytes(_request("")), end=True)
        first = await stream.recv_message()
        assert first is not None and _status(first.data) == SERVING
        node._failure = RuntimeError("the node's loop failed (simulated)")
        try:
            second = await stream.recv_message()
            assert second is not None and _status(second.data) == NOT_SERVING
            assert await check(channel, "") == NOT_SERVING
            assert health.status("phalanx.v1.KV") == NOT_SERVING
        finally:
            node._failure = None
        await poll_until(lambda: health.status("") == SERVING, 5)
        await stream.cancel()
