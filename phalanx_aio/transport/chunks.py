"""Snapshot transfer on the wire: a SNAP message as the SnapshotChunks of one InstallSnapshot
call, and their reassembly on the receiving side.

The first chunk carries the ids and the message (its snapshot data left out, encoded by
:mod:`phalanx_aio.transport.codec`); the data follow in pieces; the last chunk carries the
CRC-32 of the whole data. ``docs/wire.md`` describes the ``SnapshotChunk`` message.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import replace
from typing import Final

from phalanx_aio._protowire import (
    LEN,
    VARINT,
    bad,
    cannot,
    decode_id,
    fields,
    put_len,
    tag,
    uvarint,
    wrong_wire,
)
from phalanx_aio.core.types import Message, MessageType
from phalanx_aio.errors import ProtocolError
from phalanx_aio.transport.codec import (
    DEFAULT_LIMITS,
    Limits,
    decode_message,
    encode_message_at,
    frame_head,
)

__all__ = ["SnapshotAssembler", "snapshot_chunks"]

# SnapshotChunk (fields 1 and 2, the ids, are written by frame_head)
_CHUNK_MESSAGE: Final = tag(3, LEN)
_CHUNK_OFFSET: Final = tag(4, VARINT)
_CHUNK_TOTAL: Final = tag(5, VARINT)
_CHUNK_DATA: Final = tag(6, LEN)
_CHUNK_CHECKSUM: Final = tag(7, VARINT)


def snapshot_chunks(
    cluster_id: str,
    sender: str,
    message: Message,
    *,
    chunk_bytes: int = 1 << 20,
    limits: Limits = DEFAULT_LIMITS,
) -> Iterator[bytes]:
    """Encode a SNAP message as the SnapshotChunks of one InstallSnapshot call.

    The first chunk carries the ids and ``message`` with its snapshot data left out; the data
    follow in pieces of at most ``chunk_bytes``; the last chunk carries the CRC-32 of the whole
    data. Only one chunk's worth of output exists at a time. Raises :class:`EncodeError` if the
    message has no snapshot or anything is out of range.
    """
    if type(chunk_bytes) is not int or chunk_bytes < 1:
        cannot(f"chunk_bytes must be a positive int, not {chunk_bytes!r}")
    snap = message.snapshot if isinstance(message, Message) else None
    if snap is None or message.type is not MessageType.SNAP:
        cannot("snapshot_chunks needs a SNAP message with a snapshot")
    data = snap.data
    if not isinstance(data, bytes | bytearray):
        cannot(f"snapshot data must be bytes, not {type(data).__name__}")
    total = len(data)
    if total > limits.max_snapshot_bytes:
        cannot(f"snapshot is {total} bytes, over the limit of {limits.max_snapshot_bytes}")
    body, body_size = encode_message_at(replace(message, snapshot=replace(snap, data=b"")), sender, limits, 0)
    header = b"".join([frame_head(cluster_id, sender, limits), _CHUNK_MESSAGE, uvarint(body_size), *body])
    checksum = zlib.crc32(data)
    offset = 0
    first = True
    while first or offset < total:
        piece = data[offset : offset + chunk_bytes]
        out = bytearray(header if first else b"")
        if offset:
            out += _CHUNK_OFFSET
            out += uvarint(offset)
        if total:
            out += _CHUNK_TOTAL
            out += uvarint(total)
        if piece:
            put_len(out, _CHUNK_DATA, piece)
        offset += len(piece)
        if offset == total and checksum:
            out += _CHUNK_CHECKSUM
            out += uvarint(checksum)
        if len(out) > limits.max_frame_bytes:
            cannot(f"snapshot chunk is {len(out)} bytes, over the limit of {limits.max_frame_bytes}")
        first = False
        yield bytes(out)


class SnapshotAssembler:
    """Reassembles the chunks of one InstallSnapshot call into the SNAP message they carry.

    Feed each received chunk to :meth:`feed`; it returns the complete message once the last
    byte has arrived and the checksum matched, ``None`` before. Any defect (a gap, an overlap,
    a size over ``limits.max_snapshot_bytes``, a wrong checksum, a chunk after the end) raises
    :class:`ProtocolError`; the assembler is then unusable.
    """

    def __init__(self, *, limits: Limits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._header: Message | None = None
        self._cluster_id = ""
        self._sender = ""
        self._total = 0
        self._buf = bytearray()
        self._crc = 0
        self._done = False
        self._failed = False

    @property
    def cluster_id(self) -> str:
        """The cluster named by the first chunk ('' before it)."""
        return self._cluster_id

    @property
    def sender(self) -> str:
        """The sending node named by the first chunk ('' before it)."""
        return self._sender

    @property
    def header(self) -> Message | None:
        """The SNAP message of the first chunk, its snapshot data still empty (``None`` before)."""
        return self._header

    @property
    def received(self) -> int:
        """Snapshot data bytes received so far."""
        return len(self._buf)

    @property
    def total(self) -> int:
        """The snapshot data size announced by the first chunk."""
        return self._total

    @property
    def done(self) -> bool:
        """True once the whole snapshot arrived and checked out."""
        return self._done

    def feed(self, chunk: bytes) -> Message | None:
        """Take one encoded SnapshotChunk; return the whole SNAP message after the last one."""
        if self._failed:
            bad("snapshot transfer already failed")
        if self._done:
            self._failed = True
            bad("snapshot chunk after the last one")
        if not isinstance(chunk, bytes):
            chunk = bytes(chunk)
        try:
            if len(chunk) > self._limits.max_frame_bytes:
                bad(f"snapshot chunk is {len(chunk)} bytes, over the limit of {self._limits.max_frame_bytes}")
            return self._feed(chunk)
        except ProtocolError:
            self._failed = True
            raise
        except Exception as exc:
            self._failed = True
            raise ProtocolError(f"malformed snapshot chunk: {type(exc).__name__}: {exc}") from exc

    def _feed(self, data: bytes) -> Message | None:
        limits = self._limits
        first = self._header is None
        cluster_id = sender = ""
        msg_span: tuple[int, int] | None = None
        offset = total = checksum = 0
        piece = b""
        for number, wire, a, b in fields(data, 0, len(data), "snapshot chunk"):
            if number in (1, 2, 3, 6):
                if wire != LEN:
                    wrong_wire(
                        "snapshot chunk",
                        {1: "cluster_id", 2: "sender", 3: "message", 6: "data"}[number],
                        wire,
                    )
                if not first:
                    if number != 6:
                        bad("snapshot chunk: ids and message belong in the first chunk only")
                elif number == 1:
                    cluster_id = decode_id(data, a, b, limits.max_id_bytes, "snapshot chunk cluster_id")
                elif number == 2:
                    sender = decode_id(data, a, b, limits.max_id_bytes, "snapshot chunk sender")
                elif number == 3:
                    msg_span = (a, b)
                if number == 6:
                    piece = data[a:b]
            elif number in (4, 5, 7):
                if wire != VARINT:
                    wrong_wire("snapshot chunk", {4: "offset", 5: "total", 7: "checksum"}[number], wire)
                if number == 4:
                    offset = a
                elif number == 5:
                    total = a
                else:
                    checksum = a
        if first:
            if not cluster_id or not sender or msg_span is None:
                bad("snapshot chunk: the first chunk needs cluster_id, sender and message")
            header = decode_message(data, msg_span[0], msg_span[1], sender, limits)
            if header.type is not MessageType.SNAP or header.snapshot is None:
                bad("snapshot chunk: the first chunk's message is not a SNAP with a snapshot")
            if header.snapshot.data:
                bad("snapshot chunk: the first chunk's snapshot carries data inline")
            if total > limits.max_snapshot_bytes:
                bad(f"snapshot chunk: snapshot of {total} bytes, over {limits.max_snapshot_bytes}")
            self._header, self._cluster_id, self._sender, self._total = header, cluster_id, sender, total
        elif total != self._total:
            bad(f"snapshot chunk: total changed from {self._total} to {total}")
        if offset != len(self._buf):
            bad(f"snapshot chunk: offset {offset}, expected {len(self._buf)}")
        if offset + len(piece) > self._total:
            bad(f"snapshot chunk: data runs past the announced total of {self._total} bytes")
        if not piece and not first:
            bad("snapshot chunk: empty chunk")
        self._buf += piece
        self._crc = zlib.crc32(piece, self._crc)
        if len(self._buf) < self._total:
            if checksum:
                bad("snapshot chunk: checksum before the last chunk")
            return None
        if checksum != self._crc:
            bad(f"snapshot chunk: checksum {checksum:#010x} does not match the data ({self._crc:#010x})")
        self._done = True
        done = self._header
        assert done is not None and done.snapshot is not None
        data_bytes = bytes(self._buf)
        self._buf = bytearray()
        return replace(done, snapshot=replace(done.snapshot, data=data_bytes))
