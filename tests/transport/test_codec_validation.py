"""Every malformed input is refused with a ProtocolError that says what is wrong, and every
unencodable message with an EncodeError."""

from __future__ import annotations

import struct

import pytest

from phalanx_aio.core.types import ConfState, Entry, EntryType, Message, MessageType, Snapshot, SnapshotMeta
from phalanx_aio.errors import ProtocolError
from phalanx_aio.transport.codec import (
    MAX_INT,
    EncodeError,
    Limits,
    decode_entries,
    decode_frame,
    encode_entries,
    encode_frame,
    encode_frames,
)


def varint(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def vi(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def ld(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def frame(*msgs: bytes, cluster: bytes = b"c1", sender: bytes = b"n1") -> bytes:
    return ld(1, cluster) + ld(2, sender) + b"".join(ld(3, m) for m in msgs)


HB = vi(1, 7) + ld(2, b"n2") + vi(4, 5)  # a heartbeat to n2 at term 5


def blob(*records: tuple[int, int, int, bytes], version: int = 1, count: int | None = None) -> bytes:
    n = len(records) if count is None else count
    table = b"".join(struct.pack("<QQBI", t, i, ty, len(d)) for t, i, ty, d in records)
    return struct.pack("<BI", version, n) + table + b"".join(d for *_, d in records)


def conf(*fields: bytes) -> bytes:
    return ld(14, ld(1, ld(3, b"".join(fields))))  # snapshot.meta.conf


def snap_msg(*conf_fields: bytes) -> bytes:
    return vi(1, 9) + ld(2, b"n2") + conf(*conf_fields)


def test_the_helpers_build_a_valid_frame() -> None:
    got = decode_frame(frame(HB, snap_msg(ld(1, b"n1"), ld(3, ld(1, b"n1") + ld(2, b"addr")))))
    assert got.messages[0] == Message(MessageType.HEARTBEAT, "n2", "n1", 5)
    assert got.messages[1].snapshot == Snapshot(
        SnapshotMeta(conf=ConfState(voters=frozenset({"n1"}), contexts=(("n1", b"addr"),)))
    )


BAD_FRAMES = {
    "frame cluster_id is empty": ld(2, b"n1") + ld(3, HB),
    "frame sender is empty": ld(1, b"c1") + ld(3, HB),
    "frame cluster_id is not valid UTF-8": frame(cluster=b"\xff\xfe"),
    "frame sender is 256 bytes": frame(sender=b"x" * 256),
    "field cluster_id has wire type varint": vi(1, 3) + ld(2, b"n1"),
    "field messages has wire type varint": frame() + vi(3, 1),
    "field number 0": frame() + b"\x00\x00",
    "unsupported wire type group": frame() + b"\x1b",
    "truncated varint": frame() + b"\x08",
    "varint longer than 10 bytes": frame() + b"\x08" + b"\xff" * 10 + b"\x01",
    "varint above 2**64": frame() + b"\x08" + b"\xff" * 9 + b"\x7f",
    "runs past the end": frame() + b"\x1a\x05ab",
    "message type 0 is not a known MessageType": frame(ld(2, b"n2")),
    "message type 15 is not a known MessageType": frame(vi(1, 15) + ld(2, b"n2")),
    "message to is empty": frame(vi(1, 7)),
    "message to is not valid UTF-8": frame(vi(1, 7) + ld(2, b"\xc3")),
    "message frm is empty": frame(HB + ld(3, b"")),
    "above 2**63": frame(HB + vi(6, 1 << 63)),
    "field term has wire type length-delimited": frame(HB + ld(4, b"x")),
    "field context has wire type varint": frame(HB + vi(10, 1)),
    "field election_timeout has wire type length-delimited": frame(HB + ld(15, b"x")),
    "has a term, index or counter above 2**63": frame(HB + vi(15, 1 << 63)),
    "field entries has wire type fixed64": frame(HB + b"\x69" + bytes(8)),
    "message context is 65537 bytes": frame(HB + ld(10, bytes(65537))),
    "message has two snapshots": frame(vi(1, 9) + ld(2, b"n2") + ld(14, b"") + ld(14, b"")),
    "unsupported batch version 2": frame(HB + ld(13, blob((1, 1, 0, b"x"), version=2))),
    "truncated batch header": frame(HB + ld(13, b"\x01\x00")),
    "entry 0 has unknown type 3": frame(HB + ld(13, blob((1, 1, 3, b"")))),
    "entry 1 has term or index above 2**63": frame(HB + ld(13, blob((1, 1, 0, b""), (1 << 63, 2, 0, b"")))),
    "batch of 3 entries is truncated": frame(HB + ld(13, blob((1, 1, 0, b""), count=3))),
    "stray bytes after the last entry": frame(HB + ld(13, blob((1, 1, 0, b"ab")) + b"!")),
    "entry 0 data runs past the end": frame(HB + ld(13, blob((1, 1, 0, b"abc"))[:-1])),
    "conf: a member is listed twice": frame(snap_msg(ld(1, b"a"), ld(1, b"a"))),
    "are both voters and learners": frame(snap_msg(ld(1, b"a"), ld(2, b"a"))),
    "context for 'b', which is not a member": frame(snap_msg(ld(1, b"a"), ld(3, ld(1, b"b")))),
    "two contexts for 'a'": frame(snap_msg(ld(1, b"a"), ld(3, ld(1, b"a")), ld(3, ld(1, b"a")))),
    "member context: node_id is empty": frame(snap_msg(ld(1, b"a"), ld(3, ld(2, b"x")))),
    "conf: member id is empty": frame(snap_msg(ld(1, b""))),
    "field voters has wire type varint": frame(snap_msg(vi(1, 1))),
    "snapshot meta: index or term above 2**63": frame(
        vi(1, 9) + ld(2, b"n2") + ld(14, ld(1, vi(2, 1 << 63)))
    ),
    "field meta has wire type varint": frame(vi(1, 9) + ld(2, b"n2") + ld(14, vi(1, 1))),
    "message: more than 256 fields": frame(HB + vi(4, 5) * 300),
}


@pytest.mark.parametrize("expected", sorted(BAD_FRAMES))
def test_malformed_frames_are_refused_with_a_clear_message(expected: str) -> None:
    with pytest.raises(ProtocolError, match=expected.replace("*", r"\*").replace("(", r"\(")):
        decode_frame(BAD_FRAMES[expected])


def test_limits_bound_the_decoder() -> None:
    many = frame(*[HB] * 5)
    assert len(decode_frame(many).messages) == 5
    with pytest.raises(ProtocolError, match="more than 4 messages"):
        decode_frame(many, limits=Limits(max_messages=4))
    with pytest.raises(ProtocolError, match="over the limit of 10"):
        decode_frame(many, limits=Limits(max_frame_bytes=10))
    with pytest.raises(ProtocolError, match="3 entries, over the limit of 2"):
        decode_frame(frame(HB + ld(13, blob(*[(1, 1, 0, b"")] * 3))), limits=Limits(max_entries=2))
    with pytest.raises(ProtocolError, match="more than 1 members"):
        decode_frame(frame(snap_msg(ld(1, b"a"), ld(2, b"b"))), limits=Limits(max_members=1))
    with pytest.raises(ProtocolError, match="over the limit of 3"):
        decode_frame(
            frame(snap_msg(ld(1, b"a"), ld(3, ld(1, b"a") + ld(2, b"four")))),
            limits=Limits(max_context_bytes=3),
        )


def test_unknown_fields_are_skipped_for_forward_compatibility() -> None:
    extra = vi(99, 5) + ld(100, b"future") + b"\x85\x06" + bytes(4) + b"\x81\x06" + bytes(8)
    got = decode_frame(frame(HB + extra) + extra)
    assert got.messages == [Message(MessageType.HEARTBEAT, "n2", "n1", 5)]


def test_last_scalar_wins_and_nonzero_bools_are_true() -> None:
    got = decode_frame(frame(HB + vi(4, 9) + vi(8, 2) + ld(2, b"n3"))).messages[0]
    assert (got.term, got.reject, got.to) == (9, True, "n3")


def test_decode_entries_refuses_garbage() -> None:
    assert decode_entries(b"") == ()
    assert decode_entries(blob(count=0)) == ()
    for bad in (b"\x01", blob((1, 1, 0, b"x"))[:-1], blob((1, 1, 7, b""))):
        with pytest.raises(ProtocolError):
            decode_entries(bad)


M = Message(MessageType.APP, "n2", "n1", 3)


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (Message(MessageType.APP, "", "n1", 3), "message to is empty"),
        (Message(MessageType.APP, "n2", "", 3), "message frm is empty"),
        (Message(MessageType.APP, "n\udc80", "n1", 3), "cannot be encoded as UTF-8"),
        (Message(MessageType.APP, "n" * 256, "n1", 3), "256 bytes, over the limit of 255"),
        (Message(MessageType.APP, "n2", "n1", -1), "must be an int"),
        (Message(MessageType.APP, "n2", "n1", 1 << 63), "must be an int"),
        (Message(MessageType.APP, "n2", "n1", 3, seq=-5), "seq must be an int"),
        (Message(MessageType.APP, "n2", "n1", 3, election_timeout=-1), "election_timeout must be an int"),
        (Message(MessageType.APP, "n2", "n1", 3, reject_hint=1 << 64), "reject_hint must be an int"),
        (Message(MessageType.APP, "n2", "n1", True), "must be an int"),
        (Message(3, "n2", "n1", 3), "must be a MessageType"),  # type: ignore[arg-type]
        (Message(MessageType.APP, "n2", "n1", 3, context="text"), "context must be bytes"),  # type: ignore[arg-type]
        (Message(MessageType.APP, "n2", "n1", 3, context=bytes(65537)), "over the limit of 65536"),
        (Message(MessageType.APP, "n2", "n1", 3, entries=(Entry(-1, 1),)), "entry 0 cannot be encoded"),
        (Message(MessageType.APP, "n2", "n1", 3, entries=(Entry(1, 1, 5),)), "entry 0 cannot be encoded"),  # type: ignore[arg-type]
        (Message(MessageType.APP, "n2", "n1", 3, entries=(Entry(1, 1, EntryType.NORMAL, "s"),)), "entry 0"),  # type: ignore[arg-type]
        (
            Message(
                MessageType.SNAP,
                "n2",
                "n1",
                3,
                snapshot=Snapshot(
                    SnapshotMeta(conf=ConfState(voters=frozenset({"a"}), learners=frozenset({"a"})))
                ),
            ),
            "both voters and learners",
        ),
        (
            Message(
                MessageType.SNAP,
                "n2",
                "n1",
                3,
                snapshot=Snapshot(
                    SnapshotMeta(conf=ConfState(voters=frozenset({"a"}), contexts=(("b", b""),)))
                ),
            ),
            "not a member",
        ),
        (
            Message(
                MessageType.SNAP,
                "n2",
                "n1",
                3,
                snapshot=Snapshot(
                    SnapshotMeta(conf=ConfState(voters=frozenset({"a"}), contexts=(("a", b""), ("a", b"x"))))
                ),
            ),
            "two contexts",
        ),
        (
            Message(MessageType.SNAP, "n2", "n1", 3, snapshot=Snapshot(SnapshotMeta(index=-1))),
            "snapshot index must be an int",
        ),
    ],
)
def test_unencodable_messages_raise_encode_error(message: Message, match: str) -> None:
    with pytest.raises(EncodeError, match=match):
        encode_frame("c", "n1", [message])


def test_encoder_enforces_the_limits() -> None:
    with pytest.raises(EncodeError, match="cluster_id is empty"):
        encode_frame("", "n1", [M])
    with pytest.raises(EncodeError, match="sender must be a str"):
        encode_frame("c", None, [M])  # type: ignore[arg-type]
    with pytest.raises(EncodeError, match="3 messages in one frame"):
        encode_frame("c", "n1", [M] * 3, limits=Limits(max_messages=2))
    with pytest.raises(EncodeError, match="over the limit of 20"):
        encode_frame("c", "n1", [M] * 3, limits=Limits(max_frame_bytes=20))
    with pytest.raises(EncodeError, match="message 0 needs"):
        encode_frames("c", "n1", [M], limits=Limits(max_frame_bytes=10))
    with pytest.raises(EncodeError, match="3 entries, over the limit of 2"):
        encode_entries([Entry(1, 1)] * 3, limits=Limits(max_entries=2))
    with pytest.raises(EncodeError, match="not a Message"):
        encode_frame("c", "n1", ["hello"])  # type: ignore[list-item]
    with pytest.raises(EncodeError, match="message 1 cannot be encoded: AttributeError"):
        encode_frame("c", "n1", [M, Message(MessageType.APP, "n2", "n1", 3, entries=("junk",))])  # type: ignore[arg-type]
    with pytest.raises(EncodeError, match="entries cannot be encoded"):
        encode_entries(["junk"])  # type: ignore[list-item]
    assert encode_entries([Entry(MAX_INT, MAX_INT, EntryType.CONF, b"x")])
