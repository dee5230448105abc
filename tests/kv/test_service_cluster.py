"""The KV gRPC service on a real three-node cluster (RaftNode + KVStateMachine + SQLite +
GrpcTransport, loopback): redirections, sessions, error codes. Nothing asserts wall time; every
wait has a generous deadline.

``KVCluster`` and the ``kv_cluster`` fixture are shared with ``test_client_cluster.py``.
"""

from __future__ import annotations

import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality

from phalanx_aio import LocalError, RaftNode, SQLiteStorage
from phalanx_aio._grpc import WireBytes
from phalanx_aio.kv import KVService, KVStateMachine
from phalanx_aio.kv import messages as m
from phalanx_aio.kv.codec import decode_kv_message
from tests.kv.cluster import CLUSTER, DEADLINE, KVCluster, grpc_call, hdr, kv_cluster

__all__ = ["kv_cluster"]  # the fixture, imported for use here


async def test_follower_redirects_writes_and_serves_reads(kv_cluster: KVCluster) -> None:
    c = kv_cluster
    leader = await c.leader()
    follower = await c.follower()
    put = await grpc_call(c.addr[follower.id], m.PutRequest(hdr("a", 1), b"k", b"v"))
    assert put.header.error is m.ErrorCode.NOT_LEADER
    assert put.header.leader_hint == leader.id
    assert put.header.leader_address == c.addr[leader.id]
    put = await grpc_call(put.header.leader_address, m.PutRequest(hdr("a", 1), b"k", b"v"))
    assert put.header.error is m.ErrorCode.OK and put.previous is None
    assert put.header.term == leader.status().term and put.header.index >= 1
    got = await grpc_call(c.addr[follower.id], m.GetRequest(hdr(), b"k"))  # linearizable, via ReadIndex
    assert got.header.error is m.ErrorCode.OK and got.value == b"v"
    await c.until(lambda: c.sms[follower.id].get(b"k") == b"v")
    stale = await grpc_call(c.addr[follower.id], m.GetRequest(hdr(), b"k", m.ReadConsistency.STALE))
    assert stale.value == b"v"
    lease = await grpc_call(c.addr[leader.id], m.GetRequest(hdr(), b"nope", m.ReadConsistency.LEASE))
    assert lease.header.error is m.ErrorCode.OK and lease.value is None
    for request in (
        m.MemberListRequest(hdr()),
        m.MemberRemoveRequest(hdr(), "n3"),
        m.TransferLeaderRequest(hdr()),
    ):
        refused = await grpc_call(c.addr[follower.id], request)
        assert refused.header.error is m.ErrorCode.NOT_LEADER, request
        assert refused.header.leader_address == c.addr[leader.id]


async def test_same_sequence_twice_is_applied_once(kv_cluster: KVCluster) -> None:
    """A retry after a lost reply (the same header sent again) is answered from the session."""
    c = kv_cluster
    leader = await c.leader()
    at = c.addr[leader.id]
    first = await grpc_call(at, m.PutRequest(hdr("s", 1), b"k", b"one"))
    again = await grpc_call(at, m.PutRequest(hdr("s", 1), b"k", b"one"))
    assert first.previous is None and again.previous is None  # applied twice it would say b"one"
    cas = m.CompareAndSetRequest(hdr("s", 2, 1), b"fresh", None, b"x")
    first_cas, again_cas = await grpc_call(at, cas), await grpc_call(at, cas)
    assert first_cas.swapped and first_cas.current is None
    assert again_cas.swapped and again_cas.current is None  # applied twice it would fail
    delete = m.DeleteRequest(hdr("s", 3, 2), b"k")
    assert (await grpc_call(at, delete)).deleted
    assert (await grpc_call(at, delete)).deleted  # the remembered answer, not "absent"
    # Once acknowledged, a sequence cannot be retried: its outcome can no longer be told. (Here
    # a copy of request 3 arrives late, after request 4 acknowledged it.)
    late = await grpc_call(at, m.PutRequest(hdr("s", 4, 3), b"k", b"x"))
    assert late.header.error is m.ErrorCode.OK
    stale_retry = await grpc_call(at, m.DeleteRequest(hdr("s", 3, 2), b"k"))
    assert stale_retry.header.error is m.ErrorCode.SESSION_EXPIRED
    assert leader.state_machine.get(b"k") == b"x"  # type: ignore[attr-defined]


async def test_cas_reports_what_it_found(kv_cluster: KVCluster) -> None:
    c = kv_cluster
    at = c.addr[(await c.leader()).id]
    await grpc_call(at, m.PutRequest(hdr("c", 1), b"k", b"a"))
    miss = await grpc_call(at, m.CompareAndSetRequest(hdr("c", 2, 1), b"k", b"zzz", b"b"))
    assert miss.header.error is m.ErrorCode.OK and not miss.swapped and miss.current == b"a"
    hit = await grpc_call(at, m.CompareAndSetRequest(hdr("c", 3, 2), b"k", b"a", b"b"))
    assert hit.swapped and hit.current == b"a"
    absent = await grpc_call(at, m.CompareAndSetRequest(hdr("c", 4, 3), b"k", None, b"c"))
    assert not absent.swapped and absent.current == b"b"


async def test_wrong_cluster_and_bad_input_are_refused(kv_cluster: KVCluster) -> None:
    c = kv_cluster
    leader = await c.leader()
    at = c.addr[leader.id]
    foreign = await grpc_call(at, m.PutRequest(hdr("w", 1, cluster="other"), b"k", b"v"))
    assert foreign.header.error is m.ErrorCode.WRONG_CLUSTER
    assert "other" in foreign.header.message
    foreign_read = await grpc_call(at, m.StatusRequest(hdr(cluster="")))
    assert foreign_read.header.error is m.ErrorCode.WRONG_CLUSTER and foreign_read.node_id == ""
    invalid = [
        m.PutRequest(hdr("w", 1), b"", b"v"),  # empty key
        m.PutRequest(hdr("", 1), b"k", b"v"),  # no session
        m.PutRequest(hdr("w", 0), b"k", b"v"),  # no sequence
        m.PutRequest(hdr("w", 2, 2), b"k", b"v"),  # acked at or above the sequence
        m.PutRequest(hdr("w", 1), b"k", b"v" * ((1 << 20) + 1)),  # value too large
        m.GetRequest(hdr(), b""),
        m.MemberAddRequest(hdr(), "", "h:1"),
        m.MemberAddRequest(hdr(), "n9", ""),
    ]
    for request in invalid:
        response = await grpc_call(at, request)
        assert response.header.error is m.ErrorCode.INVALID_ARGUMENT, request
    assert leader.state_machine.get(b"k") is None  # type: ignore[attr-defined]
    # Undecodable bytes get an INVALID_ARGUMENT answer, not a gRPC error.
    host, port = at.rsplit(":", 1)
    channel = Channel(host, int(port))
    try:
        async with channel.request(
            "/phalanx.v1.KV/Put", Cardinality.UNARY_UNARY, WireBytes, WireBytes, timeout=DEADLINE
        ) as stream:
            await stream.send_message(WireBytes(b"\x12\x05ab"), end=True)
            reply = await stream.recv_message()
    finally:
        channel.close()
    assert reply is not None
    assert decode_kv_message(m.PutResponse, reply.data).header.error is m.ErrorCode.INVALID_ARGUMENT


async def test_status_members_and_membership_errors(kv_cluster: KVCluster) -> None:
    c = kv_cluster
    leader = await c.leader()
    follower = await c.follower()
    st = await grpc_call(c.addr[follower.id], m.StatusRequest(hdr()))
    assert st.header.error is m.ErrorCode.OK
    assert (st.node_id, st.role, st.leader_id) == (follower.id, "follower", leader.id)
    assert [(x.node_id, x.address, x.learner) for x in st.members] == [
        (nid, c.addr[nid], False) for nid in c.ids
    ]
    listed = await grpc_call(c.addr[leader.id], m.MemberListRequest(hdr()))
    assert listed.members == st.members
    rejected = await grpc_call(c.addr[leader.id], m.MemberRemoveRequest(hdr(), "n9"))
    assert rejected.header.error is m.ErrorCode.REJECTED and "n9" in rejected.header.message
    already = await grpc_call(c.addr[leader.id], m.MemberAddRequest(hdr(), follower.id, "h:1"))
    assert already.header.error is m.ErrorCode.REJECTED


async def test_service_without_a_node_and_stopped_node() -> None:
    service = KVService()
    response = await service.handle(m.PutRequest(hdr("a", 1), b"k", b"v"))
    assert isinstance(response, m.PutResponse)
    assert response.header.error is m.ErrorCode.NOT_APPLIED
    node = RaftNode(
        "x",
        address="127.0.0.1:1",
        peers={},
        state_machine=KVStateMachine(),
        storage=SQLiteStorage(":memory:"),
        cluster_id=CLUSTER,
    )
    service.attach(node)  # never started
    status = await service.handle(m.StatusRequest(hdr()))
    assert status.header.error is m.ErrorCode.NOT_APPLIED
    write = await service.handle(m.PutRequest(hdr("a", 1), b"k", b"v"))
    assert write.header.error is m.ErrorCode.NOT_LEADER
    with pytest.raises(LocalError, match="KVStateMachine"):
        KVService().attach(
            RaftNode(
                "y",
                address="127.0.0.1:1",
                peers={},
                state_machine=object(),  # type: ignore[arg-type]
                storage=SQLiteStorage(":memory:"),
            )
        )
