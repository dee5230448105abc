"""RaftNode over real gRPC on loopback with SQLite in a temporary directory.

Generous deadlines on the LAN preset (scaled down to 20 ms ticks); nothing asserts wall time.
"""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator, Callable

import pytest

from phalanx_aio import Config, RaftNode, SQLiteStorage
from phalanx_aio._net import free_loopback_ports
from tests.helpers import find_leader, poll_until
from tests.node.harness import DEADLINE, Counter

CFG = Config.lan(tick_interval=0.02)


class GrpcCluster:
    def __init__(self, tmp: pathlib.Path, ids: list[str]) -> None:
        self.tmp = tmp
        self.ids = list(ids)
        self.addr = {nid: f"127.0.0.1:{p}" for nid, p in zip(ids, free_loopback_ports(len(ids)), strict=True)}
        self.nodes: dict[str, RaftNode] = {}
        self.sms: dict[str, Counter] = {}

    async def start(self, nid: str, founders: list[str] | None = None, **kw: object) -> RaftNode:
        """Start ``nid``; its peers are the founders (all ids by default) other than itself."""
        self.sms[nid] = Counter()
        founders = founders or self.ids
        node = RaftNode(
            nid,
            address=self.addr[nid],
            peers={p: self.addr[p] for p in founders if p != nid},
            state_machine=self.sms[nid],
            storage=SQLiteStorage(self.tmp / f"{nid}.db"),
            config=CFG,
            **kw,  # type: ignore[arg-type]
        )
        await node.start()
        self.nodes[nid] = node
        return node

    async def stop(self, nid: str) -> None:
        await self.nodes.pop(nid).aclose()

    async def leader(self) -> RaftNode:
        return await find_leader(self.nodes.values, DEADLINE)

    async def until(self, pred: Callable[[], bool]) -> None:
        await poll_until(pred, DEADLINE)


@pytest.fixture
async def grpc_cluster(tmp_path: pathlib.Path) -> AsyncIterator[GrpcCluster]:
    c = GrpcCluster(tmp_path, ["n1", "n2", "n3"])
    for nid in c.ids:
        await c.start(nid)
    try:
        yield c
    finally:
        for nid in list(c.nodes):
            await c.stop(nid)


async def test_elects_replicates_and_converges(grpc_cluster: GrpcCluster) -> None:
    c = grpc_cluster
    leader = await c.leader()
    assert [await leader.propose(b"incr 2") for _ in range(5)] == [2, 4, 6, 8, 10]
    await c.until(lambda: all(sm.value == 10 for sm in c.sms.values()))


async def test_follower_forwarding_and_follower_reads(grpc_cluster: GrpcCluster) -> None:
    c = grpc_cluster
    leader = await c.leader()
    follower = next(n for n in c.nodes.values() if n is not leader)
    await follower.wait_for_leader(DEADLINE)
    assert await follower.propose(b"incr 3") == 3
    assert await follower.read(lambda sm: sm.value) == 3  # type: ignore[attr-defined]


async def test_restart_everyone_from_sqlite_loses_nothing(grpc_cluster: GrpcCluster) -> None:
    c = grpc_cluster
    leader = await c.leader()
    for _ in range(30):
        await leader.propose(b"incr 1")
    for nid in list(c.nodes):
        await c.stop(nid)
    for nid in c.ids:
        await c.start(nid)
    leader = await c.leader()
    assert await leader.read(lambda sm: sm.value) == 30  # type: ignore[attr-defined]


async def test_leader_killed_survivors_keep_working(grpc_cluster: GrpcCluster) -> None:
    c = grpc_cluster
    old = await c.leader()
    await old.propose(b"incr 1")
    await c.stop(old.id)
    survivor = next(iter(c.nodes.values()))
    await survivor.wait_for_leader(DEADLINE)
    await c.until(lambda: survivor.leader_id not in (None, old.id))
    assert await survivor.propose(b"incr 1", timeout=DEADLINE) == 2


async def test_membership_transfer_and_snapshot_catch_up(tmp_path: pathlib.Path) -> None:
    c = GrpcCluster(tmp_path, ["n1", "n2", "n3", "n4"])
    try:
        founders = ["n1", "n2", "n3"]  # n4 is not a founding member
        for nid in founders:
            await c.start(nid, founders, snapshot_every=25)
        leader = await c.leader()
        for _ in range(60):
            await leader.propose(b"incr 1")
        assert leader.status().first_index > 25
        n4 = await c.start("n4", founders, join=True, snapshot_every=25)
        await leader.add_member("n4", c.addr["n4"])
        await c.until(lambda: c.sms["n4"].value == 60)
        await leader.promote("n4")
        new_leader = await leader.transfer_leadership("n4")
        assert new_leader == "n4"
        await c.until(lambda: n4.is_leader)
        await n4.remove_member(leader.id)
        assert leader.id not in n4.status().voters
        assert await n4.propose(b"incr 1") == 61
    finally:
        for nid in list(c.nodes):
            await c.stop(nid)


async def test_cancel_propose_and_close_mid_write(grpc_cluster: GrpcCluster) -> None:
    c = grpc_cluster
    leader = await c.leader()
    task = asyncio.create_task(leader.propose(b"incr 1"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    writes = [asyncio.create_task(leader.propose(b"incr 1")) for _ in range(50)]
    await asyncio.sleep(0.01)
    await c.stop(leader.id)  # closing mid-write: every caller gets an answer, none hangs
    done = await asyncio.wait_for(asyncio.gather(*writes, return_exceptions=True), DEADLINE)
    assert len(done) == 50
