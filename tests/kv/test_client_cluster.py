"""KVClient against a real three-node KV cluster on loopback: leader discovery, exactly-once
retries, fail-over, the cluster operations and the outcome errors."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from phalanx_aio._net import free_loopback_ports
from phalanx_aio.errors import ClosedError, LocalError, NotApplied, NotLeader, OutcomeUnknown
from phalanx_aio.kv import ErrorCode, KVClient, RequestRefused, SessionExpired, Unavailable
from phalanx_aio.kv.client import _AttemptFailed
from tests.kv.cluster import CLUSTER, DEADLINE, KVCluster, kv_cluster

__all__ = ["kv_cluster"]  # the fixture, imported for use here


def client(c: KVCluster, *endpoints: str, **kw: Any) -> KVClient:
    kw.setdefault("timeout", DEADLINE)
    return KVClient(list(endpoints) or list(c.addr.values()), cluster_id=CLUSTER, **kw)


async def test_operations_through_a_follower(kv_cluster: KVCluster) -> None:
    c = kv_cluster
    leader = await c.leader()
    follower = await c.follower()
    async with client(c, c.addr[follower.id]) as kv:
        assert await kv.put(b"k", b"1") is None
        assert kv.leader == c.addr[leader.id]  # the redirection was followed
        assert await kv.put("k", "2") == b"1"
        assert await kv.get(b"k") == b"2"
        assert await kv.cas(b"k", b"nope", b"3") is False
        assert await kv.cas(b"k", b"2", b"3") is True
        assert await kv.cas(b"new", None, b"x") is True
        assert await kv.cas(b"new", None, b"y") is False
        assert await kv.delete(b"k") is True
        assert await kv.delete(b"k") is False
        assert await kv.get(b"k") is None
        assert await kv.get(b"new", consistency="lease") == b"x"
        await c.until(lambda: all(sm.get(b"new") == b"x" for sm in c.sms.values()))
        assert await kv.get(b"new", consistency="stale") == b"x"
        with pytest.raises(LocalError):
            await kv.get(b"new", consistency="eventual")  # type: ignore[arg-type]
    assert leader.state_machine.get(b"new") == b"x"  # type: ignore[attr-defined]


async def test_linearizable_read_sees_another_clients_write(kv_cluster: KVCluster) -> None:
    c = kv_cluster
    follower = await c.follower()
    async with client(c) as writer, client(c, c.addr[follower.id]) as reader:
        for i in range(10):
            await writer.put(b"seq", b"%d" % i)
            # The reader asks the follower; a ReadIndex read reflects every completed write.
            assert await reader.get(b"seq") == b"%d" % i


class LossyClient(KVClient):
    """Loses the answer of the first ``lose`` write attempts after the server has acted on them."""

    def __init__(self, *args: Any, lose: int, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.lose = lose
        self.headers: list[tuple[str, int, int]] = []

    async def _attempt(self, address: str, request: Any, budget: float) -> Any:
        response = await super()._attempt(address, request, budget)
        h = request.header
        if h.sequence and response.header.error is ErrorCode.OK:  # a write answered by the leader
            self.headers.append((h.client_id, h.sequence, h.acked_sequence))
            if self.lose > 0:
                self.lose -= 1
                raise _AttemptFailed(True, "simulated lost reply")
        return response


async def test_retry_after_a_lost_reply_is_applied_once(kv_cluster: KVCluster) -> None:
    c = kv_cluster
    leader = await c.leader()
    async with LossyClient(list(c.addr.values()), cluster_id=CLUSTER, timeout=DEADLINE, lose=100) as kv:
        kv.lose = 2
        assert await kv.put(b"k", b"v1") is None  # answered from the session, not b"v1"
        sid = kv.client_id
        assert kv.headers == [(sid, 1, 0)] * 3  # the same number each time
        kv.lose = 1
        assert await kv.cas(b"k", b"v1", b"v2") is True  # a second apply would fail the comparison
        kv.lose = 1
        assert await kv.delete(b"k") is True  # a second apply would say "absent"
        assert kv.headers[3:] == [(sid, 2, 1), (sid, 2, 1), (sid, 3, 2), (sid, 3, 2)]
    assert leader.state_machine.get(b"k") is None  # type: ignore[attr-defined]


async def test_concurrent_writes_number_and_acknowledge_correctly(kv_cluster: KVCluster) -> None:
    c = kv_cluster
    async with client(c) as kv:
        results = await asyncio.gather(*(kv.put(b"key%d" % i, b"v") for i in range(30)))
        assert results == [None] * 30
        assert await kv.put(b"key0", b"w") == b"v"
        session = kv._session
        assert session.next_seq == 32 and session.acked == 31 and not session.finished


async def test_wrong_cluster_is_refused_at_once(kv_cluster: KVCluster) -> None:
    c = kv_cluster
    await c.leader()
    async with KVClient(list(c.addr.values()), cluster_id="other", timeout=DEADLINE) as kv:
        with pytest.raises(RequestRefused) as info:
            await kv.put(b"k", b"v")
        assert info.value.code is ErrorCode.WRONG_CLUSTER
        with pytest.raises(RequestRefused):
            await kv.get(b"k")
    assert all(sm.get(b"k") is None for sm in c.sms.values())


async def test_leader_killed_mid_run_client_continues(kv_cluster: KVCluster) -> None:
    c = kv_cluster
    old = await c.leader()
    async with client(c) as kv:
        previous = None
        for i in range(40):
            if i == 10:
                await c.stop(old.id)  # writes continue against the survivors
            # Each put returns the value before it: a write applied twice would return itself.
            assert await kv.put(b"counter", b"%d" % i) == previous
            previous = b"%d" % i
        assert await kv.get(b"counter") == b"39"
        new = await c.leader()
        assert new.id != old.id
        assert kv.leader == c.addr[new.id]
        st = await kv.status()
        assert st.leader_id == new.id and st.term > 0


async def test_write_in_flight_when_the_leader_dies(kv_cluster: KVCluster) -> None:
    c = kv_cluster
    old = await c.leader()
    async with client(c) as kv:
        await kv.put(b"warm", b"up")
        writes = [asyncio.create_task(kv.put(b"k%d" % i, b"v")) for i in range(20)]
        await asyncio.sleep(0)
        await c.stop(old.id)
        done = await asyncio.gather(*writes, return_exceptions=True)
        # Exactly-once: every write either returned (applied once: the key was absent before) or
        # ended with an outcome error; nothing else.
        for result in done:
            assert result is None or isinstance(result, NotApplied | OutcomeUnknown), result
        survivor = await c.leader()
        assert survivor.id != old.id
        for i, result in enumerate(done):
            if result is None:
                assert await kv.get(b"k%d" % i) == b"v"


async def test_status_members_membership_and_transfer(kv_cluster: KVCluster) -> None:
    c = kv_cluster
    leader = await c.leader()
    follower = await c.follower()
    async with client(c, c.addr[follower.id]) as kv:
        st = await kv.status(c.addr[follower.id])
        assert st.node_id == follower.id and st.role == "follower" and st.leader_id == leader.id
        assert {m.node_id for m in st.members} == set(c.ids)
        members = await kv.members()
        assert [(m.node_id, m.address, m.learner) for m in members] == [
            (nid, c.addr[nid], False) for nid in c.ids
        ]
        # A fourth node joins as a learner, is promoted, leadership moves, then it leaves.
        c.addr["n4"] = f"127.0.0.1:{free_loopback_ports(1)[0]}"
        await c.start("n4", founders=["n1", "n2", "n3"], join=True)
        after = await kv.add_member("n4", c.addr["n4"])
        assert ("n4", True) in {(m.node_id, m.learner) for m in after}
        await kv.put(b"k", b"v")
        await c.until(lambda: c.sms["n4"].get(b"k") == b"v")
        after = await kv.promote("n4")
        assert ("n4", False) in {(m.node_id, m.learner) for m in after}
        assert await kv.transfer_leader(follower.id) == follower.id
        await c.until(lambda: follower.is_leader)
        after = await kv.remove_member("n4")
        assert "n4" not in {m.node_id for m in after}
        with pytest.raises(RequestRefused) as info:
            await kv.remove_member("n4")
        assert info.value.code is ErrorCode.REJECTED
        assert await kv.put(b"k", b"w") == b"v"


async def test_outcomes_without_a_cluster() -> None:
    (port,) = free_loopback_ports(1)
    async with KVClient([f"127.0.0.1:{port}"], timeout=0.5) as kv:
        with pytest.raises(Unavailable):  # never connected: certainly not applied
            await kv.put(b"k", b"v")
        with pytest.raises(Unavailable):
            await kv.get(b"k")
    with pytest.raises(ClosedError):
        await kv.put(b"k", b"v")
    with pytest.raises(LocalError):
        KVClient([])
    with pytest.raises(LocalError):
        KVClient(["no-port"])


async def test_no_leader_means_not_leader_and_not_applied(kv_cluster: KVCluster) -> None:
    c = kv_cluster
    leader = await c.leader()
    follower = await c.follower()
    survivor = next(n for n in c.nodes.values() if n not in (leader, follower))
    await c.stop(leader.id)
    await c.stop(follower.id)  # one node of three: no leader can be elected
    await c.until(lambda: survivor.leader_id is None)
    async with client(c, c.addr[survivor.id], timeout=1.0) as kv:
        with pytest.raises(NotLeader):
            await kv.put(b"k", b"v")
    assert survivor.state_machine.get(b"k") is None  # type: ignore[attr-defined]


async def test_session_expired_on_first_delivery_renews_the_session(kv_cluster: KVCluster) -> None:
    c = kv_cluster
    leader = await c.leader()
    async with client(c) as kv:
        await kv.put(b"a", b"1")
        first = kv.client_id
        # The cluster forgets the session (as after session_ttl applied commands).
        for sm in c.sms.values():
            sm.sessions.pop(first, None)
        kv._session.acked = 5  # a write with acked > 0 in an unknown session is refused
        kv._session.next_seq = 7
        assert await kv.put(b"a", b"2") == b"1"  # refused unapplied, resent in a new session
        assert kv.client_id != first
        assert leader.state_machine.get(b"a") == b"2"  # type: ignore[attr-defined]


async def test_session_expired_after_a_possible_apply_is_unknown(kv_cluster: KVCluster) -> None:
    c = kv_cluster
    await c.leader()
    async with LossyClient(list(c.addr.values()), cluster_id=CLUSTER, timeout=DEADLINE, lose=0) as kv:
        await kv.put(b"a", b"1")
        kv.lose = 1
        sid = kv.client_id
        original = kv._attempt

        async def forget_then_send(address: str, request: Any, budget: float) -> Any:
            if kv.lose == 0:  # the first attempt applied and its reply was lost: now forget
                for sm in c.sms.values():
                    sm.sessions.pop(sid, None)
            return await original(address, request, budget)

        kv._attempt = forget_then_send  # type: ignore[method-assign]
        with pytest.raises(SessionExpired):
            await kv.put(b"a", b"2")
        assert kv.client_id != sid
