"""The KV ``Stream`` call and the request size limit, on a real three-node cluster: raw batches
answered by id, bad input ends only its own call, oversized requests are refused before being
read, and KVClient's stream path (batching, giving up, closing, the unary fallback)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError

from phalanx_aio._grpc import WireBytes
from phalanx_aio.errors import ClosedError, LocalError, OutcomeUnknown
from phalanx_aio.kv import ErrorCode, KVClient, KVService, RequestRefused
from phalanx_aio.kv import messages as m
from phalanx_aio.kv.client import _AttemptFailed, _StreamConn
from phalanx_aio.kv.stream_codec import KV_STREAM_METHOD, decode_kv_stream_responses, encode_kv_stream_request
from tests.kv.cluster import CLUSTER, DEADLINE, KVCluster, grpc_call, hdr, kv_cluster

__all__ = ["kv_cluster"]  # the fixture, imported for use here


def client(c: KVCluster, *endpoints: str, **kw: Any) -> KVClient:
    kw.setdefault("timeout", DEADLINE)
    return KVClient(list(endpoints) or list(c.addr.values()), cluster_id=CLUSTER, **kw)


async def stream_exchange(address: str, batches: list[bytes], answers: int) -> list[tuple[int, Any]]:
    """Send ``batches`` on one raw Stream call and collect ``answers`` answers."""
    host, port = address.rsplit(":", 1)
    channel = Channel(host, int(port))
    got: list[tuple[int, Any]] = []
    try:
        async with channel.request(
            KV_STREAM_METHOD, Cardinality.STREAM_STREAM, WireBytes, WireBytes, timeout=DEADLINE
        ) as stream:
            for batch in batches:
                await stream.send_message(WireBytes(batch))
            while len(got) < answers:
                reply = await stream.recv_message()
                assert reply is not None
                got.extend(decode_kv_stream_responses(reply.data))
            await stream.end()
            assert await stream.recv_message() is None  # the node ends the call once done
    finally:
        channel.close()
    return got


async def test_raw_stream_answers_every_request_by_id(kv_cluster: KVCluster) -> None:
    c = kv_cluster
    leader = await c.leader()
    follower = await c.follower()
    first = b"".join(
        encode_kv_stream_request(100 + i, 5000, m.PutRequest(hdr("s", i + 1), b"k%d" % i, b"v"))
        for i in range(20)
    )
    second = b"".join(
        [
            encode_kv_stream_request(7, 0, m.CompareAndSetRequest(hdr("s", 21, 20), b"k0", b"v", b"w")),
            encode_kv_stream_request(8, 0, m.DeleteRequest(hdr("s", 22, 20), b"k1")),
            encode_kv_stream_request(9, 0, m.GetRequest(hdr(), b"")),  # an empty key: refused
        ]
    )
    batches: list[int] = []
    real_propose_many = leader.propose_many

    async def recording_propose_many(commands: Any, **kw: Any) -> Any:
        commands = list(commands)
        batches.append(len(commands))
        return await real_propose_many(commands, **kw)

    leader.propose_many = recording_propose_many  # type: ignore[method-assign]
    got = dict(await stream_exchange(c.addr[leader.id], [first, second], 23))
    assert batches[0] == 20  # the first message's writes went to the node as one batch
    assert sorted(got) == [7, 8, 9, *range(100, 120)]
    assert all(got[100 + i] == m.PutResponse(got[100 + i].header, None) for i in range(20))
    assert all(got[100 + i].header.error is ErrorCode.OK for i in range(20))
    assert got[7].swapped and got[7].current == b"v"
    assert got[8].deleted is True
    assert got[9].header.error is ErrorCode.INVALID_ARGUMENT
    # A follower answers writes on the stream as the unary method does.
    redirected = dict(
        await stream_exchange(
            c.addr[follower.id], [encode_kv_stream_request(1, 0, m.PutRequest(hdr("t", 1), b"x", b"y"))], 1
        )
    )
    assert redirected[1].header.error is ErrorCode.NOT_LEADER
    assert redirected[1].header.leader_address == c.addr[leader.id]
    assert leader.state_machine.get(b"k0") == b"w"  # type: ignore[attr-defined]


async def test_bad_and_oversized_messages_end_only_their_call(kv_cluster: KVCluster) -> None:
    c = kv_cluster
    leader = await c.leader()
    service = c.services[leader.id]
    address = c.addr[leader.id]
    with pytest.raises(GRPCError) as info:
        await stream_exchange(address, [b"\x0a\x05ab"], 1)  # an item running past the end
    assert info.value.status is Status.INVALID_ARGUMENT
    service.max_request_bytes = 64 << 10
    big = m.PutRequest(hdr("big", 1), b"k", b"x" * (100 << 10))
    with pytest.raises(GRPCError) as info:
        await grpc_call(address, big)  # unary: refused before being read
    assert info.value.status is Status.RESOURCE_EXHAUSTED
    assert "over this node's limit of 65536" in (info.value.message or "")
    with pytest.raises(GRPCError) as info:
        await stream_exchange(address, [encode_kv_stream_request(1, 0, big)], 1)
    assert info.value.status is Status.RESOURCE_EXHAUSTED
    assert service.rejections == {"too_large": 2, "malformed": 1}
    # The node still serves, and nothing of the refused requests was applied.
    ok = await grpc_call(address, m.PutRequest(hdr("big", 1), b"k", b"small"))
    assert ok.header.error is ErrorCode.OK and ok.previous is None
    # KVClient: a request over the node's limit is refused, certainly not applied.
    async with client(c) as kv:
        with pytest.raises(RequestRefused) as refused:
            await kv.put(b"k", b"x" * (100 << 10))
        assert refused.value.code is ErrorCode.INVALID_ARGUMENT
        assert await kv.get(b"k") == b"small"
    # ... and a request over the client's own limit is refused without being sent.
    async with client(c, max_request_bytes=1000) as kv:
        with pytest.raises(RequestRefused, match="over the limit of 1000"):
            await kv.put(b"k", b"x" * 2000)
    with pytest.raises(LocalError):
        KVService(max_request_bytes=1000)


async def test_client_batches_concurrent_calls_on_one_stream(kv_cluster: KVCluster) -> None:
    c = kv_cluster
    leader = await c.leader()
    sent: list[int] = []
    async with client(c, c.addr[leader.id]) as kv:
        await kv.put(b"warm", b"up")
        conn = kv._streams[c.addr[leader.id]]
        real_submit = conn.submit

        def counting_submit(rid: int, data: bytes) -> Any:
            sent.append(rid)
            return real_submit(rid, data)

        conn.submit = counting_submit  # type: ignore[method-assign]
        results = await asyncio.gather(*(kv.put(b"c%d" % i, b"%d" % i) for i in range(200)))
        assert results == [None] * 200
        values = await asyncio.gather(*(kv.get(b"c%d" % i) for i in range(200)))
        assert values == [b"%d" % i for i in range(200)]
        assert len(sent) == 400 and list(kv._streams) == [c.addr[leader.id]]
        assert kv._streams[c.addr[leader.id]] is conn  # one stream carried everything
        assert kv._session.acked == 201  # every number finished, in order
    assert leader.state_machine.get(b"c199") == b"199"  # type: ignore[attr-defined]


async def test_large_requests_and_stream_off_use_unary_calls(kv_cluster: KVCluster) -> None:
    c = kv_cluster
    await c.leader()
    async with client(c, stream=False) as kv:
        assert await kv.put(b"k", b"v") is None
        assert await kv.cas(b"k", b"v", b"w") is True
        assert await kv.get(b"k") == b"w"
        assert await kv.delete(b"k") is True
        assert not kv._streams
    async with client(c) as kv:
        big = b"x" * (32 << 10)  # over the stream item size: a unary call
        assert await kv.put(b"big", big) is None
        assert not kv._streams
        assert await kv.get(b"big") == big  # a small request: on the stream
        assert list(kv._streams) == [kv.leader]


async def test_giving_up_before_sending_never_sends(kv_cluster: KVCluster) -> None:
    c = kv_cluster
    leader = await c.leader()
    async with client(c, c.addr[leader.id]) as kv:
        await kv.put(b"warm", b"up")
        conn = kv._streams[c.addr[leader.id]]
        # Hold the writer back: the request stays queued, then its caller gives up.
        conn._wake.set = lambda: None  # type: ignore[method-assign]
        with pytest.raises(_AttemptFailed) as info:
            await kv._attempt(c.addr[leader.id], m.PutRequest(hdr(kv.client_id, 90, 0), b"never", b"x"), 0.05)
        assert info.value.delivered is False  # it was never handed to the connection
        del conn._wake.set
        assert conn._outbox  # still queued, marked abandoned
        assert await kv.put(b"after", b"x") is None  # the writer skips the abandoned item
        assert await kv.get(b"never") is None


async def test_closing_with_calls_in_flight(kv_cluster: KVCluster) -> None:
    c = kv_cluster
    await c.leader()
    kv = client(c)
    await kv.put(b"warm", b"up")
    calls = [asyncio.create_task(kv.put(b"k%d" % i, b"v")) for i in range(20)]
    await asyncio.sleep(0)
    await kv.aclose()
    done = await asyncio.gather(*calls, return_exceptions=True)
    for result in done:
        assert result is None or isinstance(result, OutcomeUnknown | ClosedError), result
    assert all(conn.task.done() for conn in kv._streams.values()) and not kv._streams
    with pytest.raises(ClosedError):
        await kv.put(b"k", b"v")


async def test_a_broken_stream_fails_its_calls_as_maybe_delivered(kv_cluster: KVCluster) -> None:
    c = kv_cluster
    leader = await c.leader()
    async with client(c, c.addr[leader.id]) as kv:
        await kv.put(b"warm", b"up")
        conn: _StreamConn = kv._streams[c.addr[leader.id]]
        item = conn.submit(999, encode_kv_stream_request(999, 0, m.GetRequest(hdr(), b"warm")))
        await asyncio.sleep(0)  # the writer sends it
        conn.task.cancel()
        with pytest.raises(_AttemptFailed) as info:
            await item.future
        assert info.value.delivered is True
        assert await kv.put(b"again", b"x") is None  # a new stream replaces the broken one
        assert kv._streams[c.addr[leader.id]] is not conn


async def test_a_stream_has_at_most_max_stream_inflight_requests_under_way(kv_cluster: KVCluster) -> None:
    c = kv_cluster
    leader = await c.leader()
    service = c.services[leader.id]
    service.max_stream_inflight = 3
    running = peak = 0
    real_handle = service.handle

    async def counting_handle(request: Any, *, timeout: float | None = None) -> Any:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            return await real_handle(request, timeout=timeout)
        finally:
            running -= 1

    service.handle = counting_handle  # type: ignore[method-assign]
    batch = b"".join(encode_kv_stream_request(i, 0, m.GetRequest(hdr(), b"q%d" % i)) for i in range(12))
    got = await stream_exchange(c.addr[leader.id], [batch, batch], 24)
    assert sorted(rid for rid, _ in got) == sorted([*range(12), *range(12)])
    assert all(r.header.error is ErrorCode.OK for _, r in got)
    # A batch is read whole; then nothing more until fewer than 3 are under way (without the
    # bound, both batches would be under way at once: 24).
    assert 12 <= peak <= 12 + 2
