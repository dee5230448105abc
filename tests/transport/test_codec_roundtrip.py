"""Round trips: decode(encode(x)) == x for arbitrary core messages, and agreement with the
generated betterproto classes in both directions."""

from __future__ import annotations

import betterproto
import grpclib.encoding.proto
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phalanx_aio._grpc import WireBytes
from phalanx_aio._proto.phalanx import v1 as pb
from phalanx_aio.core.types import ConfState, Entry, EntryType, Message, MessageType, Snapshot, SnapshotMeta
from phalanx_aio.errors import LocalError, ProtocolError
from phalanx_aio.transport import codec
from phalanx_aio.transport.codec import (
    Frame,
    Limits,
    decode_entries,
    decode_frame,
    encode_entries,
    encode_frame,
    encode_frames,
)
from tests.proto_services import proto_methods
from tests.transport.transport_strategies import entries, frames, from_pb, messages, to_pb

SETTINGS = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow],
)


@SETTINGS
@given(frames())
def test_frame_round_trip(frame: tuple[str, str, list[Message]]) -> None:
    cluster_id, sender, msgs = frame
    data = encode_frame(cluster_id, sender, msgs)
    assert decode_frame(data) == Frame(cluster_id, sender, msgs)
    assert decode_frame(bytearray(data)) == (cluster_id, sender, msgs)
    assert decode_frame(memoryview(data)).messages == msgs


@SETTINGS
@given(st.lists(entries, max_size=20))
def test_entries_round_trip(ents: list[Entry]) -> None:
    assert decode_entries(encode_entries(ents)) == tuple(ents)


@SETTINGS
@given(frames())
def test_generated_code_reads_our_frames(frame: tuple[str, str, list[Message]]) -> None:
    cluster_id, sender, msgs = frame
    parsed = pb.PeerFrame().parse(encode_frame(cluster_id, sender, msgs))
    assert (parsed.cluster_id, parsed.sender) == (cluster_id, sender)
    assert [from_pb(p, sender) for p in parsed.messages] == msgs


@SETTINGS
@given(frames())
def test_we_read_frames_of_the_generated_code(frame: tuple[str, str, list[Message]]) -> None:
    cluster_id, sender, msgs = frame
    data = bytes(
        pb.PeerFrame(cluster_id=cluster_id, sender=sender, messages=[to_pb(m, sender) for m in msgs])
    )
    assert decode_frame(data) == (cluster_id, sender, msgs)


def test_typical_messages_are_byte_identical_to_the_generated_code() -> None:
    ents = (Entry(3, 10, EntryType.NORMAL, b"set x 1"), Entry(3, 11, EntryType.NOOP))
    msgs = [
        Message(MessageType.HEARTBEAT, "n2", "n1", 7, commit=40, seq=3),
        Message(MessageType.HEARTBEAT, "n3", "n1", 7, commit=40, seq=3, election_timeout=13),
        Message(MessageType.HEARTBEAT, "n4", "n1", 7, seq=3, election_timeout=13, election_delay=9),
        Message(MessageType.APP, "n2", "n1", 7, log_term=3, index=9, entries=ents, commit=9),
        Message(MessageType.VOTE_RESP, "n1", "n2", 7, reject=True, reject_hint=5),
        Message(MessageType.READ_INDEX, "n1", "n3", 0, context=b"\x00\x01"),
        Message(MessageType.TIMEOUT_NOW, "n3", "n1", 7, transfer=True),
    ]
    ours = encode_frame("c1", "n1", msgs)
    theirs = bytes(pb.PeerFrame(cluster_id="c1", sender="n1", messages=[to_pb(m, "n1") for m in msgs]))
    assert ours == theirs


def test_advised_election_timeout_round_trips_and_costs_nothing_when_absent() -> None:
    """Field 15 (RTT-aware mode) travels with a heartbeat; 0 (no advice) is not written."""
    advised = Message(MessageType.HEARTBEAT, "n2", "n1", 7, commit=4, seq=9, election_timeout=13)
    plain = Message(MessageType.HEARTBEAT, "n2", "n1", 7, commit=4, seq=9)
    assert decode_frame(encode_frame("c1", "n1", [advised])).messages == [advised]
    assert len(encode_frame("c1", "n1", [advised])) == len(encode_frame("c1", "n1", [plain])) + 2
    assert pb.PeerFrame().parse(encode_frame("c1", "n1", [advised])).messages[0].election_timeout == 13
    # With entries and a snapshot, the field still comes last, as the generated code writes it.
    snap = Snapshot(SnapshotMeta(3, 2, ConfState(voters=frozenset({"n1"}))), b"s")
    full = Message(MessageType.SNAP, "n2", "n1", 7, snapshot=snap, election_timeout=1 << 40)
    theirs = bytes(pb.PeerFrame(cluster_id="c1", sender="n1", messages=[to_pb(full, "n1")]))
    assert encode_frame("c1", "n1", [full]) == theirs
    assert decode_frame(theirs).messages == [full]


def test_election_delay_round_trips_after_the_timeout_and_costs_nothing_when_absent() -> None:
    """Field 16 (RTT-aware succession) travels with a heartbeat, after field 15, as the
    generated code writes it; 0 (no advice) is not written."""
    ranked = Message(MessageType.HEARTBEAT, "n2", "n1", 7, seq=9, election_timeout=13, election_delay=9)
    plain = Message(MessageType.HEARTBEAT, "n2", "n1", 7, seq=9, election_timeout=13)
    ours = encode_frame("c1", "n1", [ranked])
    assert decode_frame(ours).messages == [ranked]
    assert len(ours) == len(encode_frame("c1", "n1", [plain])) + 3
    assert ours == bytes(pb.PeerFrame(cluster_id="c1", sender="n1", messages=[to_pb(ranked, "n1")]))
    assert pb.PeerFrame().parse(ours).messages[0].election_delay == 9


def test_frm_is_elided_when_it_is_the_sender() -> None:
    m = Message(MessageType.HEARTBEAT, "n2", "n1", 1)
    short = encode_frame("c", "n1", [m])
    long = encode_frame("c", "nX", [m])
    assert len(long) == len(short) + 4  # frm spelled out: tag, length, "n1"
    assert decode_frame(long).messages == [m]
    assert pb.PeerFrame().parse(short).messages[0].frm == ""


def test_snapshot_with_everything_round_trips() -> None:
    conf = ConfState(
        voters=frozenset({"n1", "n2", "n3"}),
        learners=frozenset({"n4"}),
        contexts=(("n3", b"10.0.0.3:7000"), ("n1", b""), ("n4", b"\xff" * 3)),
    )
    snap = Snapshot(SnapshotMeta(index=1 << 40, term=codec.MAX_INT, conf=conf), data=b"state" * 1000)
    m = Message(MessageType.SNAP, "n4", "n1", 9, snapshot=snap)
    assert decode_frame(encode_frame("c", "n1", [m])).messages == [m]
    empty = Message(MessageType.SNAP, "n4", "n1", 9, snapshot=Snapshot())
    assert decode_frame(encode_frame("c", "n1", [empty])).messages == [empty]


def test_a_joint_configuration_and_removals_travel_in_a_snapshot() -> None:
    conf = ConfState(
        voters=frozenset({"n1", "n4"}),
        learners=frozenset({"n5"}),
        contexts=(("n2", b"old"), ("n4", b"new")),
        voters_outgoing=frozenset({"n1", "n2"}),
        removed=(("n3", 17), ("n9", 1 << 40)),
    )
    m = Message(MessageType.SNAP, "n4", "n1", 9, snapshot=Snapshot(SnapshotMeta(20, 3, conf), b"s"))
    assert decode_frame(encode_frame("c", "n1", [m])).messages == [m]
    for bad_conf in (
        ConfState(voters=frozenset({"n1"}), learners=frozenset({"n2"}), voters_outgoing=frozenset({"n2"})),
        ConfState(voters_outgoing=frozenset({"n2"})),
    ):
        bad = Message(MessageType.SNAP, "n4", "n1", 9, snapshot=Snapshot(SnapshotMeta(20, 3, bad_conf)))
        with pytest.raises(codec.EncodeError):
            encode_frame("c", "n1", [bad])


def test_empty_frame_is_a_hello() -> None:
    assert decode_frame(encode_frame("cluster-a", "n1", [])) == ("cluster-a", "n1", [])
    assert encode_frames("cluster-a", "n1", []) == [encode_frame("cluster-a", "n1", [])]


@SETTINGS
@given(st.lists(messages("n1"), max_size=12), st.integers(1, 4), st.integers(300, 3000))
def test_encode_frames_splits_in_order(msgs: list[Message], per_frame: int, max_bytes: int) -> None:
    limits = Limits(max_messages=per_frame, max_frame_bytes=max_bytes)
    try:
        out = encode_frames("c", "n1", msgs, limits=limits)
    except codec.EncodeError:
        # Only legitimate when some single message does not fit.
        assert any(len(encode_frame("c", "n1", [m])) > max_bytes for m in msgs)
        return
    decoded = [decode_frame(f, limits=limits) for f in out]
    assert all(len(f) <= max_bytes for f in out)
    assert all(len(d.messages) <= per_frame for d in decoded)
    assert [m for d in decoded for m in d.messages] == msgs


def test_acks_round_trip() -> None:
    assert codec.decode_stream_ack(codec.encode_stream_ack(12, 3456)) == (12, 3456)
    assert codec.decode_stream_ack(b"") == (0, 0)
    assert codec.decode_snapshot_ack(codec.encode_snapshot_ack(1 << 33)) == 1 << 33
    with pytest.raises(ProtocolError):
        codec.decode_stream_ack(b"\x0a\x01x")  # frames as bytes
    with pytest.raises(ProtocolError):
        codec.decode_snapshot_ack(b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01")  # 2**64 - 1
    with pytest.raises(ProtocolError):
        codec.decode_snapshot_ack(b"\x08")
    with pytest.raises(codec.EncodeError):
        codec.encode_stream_ack(-1, 0)


def test_wire_bytes_passes_through_grpclib_codec() -> None:
    proto_codec = grpclib.encoding.proto.ProtoCodec()
    data = encode_frame("c", "n1", [Message(MessageType.HEARTBEAT, "n2", "n1", 1)])
    wrapped = WireBytes(data)
    assert proto_codec.encode(wrapped, WireBytes) == data
    assert proto_codec.decode(data, WireBytes).data == data
    assert "bytes" in repr(wrapped)


def test_method_paths_and_enums_match_the_generated_code() -> None:
    mapping = proto_methods("RaftPeer")
    assert set(mapping) == {codec.STREAM_METHOD, codec.INSTALL_SNAPSHOT_METHOD}
    assert {t.name: t.value for t in MessageType} == {t.name: t.value for t in pb.MessageType if t.value != 0}
    assert isinstance(codec.EncodeError("x"), LocalError | ValueError)
    assert betterproto.serialized_on_wire(
        pb.RaftMessage()
        .parse(bytes(to_pb(Message(MessageType.SNAP, "a", "b", 1, snapshot=Snapshot()), "b")))
        .snapshot
    )


def test_limits_are_validated() -> None:
    from phalanx_aio.errors import ConfigError

    with pytest.raises(ConfigError, match="max_members"):
        Limits(max_members=0)
    with pytest.raises(ConfigError, match="max_frame_bytes"):
        Limits(max_frame_bytes=1.5)  # type: ignore[arg-type]


def test_the_same_entries_encode_the_same_whether_or_not_the_last_batch_is_reused() -> None:
    # A node's batch cache keeps the last batch it encoded and reuses it for the very same
    # objects (a leader sends the same slice to every follower; see
    # tests/node/test_batch_cache.py); encode_entries keeps none, and encodes alike.
    batch = [Entry(3, i, EntryType.NORMAL, b"cmd%d" % i) for i in range(1, 6)]
    first = encode_entries(batch)
    assert encode_entries(list(batch)) == first  # another list, the same objects: reused
    assert decode_entries(first) == tuple(batch)
    copies = [Entry(e.term, e.index, e.type, e.data + b"") for e in batch]
    assert encode_entries(copies) == first
    other = [*batch[:4], Entry(4, 5, EntryType.NORMAL, b"new")]  # the same but the last
    assert decode_entries(encode_entries(other)) == tuple(other)
    assert decode_entries(encode_entries(batch[1:])) == tuple(batch[1:])  # a shorter slice
    payload = bytearray(b"mutable")
    mutable = [Entry(1, 1, EntryType.NORMAL, payload)]  # type: ignore[arg-type]
    encode_entries(mutable)
    payload[:] = b"changed"
    assert decode_entries(encode_entries(mutable))[0].data == b"changed"


def test_a_list_changed_after_it_was_encoded_is_encoded_afresh() -> None:
    batch = [Entry(7, i, EntryType.NORMAL, b"v%d" % i) for i in range(1, 4)]
    encode_entries(batch)
    batch[1] = Entry(7, 2, EntryType.NORMAL, b"replaced")  # the same list, one entry replaced
    assert decode_entries(encode_entries(batch))[1].data == b"replaced"
