"""The gRPC transport on loopback: delivery, reconnects, rejection of bad input, snapshots,
membership changes and shutdown."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any

import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server as GrpclibServer
from grpclib.server import Stream

from phalanx_aio._entry_batch import BatchCache, entry_parts
from phalanx_aio._grpc import WireBytes
from phalanx_aio.core.types import Message, MessageType
from phalanx_aio.errors import ClosedError, ConfigError
from phalanx_aio.transport.chunks import snapshot_chunks
from phalanx_aio.transport.codec import (
    INSTALL_SNAPSHOT_METHOD,
    STREAM_METHOD,
    Limits,
    decode_snapshot_ack,
    decode_stream_ack,
    encode_frames,
)
from phalanx_aio.transport.grpc import STAT_KEYS, GrpcTransport
from tests.transport.harness import (
    CLUSTER,
    DEADLINE,
    FAST,
    Factory,
    Recorder,
    app,
    connect,
    eventually,
    free_port,
    heartbeat,
    node,
    own_tasks,
    raw_call,
    snap,
)

__all__ = ["node"]  # the fixture, imported for use here


async def test_three_nodes_exchange_exactly_and_in_order(node: Factory) -> None:
    nodes = [await node(f"n{i}") for i in (1, 2, 3)]
    transports = [t for t, _ in nodes]
    connect(*transports)
    sent: dict[tuple[str, str], list[Message]] = {}
    for round_ in range(20):  # many send() calls, interleaved, to be batched as they come
        for t, _ in nodes:
            for o in transports:
                if o is t:
                    continue
                batch = [heartbeat(t.node_id, o.node_id, round_), app(t.node_id, o.node_id, round_ * 10)]
                sent.setdefault((t.node_id, o.node_id), []).extend(batch)
                t.send(batch)
        if round_ % 5 == 0:
            await asyncio.sleep(0)
    for t, rec in nodes:
        senders = [o.node_id for o in transports if o is not t]
        expected = sum(len(sent[(s, t.node_id)]) for s in senders)
        await rec.wait(lambda rec=rec, expected=expected: len(rec.received) == expected)
        for s in senders:
            assert rec.from_(s) == sent[(s, t.node_id)]
        assert rec.unreachable == []
    for t in transports:
        stats = t.stats
        assert stats["messages_sent"] == 2 * 40 == stats["messages_received"]
        assert 2 <= stats["frames_sent"] <= 40  # batched: fewer frames than send() calls
        assert stats["streams_opened"] == 2
        assert set(STAT_KEYS) <= set(stats)
        assert all(stats[k] == 0 for k in stats if k.startswith(("rejected_", "dropped_")))


async def test_large_batch_is_split_into_frames_within_limits(node: Factory) -> None:
    limits = Limits(max_frame_bytes=64 << 10, max_messages=100)
    (a, _), (b, rb) = await node("a", limits=limits), await node("b", limits=limits)
    connect(a, b)
    msgs = [app("a", "b", i * 10, n_entries=4, size=1000) for i in range(60)]
    msgs += [heartbeat("a", "b", i) for i in range(500)]
    a.send(msgs)
    await rb.wait(lambda: len(rb.received) == len(msgs))
    assert rb.from_("a") == msgs
    assert a.stats["frames_sent"] >= 6  # 60 x ~4 KiB over 64 KiB frames, 500 small over 100 a frame
    assert b.stats["rejected_too_large"] == 0


async def test_received_entries_prime_the_receivers_batch_cache(node: Factory) -> None:
    (a, _), (b, rb) = await node("a"), await node("b")
    b.batch_cache = cache = BatchCache()  # what the owning node hands its transport
    connect(a, b)
    msg = app("a", "b", 10, n_entries=5, size=100)
    a.send([msg])
    await rb.wait(lambda: len(rb.received) == 1)
    got = rb.from_("a")[0]
    assert cache.last is not None and cache.last[0] is got.entries
    assert b"".join(cache.last[1]) == b"".join(entry_parts(msg.entries, 64)[0])


async def test_peer_down_at_first_then_up(node: Factory) -> None:
    port = free_port()
    a, ra = await node("a")
    a.set_peers({"b": f"127.0.0.1:{port}"})
    early = [heartbeat("a", "b", i) for i in range(5)]
    a.send(early)
    await ra.wait(lambda: ra.unreachable == ["b"])
    await eventually(lambda: a.stats["stream_failures"] >= 3)
    assert ra.unreachable == ["b"]  # once per failure episode, not once per attempt
    b, rb = await node("b", listen=f"127.0.0.1:{port}")
    b.set_peers({"a": a.address})
    late = [app("a", "b", 7)]
    a.send(late)
    await rb.wait(lambda: len(rb.received) == 6)
    assert rb.from_("a") == early + late  # queued while down, in order
    assert a.stats["reconnects"] == 1
    assert ra.unreachable == ["b"]


async def test_unreachable_reported_again_after_recovery(node: Factory) -> None:
    (a, ra), (b, rb) = await node("a"), await node("b")
    connect(a, b)
    a.send([heartbeat("a", "b", 1)])
    await rb.wait(lambda: len(rb.received) == 1)
    port = int(b.address.rsplit(":", 1)[1])
    await b.aclose()
    await ra.wait(lambda: ra.unreachable == ["b"])
    b2, rb2 = await node("b", listen=f"127.0.0.1:{port}")
    b2.set_peers({"a": a.address})
    a.send([heartbeat("a", "b", 2)])
    await rb2.wait(lambda: len(rb2.received) == 1)
    assert rb2.from_("a") == [heartbeat("a", "b", 2)]
    await b2.aclose()
    await ra.wait(lambda: ra.unreachable == ["b", "b"])  # a new episode, reported again


async def test_peer_that_never_answers_times_out(node: Factory) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accept TCP, never speak HTTP/2
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        a, ra = await node("a", connect_timeout=0.2)
        a.set_peers({"b": f"127.0.0.1:{port}"})
        a.send([heartbeat("a", "b", 1)])
        await ra.wait(lambda: ra.unreachable == ["b"])
        assert a.stats["streams_opened"] == 0
        await a.aclose()
    finally:
        server.close()
        await server.wait_closed()


class Stall:
    """A RaftPeer.Stream that accepts the stream, then never reads again (flow control fills)."""

    def __init__(self) -> None:
        self.accepted = asyncio.Event()

    def __mapping__(self) -> dict[str, Handler]:
        return {STREAM_METHOD: Handler(self.stream, Cardinality.STREAM_UNARY, WireBytes, WireBytes)}

    async def stream(self, stream: Stream[WireBytes, WireBytes]) -> None:
        await stream.recv_message()
        await stream.send_initial_metadata()
        self.accepted.set()
        await asyncio.Event().wait()


async def test_stalled_stream_is_dropped_after_the_send_timeout(node: Factory) -> None:
    stall = Stall()
    server = GrpclibServer([stall])
    await server.start("127.0.0.1", 0)
    port = server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        a, ra = await node("a", send_timeout=0.3)
        a.set_peers({"b": f"127.0.0.1:{port}"})
        await asyncio.wait_for(stall.accepted.wait(), DEADLINE)
        a.send([app("a", "b", i * 100, n_entries=16, size=4096) for i in range(200)])  # ~13 MB
        await ra.wait(lambda: ra.unreachable == ["b"])
        assert a.stats["streams_opened"] >= 1
        assert a.stats["messages_sent"] == 0  # the batch never got through
        await a.aclose()
    finally:
        server.close()
        await server.wait_closed()


async def test_queue_bound_drops_oldest(node: Factory) -> None:
    port = free_port()
    a, _ = await node("a", max_queue=3)
    a.set_peers({"b": f"127.0.0.1:{port}"})
    msgs = [heartbeat("a", "b", i) for i in range(10)]
    a.send(msgs)
    assert a.stats["dropped_queue_full"] == 7
    b, rb = await node("b", listen=f"127.0.0.1:{port}")
    b.set_peers({"a": a.address})
    await rb.wait(lambda: len(rb.received) == 3)
    assert rb.from_("a") == msgs[7:]


async def test_unknown_destination_is_dropped_and_counted(node: Factory) -> None:
    (a, _), (b, rb) = await node("a"), await node("b")
    connect(a, b)
    a.send([heartbeat("a", "zz", 1), heartbeat("a", "a", 2), heartbeat("a", "b", 3)])
    await rb.wait(lambda: len(rb.received) == 1)
    assert a.stats["dropped_unknown_peer"] == 2


# ---------------------------------------------------------------------------------------------
# Rejection of bad input


async def test_foreign_cluster_is_rejected(node: Factory) -> None:
    (a, ra), (b, rb) = await node("a", cluster_id="other"), await node("b")
    connect(a, b)
    a.send([heartbeat("a", "b", 1)])
    await ra.wait(lambda: ra.unreachable == ["b"])
    assert b.stats["rejected_cluster"] >= 1
    assert rb.received == [] and b.stats["frames_received"] == 0
    assert a.stats["streams_opened"] == 0


async def test_unknown_sender_is_rejected_until_it_becomes_a_peer(node: Factory) -> None:
    (a, ra), (b, rb) = await node("a"), await node("b")
    a.set_peers({"b": b.address})  # b does not know a
    a.send([heartbeat("a", "b", 1)])
    await ra.wait(lambda: ra.unreachable == ["b"])
    assert b.stats["rejected_sender"] >= 1
    assert rb.received == []
    b.set_peers({"a": a.address})
    await rb.wait(lambda: len(rb.received) == 1)
    assert rb.from_("a") == [heartbeat("a", "b", 1)]


async def test_malformed_bytes_are_rejected_and_the_server_keeps_serving(node: Factory) -> None:
    (a, _), (b, rb) = await node("a"), await node("b")
    connect(a, b)
    for garbage in (b"\xff\xff\xff\xff\xff", b"\x0a\x05ab", b"not a protobuf frame at all"):
        with pytest.raises(GRPCError) as info:
            await raw_call(b.address, STREAM_METHOD, [garbage])
        assert info.value.status is Status.INVALID_ARGUMENT
    with pytest.raises(GRPCError) as info:
        await raw_call(b.address, INSTALL_SNAPSHOT_METHOD, [b"\x08\x01\x10"])
    assert info.value.status is Status.INVALID_ARGUMENT
    assert b.stats["rejected_malformed"] == 4
    assert rb.received == []
    a.send([heartbeat("a", "b", 9)])
    await rb.wait(lambda: len(rb.received) == 1)
    assert rb.from_("a") == [heartbeat("a", "b", 9)]


@pytest.mark.parametrize(
    ("sender", "message", "reason", "status"),
    [
        ("a", heartbeat("a", "zz", 1), "destination", Status.FAILED_PRECONDITION),
        ("a", heartbeat("b", "b", 1), "origin", Status.PERMISSION_DENIED),
        ("mallory", heartbeat("mallory", "b", 1), "sender", Status.PERMISSION_DENIED),
    ],
)
async def test_frames_that_lie_are_rejected(
    node: Factory, sender: str, message: Message, reason: str, status: Status
) -> None:
    (a, _), (b, rb) = await node("a"), await node("b")
    connect(a, b)
    frames = encode_frames(CLUSTER, sender, [message])
    with pytest.raises(GRPCError) as info:
        await raw_call(b.address, STREAM_METHOD, frames)
    assert info.value.status is status
    assert b.stats[f"rejected_{reason}"] == 1
    assert rb.received == []


async def test_sender_cannot_change_within_a_call(node: Factory) -> None:
    (a, _), (b, rb) = await node("a"), await node("b")
    (c, _) = await node("c")
    b.set_peers({"a": a.address, "c": c.address})
    first = encode_frames(CLUSTER, "a", [heartbeat("a", "b", 1)])
    second = encode_frames(CLUSTER, "c", [heartbeat("c", "b", 2)])
    with pytest.raises(GRPCError) as info:
        await raw_call(b.address, STREAM_METHOD, first + second)
    assert info.value.status is Status.PERMISSION_DENIED
    assert b.stats["rejected_sender"] == 1
    assert rb.received == [("a", heartbeat("a", "b", 1))]  # the valid first frame only


async def test_oversized_message_is_refused_by_its_length_prefix(node: Factory) -> None:
    limits = Limits(max_frame_bytes=4096)
    (a, _), (b, rb) = await node("a"), await node("b", limits=limits)
    connect(a, b)
    big = encode_frames(CLUSTER, "a", [app("a", "b", 1, n_entries=2, size=3000)])
    assert len(big) == 1 and len(big[0]) > 4096
    with pytest.raises(GRPCError) as info:
        await raw_call(b.address, STREAM_METHOD, big)
    assert info.value.status is Status.RESOURCE_EXHAUSTED
    assert b.stats["rejected_too_large"] == 1
    assert rb.received == []


async def test_valid_raw_stream_gets_an_ack(node: Factory) -> None:
    (a, _), (b, rb) = await node("a"), await node("b")
    connect(a, b)
    frames = encode_frames(CLUSTER, "a", []) + encode_frames(CLUSTER, "a", [heartbeat("a", "b", 1)] * 3)
    ack = await raw_call(b.address, STREAM_METHOD, frames)
    assert decode_stream_ack(ack) == (2, 3)
    assert len(rb.received) == 3


async def test_handler_exception_does_not_break_the_stream(node: Factory) -> None:
    (a, _), (b, rb) = await node("a"), await node("b")
    connect(a, b)
    calls: list[int] = []
    original = rb.on_messages

    def flaky(sender: str, messages: Sequence[Message]) -> None:
        calls.append(len(messages))
        if len(calls) == 1:
            raise RuntimeError("handler bug")
        original(sender, messages)

    rb.on_messages = flaky  # type: ignore[method-assign]
    a.send([heartbeat("a", "b", 1)])
    await eventually(lambda: b.stats["handler_errors"] == 1)
    a.send([heartbeat("a", "b", 2)])
    await rb.wait(lambda: len(rb.received) == 1)
    assert rb.from_("a") == [heartbeat("a", "b", 2)]
    assert b.stats["inbound_streams"] == 1  # the same stream carried on


# ---------------------------------------------------------------------------------------------
# Snapshots


async def test_snapshot_of_a_few_megabytes_is_delivered_in_chunks(node: Factory) -> None:
    (a, ra), (b, rb) = await node("a", snapshot_chunk_bytes=256 << 10), await node("b")
    connect(a, b)
    data = random.Random(3).randbytes(3 << 20)
    m = snap("a", "b", data)
    a.send([heartbeat("a", "b", 1), m, heartbeat("a", "b", 2)])
    await ra.wait(lambda: ra.snapshot_status == [("b", True)])
    await rb.wait(lambda: len(rb.received) == 3)
    got = [x for x in rb.from_("a") if x.type is MessageType.SNAP]
    assert got == [m]
    assert [x for x in rb.from_("a") if x.type is MessageType.HEARTBEAT] == [
        heartbeat("a", "b", 1),
        heartbeat("a", "b", 2),
    ]
    assert a.stats["snapshots_sent"] == 1 and b.stats["snapshots_received"] == 1
    assert a.stats["messages_sent"] == 2  # the SNAP did not ride the stream


async def test_snapshot_to_a_dead_peer_fails(node: Factory) -> None:
    a, ra = await node("a", connect_timeout=2.0)
    a.set_peers({"b": f"127.0.0.1:{free_port()}"})
    a.send([snap("a", "b", b"x" * 1000)])
    await ra.wait(lambda: ra.snapshot_status == [("b", False)])
    assert a.stats["snapshots_failed"] == 1


async def test_snapshot_with_a_bad_checksum_is_rejected(node: Factory) -> None:
    (a, _), (b, rb) = await node("a"), await node("b")
    connect(a, b)
    chunks = list(snapshot_chunks(CLUSTER, "a", snap("a", "b", b"y" * 5000), chunk_bytes=1000))
    last = bytearray(chunks[-1])
    last[-1] ^= 0x01  # the checksum's last varint byte (stays a valid varint)
    chunks[-1] = bytes(last)
    with pytest.raises(GRPCError) as info:
        await raw_call(b.address, INSTALL_SNAPSHOT_METHOD, chunks)
    assert info.value.status is Status.INVALID_ARGUMENT
    assert b.stats["rejected_malformed"] == 1
    ok = list(snapshot_chunks(CLUSTER, "a", snap("a", "b", b"z" * 5000), chunk_bytes=1000))
    with pytest.raises(GRPCError):
        await raw_call(b.address, INSTALL_SNAPSHOT_METHOD, ok[:-1])
    assert b.stats["rejected_snapshot_incomplete"] == 1
    foreign = list(snapshot_chunks("other", "a", snap("a", "b", b"z" * 50)))
    with pytest.raises(GRPCError):
        await raw_call(b.address, INSTALL_SNAPSHOT_METHOD, foreign)
    assert b.stats["rejected_cluster"] == 1
    assert rb.received == []
    assert decode_snapshot_ack(await raw_call(b.address, INSTALL_SNAPSHOT_METHOD, ok)) == 5000
    assert [m.type for _, m in rb.received] == [MessageType.SNAP]


async def test_newer_snapshot_supersedes_a_pending_one(node: Factory) -> None:
    port = free_port()
    a, ra = await node("a", connect_timeout=2.0)
    a.set_peers({"b": f"127.0.0.1:{port}"})
    # Sent together, before the transfer task runs: each replaces the one still pending, which
    # is reported failed; only the newest is attempted (and fails: nobody listens).
    a.send([snap("a", "b", b"1" * 10)])
    a.send([snap("a", "b", b"2" * 10)])
    a.send([snap("a", "b", b"3" * 10)])
    await ra.wait(lambda: len(ra.snapshot_status) == 3)
    assert a.stats["dropped_snapshot_superseded"] == 2
    assert a.stats["snapshots_failed"] == 1
    assert ra.snapshot_status == [("b", False)] * 3


# ---------------------------------------------------------------------------------------------
# Membership and lifecycle


async def test_removing_a_peer_stops_sending(node: Factory) -> None:
    (a, _), (b, rb) = await node("a"), await node("b")
    connect(a, b)
    a.send([heartbeat("a", "b", 1)])
    await rb.wait(lambda: len(rb.received) == 1)
    assert any(t.get_name() == "phalanx-send-a-b" for t in own_tasks())
    a.set_peers({})
    await eventually(lambda: b.stats["inbound_streams_ended"] == 1)  # b saw the stream close
    assert not any(t.get_name().startswith("phalanx-send-a-") for t in own_tasks())
    a.send([heartbeat("a", "b", 2)])
    assert a.stats["dropped_unknown_peer"] == 1
    assert b.stats["inbound_streams"] == 1
    assert rb.from_("a") == [heartbeat("a", "b", 1)]


async def test_address_change_reconnects_to_the_new_address(node: Factory) -> None:
    (a, ra), (b, rb) = await node("a"), await node("b")
    b.set_peers({"a": a.address})
    a.set_peers({"b": f"127.0.0.1:{free_port()}"})
    a.send([heartbeat("a", "b", 1)])
    await ra.wait(lambda: ra.unreachable == ["b"])
    a.set_peers({"b": b.address})
    await rb.wait(lambda: len(rb.received) == 1)
    assert rb.from_("a") == [heartbeat("a", "b", 1)]
    assert a.peers == {"b": b.address}


async def test_peers_before_start_and_bad_addresses(node: Factory) -> None:
    b, rb = await node("b")
    a, ra = await node("a", start=False, peers={"b": b.address, "x": "nonsense", "a": "ignored:1"})
    assert a.peers == {"b": b.address, "x": "nonsense"}
    a.send([heartbeat("a", "b", 1), heartbeat("a", "x", 1)])
    b.set_peers({"a": "127.0.0.1:1"})
    await a.start(ra)
    await rb.wait(lambda: len(rb.received) == 1)
    await ra.wait(lambda: ra.unreachable == ["x"])  # an address that does not parse: unreachable


async def test_aclose_is_idempotent_and_leaves_no_tasks(node: Factory) -> None:
    before = set(own_tasks())
    (a, _), (b, rb) = await node("a"), await node("b")
    connect(a, b)
    a.send([heartbeat("a", "b", 1), snap("a", "b", b"s" * 100_000)])
    b.send([heartbeat("b", "a", 1)])
    await rb.wait(lambda: len(rb.received) >= 1)
    await asyncio.gather(a.aclose(), a.aclose(), b.aclose())
    await a.aclose()
    await b.aclose()
    assert set(own_tasks()) <= before
    a.send([heartbeat("a", "b", 2)])
    assert a.stats["dropped_closed"] == 1
    with pytest.raises(ClosedError):
        await a.start(Recorder())


async def test_aclose_completes_when_the_caller_is_cancelled(node: Factory) -> None:
    (a, _), (b, _) = await node("a"), await node("b")
    connect(a, b)
    closer = asyncio.create_task(a.aclose())
    await asyncio.sleep(0)
    closer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closer
    await asyncio.wait_for(a.aclose(), DEADLINE)  # waits for the shielded shutdown
    assert not any(t.get_name().startswith("phalanx-send-a-") for t in own_tasks())


async def test_a_cancellation_that_comes_with_the_connection_loss_stops_the_sender(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 17: grpclib cancels the task awaiting a call whose connection is lost and raises
    StreamTerminatedError in place of the CancelledError. When the transport cancelled its
    sender in the same turn (aclose while the peer shuts down too), that cancellation was
    swallowed with it: the sender took it for a connection failure, went back to its reconnect
    loop, and aclose waited for it for ever. The turn is arranged here exactly: the connection
    is aborted (asyncio reports the loss on the next turn), then the sender is cancelled."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accept TCP, never answer: the sender waits for the stream's accept
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    # Not the fixture: its aclose would wait for ever on the bug this test is about.
    a = GrpcTransport(
        node_id="a", cluster_id=CLUSTER, listen="127.0.0.1:0", connect_timeout=DEADLINE,
        keepalive_interval=None, rng=random.Random(7), **FAST,
    )  # fmt: skip
    await a.start(Recorder())
    try:
        channels: list[Channel] = []
        make_channel = a._channel

        def recording(address: str) -> Channel:
            channels.append(make_channel(address))
            return channels[-1]

        monkeypatch.setattr(a, "_channel", recording)
        a.set_peers({"b": f"127.0.0.1:{port}"})
        # Connected, hello sent: the sender now waits in grpclib for the stream's headers.
        await eventually(
            lambda: (
                bool(channels)
                and channels[0]._protocol is not None
                and channels[0]._protocol.connection.messages_sent >= 1
            )
        )
        sender = a._peers["b"].task
        assert sender is not None
        protocol = channels[0]._protocol
        assert protocol is not None
        protocol.connection._transport.abort()  # connection_lost runs on the next turn
        sender.cancel()  # the same turn as the loss, before the sender runs again
        await asyncio.wait({sender}, timeout=DEADLINE)
        assert sender.cancelled(), "the sender swallowed its cancellation and kept reconnecting"
    finally:
        await asyncio.wait_for(a.aclose(), DEADLINE)
        server.close()
        await server.wait_closed()


async def test_aclose_returns_when_a_task_swallows_its_cancellation(
    node: Factory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A transport task that loses one cancellation (as grpclib can make it) is cancelled again:
    aclose still returns, and says so in the log."""
    monkeypatch.setattr("phalanx_aio.transport.grpc._STOP_RECHECK", 0.05)
    a, _ = await node("a")
    swallowed = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            swallowed.set()  # the first cancellation is lost ...
        await asyncio.Event().wait()  # ... the second one ends it

    task = asyncio.create_task(stubborn(), name="stubborn")
    a._retired.add(task)
    await asyncio.wait_for(a.aclose(), DEADLINE)
    assert swallowed.is_set() and task.cancelled()
    assert any("stubborn did not stop when cancelled" in r.getMessage() for r in caplog.records)


async def test_aclose_before_start(node: Factory) -> None:
    a, _ = await node("a", start=False, peers={"b": "127.0.0.1:1"})
    await a.aclose()
    await a.aclose()
    with pytest.raises(ClosedError):
        await a.start(Recorder())


async def test_port_zero_exposes_the_bound_port(node: Factory) -> None:
    a, _ = await node("a", start=False)
    assert a.address == "127.0.0.1:0"
    await a.start(Recorder())
    host, port = a.address.rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0


async def test_start_fails_on_a_port_in_use(node: Factory) -> None:
    a, _ = await node("a")
    b, _ = await node("b", start=False, listen=a.address)
    with pytest.raises(OSError):
        await b.start(Recorder())


class Echo:
    """A stand-in for another gRPC service served on the same port."""

    def __mapping__(self) -> dict[str, Handler]:
        return {"/test.Echo/Echo": Handler(self.echo, Cardinality.STREAM_UNARY, WireBytes, WireBytes)}

    async def echo(self, stream: Stream[WireBytes, WireBytes]) -> None:
        parts = [m.data async for m in stream]
        await stream.send_message(WireBytes(b"".join(parts)))


async def test_extra_handlers_share_the_server(node: Factory) -> None:
    a, _ = await node("a", extra_handlers=[Echo()])
    assert await raw_call(a.address, "/test.Echo/Echo", [b"he", b"llo"]) == b"hello"


def test_configuration_is_validated() -> None:
    good: dict[str, Any] = {"node_id": "a", "cluster_id": "c", "listen": "127.0.0.1:0"}
    for bad in (
        {"node_id": ""},
        {"cluster_id": ""},
        {"listen": "nohost"},
        {"listen": "::1:80"},
        {"listen": "h:99999"},
        {"max_queue": 0},
        {"backoff_initial": 0},
        {"backoff_initial": 1.0, "backoff_max": 0.5},
        {"backoff_jitter": 1.5},
        {"snapshot_chunk_bytes": 0},
        {"limits": object()},
    ):
        with pytest.raises(ConfigError):
            GrpcTransport(**{**good, **bad})

    class Clash(Echo):
        def __mapping__(self) -> dict[str, Handler]:
            return {STREAM_METHOD: super().__mapping__()["/test.Echo/Echo"]}

    with pytest.raises(ConfigError):
        GrpcTransport(**good, extra_handlers=[Clash()])
    t = GrpcTransport(**{**good, "listen": "[::1]:0"})
    assert t.address == "[::1]:0"
    with pytest.raises(ConfigError):
        t.set_peers({"": "127.0.0.1:1"})


def test_backoff_grows_to_the_maximum_with_seeded_jitter() -> None:
    def delays(seed: int) -> list[float]:
        t = GrpcTransport(
            node_id="a",
            cluster_id="c",
            listen="127.0.0.1:0",
            backoff_initial=0.1,
            backoff_max=1.0,
            backoff_jitter=0.5,
            rng=random.Random(seed),
        )
        return [t._backoff_delay(n) for n in range(8)]

    d = delays(1)
    assert d == delays(1)  # reproducible with an injected generator
    bases = [min(1.0, 0.1 * 2**n) for n in range(8)]
    assert all(b / 2 <= x <= b for x, b in zip(d, bases, strict=True))
    assert d[-1] >= 0.5


async def test_a_removed_member_is_refused_and_told(node: Factory) -> None:
    a, ra = await node("a")
    b, rb = await node("b")
    connect(a, b)
    a.send([heartbeat("a", "b", 1)])
    await rb.wait(lambda: len(rb.received) == 1)
    # b applies a committed change at index 7 that removes a: a is no peer of b's any more.
    b.set_peers({})
    b.set_removed({"a": 7})
    a.send([heartbeat("a", "b", 2)])
    await ra.wait(lambda: ("b", 7) in ra.removed)
    assert rb.received == [("a", heartbeat("a", "b", 1))]
    await eventually(lambda: b.stats["rejected_removed"] >= 1)
    assert b.stats["rejected_sender"] == 0
    # Added again: a's messages flow once more (a peer is never refused as removed).
    b.set_peers({"a": a.address})
    a.send([heartbeat("a", "b", 3)])
    await rb.wait(lambda: ("a", heartbeat("a", "b", 3)) in rb.received)


async def test_a_sender_that_is_not_a_peer_is_not_told_it_was_removed(node: Factory) -> None:
    a, ra = await node("a")
    b, rb = await node("b")
    a.set_peers({"b": b.address})  # b does not know a, and never removed it
    b.set_removed({"c": 3})
    a.send([heartbeat("a", "b", 1)])
    await ra.wait(lambda: ra.unreachable == ["b"])
    assert ra.removed == [] and rb.received == []
    await eventually(lambda: b.stats["rejected_sender"] >= 1)
