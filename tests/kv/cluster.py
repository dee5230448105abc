"""A live KV cluster for tests: three RaftNodes with their KV services on loopback gRPC, and
helpers to call them."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality

from phalanx_aio import Config, RaftNode, SQLiteStorage
from phalanx_aio._grpc import WireBytes
from phalanx_aio._net import free_loopback_ports
from phalanx_aio.kv import KVService, KVStateMachine
from phalanx_aio.kv import messages as m
from phalanx_aio.kv.codec import decode_kv_message, encode_kv_message
from phalanx_aio.transport.grpc import GrpcTransport
from tests.helpers import find_leader

CFG = Config.lan(tick_interval=0.02)
DEADLINE = 15.0
CLUSTER = "kv-test"


class KVCluster:
    """Three KV nodes, each serving the KV service on its peer port."""

    def __init__(self, tmp: pathlib.Path, ids: list[str]) -> None:
        self.tmp = tmp
        self.ids = list(ids)
        self.addr = {nid: f"127.0.0.1:{p}" for nid, p in zip(ids, free_loopback_ports(len(ids)), strict=True)}
        self.nodes: dict[str, RaftNode] = {}
        self.sms: dict[str, KVStateMachine] = {}
        self.services: dict[str, KVService] = {}

    async def start(self, nid: str, founders: list[str] | None = None, **kw: Any) -> RaftNode:
        founders = founders or self.ids
        service = KVService()
        transport = GrpcTransport(
            node_id=nid, cluster_id=CLUSTER, listen=self.addr[nid], extra_handlers=[service]
        )
        sm = KVStateMachine()
        node = RaftNode(
            nid,
            address=self.addr[nid],
            peers={p: self.addr[p] for p in founders if p != nid},
            state_machine=sm,
            storage=SQLiteStorage(self.tmp / f"{nid}.db"),
            config=CFG,
            cluster_id=CLUSTER,
            transport=transport,
            **kw,
        )
        service.attach(node)
        await node.start()
        self.nodes[nid], self.sms[nid], self.services[nid] = node, sm, service
        return node

    async def stop(self, nid: str) -> None:
        await self.nodes.pop(nid).aclose()

    async def leader(self) -> RaftNode:
        return await find_leader(self.nodes.values, DEADLINE)

    async def follower(self) -> RaftNode:
        """A follower that knows the leader."""
        leader = await self.leader()
        node = next(n for n in self.nodes.values() if n is not leader)
        await node.wait_for_leader(DEADLINE, leader=leader.id)
        return node

    async def until(self, pred: Callable[[], bool]) -> None:
        async def poll() -> None:
            while not pred():
                await asyncio.sleep(0.02)

        await asyncio.wait_for(poll(), DEADLINE)

    async def aclose(self) -> None:
        for nid in list(self.nodes):
            await self.stop(nid)


@pytest.fixture
async def kv_cluster(tmp_path: pathlib.Path) -> AsyncIterator[KVCluster]:
    c = KVCluster(tmp_path, ["n1", "n2", "n3"])
    for nid in c.ids:
        await c.start(nid)
    try:
        yield c
    finally:
        await c.aclose()


async def grpc_call(address: str, request: Any) -> Any:
    """One raw unary call to the KV service, through the codec."""
    path = next(p for p, (req, _) in m.KV_METHODS.items() if req is type(request))
    response_type = m.KV_METHODS[path][1]
    host, port = address.rsplit(":", 1)
    channel = Channel(host, int(port))
    try:
        async with channel.request(
            path, Cardinality.UNARY_UNARY, WireBytes, WireBytes, timeout=DEADLINE
        ) as stream:
            await stream.send_message(WireBytes(encode_kv_message(request)), end=True)
            reply = await stream.recv_message()
    finally:
        channel.close()
    assert reply is not None
    return decode_kv_message(response_type, reply.data)


def hdr(client: str = "", seq: int = 0, acked: int = 0, cluster: str = CLUSTER) -> m.RequestHeader:
    return m.RequestHeader(cluster, client, seq, acked)
