"""Snapshot transfer in chunks: bounded pieces, strict reassembly, checksum."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phalanx_aio._proto.phalanx import v1 as pb
from phalanx_aio.core.types import ConfState, Message, MessageType, Snapshot, SnapshotMeta
from phalanx_aio.errors import ProtocolError
from phalanx_aio.transport.chunks import SnapshotAssembler, snapshot_chunks
from phalanx_aio.transport.codec import EncodeError, Limits

CONF = ConfState(voters=frozenset({"n1", "n2", "n3"}), contexts=(("n1", b"127.0.0.1:7001"),))


def snap_message(data: bytes) -> Message:
    return Message(MessageType.SNAP, "n3", "n1", 4, snapshot=Snapshot(SnapshotMeta(120, 4, CONF), data))


def assemble(chunks: list[bytes], limits: Limits | None = None) -> Message:
    asm = SnapshotAssembler(limits=limits or Limits())
    results = [asm.feed(c) for c in chunks]
    assert all(r is None for r in results[:-1])
    assert asm.done and results[-1] is not None
    return results[-1]


@settings(derandomize=True, database=None, deadline=None, max_examples=60)
@given(st.binary(max_size=5000), st.integers(1, 2000))
def test_chunks_reassemble_exactly(data: bytes, chunk_bytes: int) -> None:
    m = snap_message(data)
    chunks = list(snapshot_chunks("c1", "n1", m, chunk_bytes=chunk_bytes))
    assert len(chunks) == max(1, -(-len(data) // chunk_bytes))
    assert all(len(c) <= chunk_bytes + 200 for c in chunks[1:])
    assert assemble(chunks) == m


def test_chunks_are_valid_protobuf_and_carry_the_documented_fields() -> None:
    data = bytes(range(256)) * 10
    chunks = [
        pb.SnapshotChunk().parse(c) for c in snapshot_chunks("c1", "n1", snap_message(data), chunk_bytes=1000)
    ]
    assert [c.offset for c in chunks] == [0, 1000, 2000]
    assert {c.total for c in chunks} == {2560}
    assert (chunks[0].cluster_id, chunks[0].sender, chunks[1].cluster_id) == ("c1", "n1", "")
    assert chunks[0].message.snapshot.data == b"" and chunks[0].message.snapshot.meta.index == 120
    assert [c.checksum for c in chunks] == [0, 0, zlib.crc32(data)]
    assert b"".join(c.data for c in chunks) == data


def test_assembler_exposes_progress() -> None:
    chunks = list(snapshot_chunks("c1", "n1", snap_message(b"x" * 10), chunk_bytes=4))
    asm = SnapshotAssembler()
    assert asm.header is None and asm.sender == "" and asm.cluster_id == ""
    assert asm.feed(chunks[0]) is None
    assert (asm.cluster_id, asm.sender, asm.received, asm.total, asm.done) == ("c1", "n1", 4, 10, False)
    assert (
        asm.header is not None and asm.header.snapshot is not None and asm.header.snapshot.meta.index == 120
    )
    asm.feed(chunks[1])
    assert asm.feed(chunks[2]) == snap_message(b"x" * 10)
    with pytest.raises(ProtocolError, match="after the last one"):
        asm.feed(chunks[2])
    with pytest.raises(ProtocolError, match="already failed"):
        asm.feed(chunks[2])


def _chunks(n: int = 10, size: int = 4) -> list[bytes]:
    return list(snapshot_chunks("c1", "n1", snap_message(b"abcdefghij"[:n]), chunk_bytes=size))


@pytest.mark.parametrize(
    ("sequence", "match"),
    [
        (lambda c: [c[1]], "first chunk needs cluster_id, sender and message"),
        (lambda c: [c[0], c[2]], "offset 8, expected 4"),
        (lambda c: [c[0], c[1], c[1]], "offset 4, expected 8"),
        (lambda c: [c[0], c[0]], "ids and message belong in the first chunk only"),
        (lambda c: [c[0], c[1], c[2][:-1] + bytes([c[2][-1] ^ 1])], "checksum"),
        (lambda c: [c[0], c[1].replace(b"\x28\x0a", b"\x28\x0b")], "total changed from 10 to 11"),
        (lambda c: [c[0], b"\x20\x04\x28\x0a"], "empty chunk"),
        (lambda c: [c[0], b"\x20\x04\x28\x0a\x32\x07abcdefg"], "runs past the announced total"),
        (lambda c: [c[0], b"\x20\x04\x28\x0a\x32\x01e\x38\x05"], "checksum before the last chunk"),
        (lambda c: [c[0], b"\x20\x04\x28\x0a\x32"], "truncated varint"),
        (lambda c: [c[0], b"\x20\x04\x28\x0a\x31" + bytes(8)], "field data has wire type fixed64"),
        (lambda c: [c[0], b"\x22\x01x"], "field offset has wire type length-delimited"),
    ],
)
def test_assembler_refuses_broken_transfers(sequence, match: str) -> None:  # type: ignore[no-untyped-def]
    asm = SnapshotAssembler()
    with pytest.raises(ProtocolError, match=match):
        for chunk in sequence(_chunks()):
            asm.feed(chunk)


def test_first_chunk_must_announce_a_snap_message_without_inline_data() -> None:
    frame_like = pb.SnapshotChunk(
        cluster_id="c1", sender="n1", message=pb.RaftMessage(type=pb.MessageType.HEARTBEAT, to="n3")
    )
    with pytest.raises(ProtocolError, match="not a SNAP"):
        SnapshotAssembler().feed(bytes(frame_like))
    inline = pb.SnapshotChunk(
        cluster_id="c1",
        sender="n1",
        message=pb.RaftMessage(type=pb.MessageType.SNAP, to="n3", snapshot=pb.Snapshot(data=b"inline")),
    )
    with pytest.raises(ProtocolError, match="carries data inline"):
        SnapshotAssembler().feed(bytes(inline))


def test_limits_bound_snapshot_transfer() -> None:
    chunks = list(snapshot_chunks("c1", "n1", snap_message(b"x" * 100), chunk_bytes=50))
    with pytest.raises(ProtocolError, match="snapshot of 100 bytes, over 99"):
        SnapshotAssembler(limits=Limits(max_snapshot_bytes=99)).feed(chunks[0])
    with pytest.raises(ProtocolError, match="over the limit of 60"):
        SnapshotAssembler(limits=Limits(max_frame_bytes=60)).feed(chunks[0])
    with pytest.raises(EncodeError, match="over the limit of 99"):
        list(snapshot_chunks("c1", "n1", snap_message(b"x" * 100), limits=Limits(max_snapshot_bytes=99)))
    with pytest.raises(EncodeError, match="chunk is"):
        list(snapshot_chunks("c1", "n1", snap_message(b"x" * 100), limits=Limits(max_frame_bytes=80)))


def test_snapshot_chunks_needs_a_snap_message() -> None:
    with pytest.raises(EncodeError, match="SNAP message with a snapshot"):
        list(snapshot_chunks("c1", "n1", Message(MessageType.SNAP, "n3", "n1", 4)))
    with pytest.raises(EncodeError, match="SNAP message with a snapshot"):
        list(snapshot_chunks("c1", "n1", Message(MessageType.APP, "n3", "n1", 4, snapshot=Snapshot())))
    with pytest.raises(EncodeError, match="chunk_bytes"):
        list(snapshot_chunks("c1", "n1", snap_message(b""), chunk_bytes=0))
