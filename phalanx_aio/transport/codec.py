"""The peer wire codec: core messages to protobuf frames and back.

This module knows the wire format of the ``PeerFrame`` and ``RaftMessage`` of
``protos/phalanx/v1/raft.proto`` and the acknowledgements of both peer calls; the snapshot
transfer's chunks are in :mod:`phalanx_aio.transport.chunks`, the shared protobuf primitives in
:mod:`phalanx_aio._protowire`. The rest of the library works with the core's dataclasses.
``docs/wire.md`` describes the format and why it is shaped so.

The hot path (``PeerFrame`` and ``RaftMessage``) is written and read here by hand, in standard
protobuf encoding: pure-Python betterproto is an order of magnitude slower per message (see
``docs/performance.md``). Log entries travel packed in one ``bytes`` field per message (see
:func:`encode_entries`). The tests check both directions against the generated betterproto
classes, so any protobuf implementation can read the frames.

Decoding never trusts its input: every field is checked (wire types, enum ranges, integers below
2**63, non-empty UTF-8 ids, the sizes in :class:`Limits`, configuration invariants) and any
defect raises :class:`~phalanx_aio.errors.ProtocolError`; no other exception escapes a decoder.
Encoding checks the same rules and raises :class:`EncodeError`, so a frame this node sends is
one its peers accept (given the same limits).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Final, NamedTuple, TypeVar

from phalanx_aio._entry_batch import MAX_INT, BatchCache, EncodeError, decode_entries_at, entry_parts
from phalanx_aio._proto.phalanx import v1 as _pb
from phalanx_aio._protowire import (
    LEN,
    MAX_FIELDS,
    SMALL_VARINTS,
    VARINT,
    bad,
    cannot,
    check_bytes,
    check_int,
    decode_id,
    encode_id,
    fields,
    tag,
    uvarint,
    wrong_wire,
)
from phalanx_aio.core.types import (
    Entry,
    Message,
    MessageType,
    Snapshot,
)
from phalanx_aio.errors import ProtocolError
from phalanx_aio.transport._limits import DEFAULT_LIMITS, Limits
from phalanx_aio.transport._snapshot_wire import decode_snapshot, encode_snapshot

__all__ = [
    "DEFAULT_LIMITS",
    "INSTALL_SNAPSHOT_METHOD",
    "MAX_INT",
    "STREAM_METHOD",
    "EncodeError",
    "Frame",
    "Limits",
    "decode_entries",
    "decode_frame",
    "decode_snapshot_ack",
    "decode_stream_ack",
    "encode_entries",
    "encode_frame",
    "encode_frames",
    "encode_snapshot_ack",
    "encode_stream_ack",
]

STREAM_METHOD = "/phalanx.v1.RaftPeer/Stream"
"""The gRPC path of the long-lived peer stream (client streaming: PeerFrame in, StreamAck out)."""

INSTALL_SNAPSHOT_METHOD = "/phalanx.v1.RaftPeer/InstallSnapshot"
"""The gRPC path of snapshot transfer (client streaming: SnapshotChunk in, SnapshotAck out)."""

_MESSAGE_TYPES: dict[int, MessageType] = {t.value: t for t in MessageType}
_TRUE: Final = b"\x01"  # a bool field's value

# PeerFrame
_FRAME_CLUSTER_ID: Final = tag(1, LEN)
_FRAME_SENDER: Final = tag(2, LEN)
_FRAME_MESSAGE: Final = tag(3, LEN)
# RaftMessage
_MSG_TYPE: Final = tag(1, VARINT)
_MSG_TO: Final = tag(2, LEN)
_MSG_FRM: Final = tag(3, LEN)
_MSG_TERM: Final = tag(4, VARINT)
_MSG_LOG_TERM: Final = tag(5, VARINT)
_MSG_INDEX: Final = tag(6, VARINT)
_MSG_COMMIT: Final = tag(7, VARINT)
_MSG_REJECT: Final = tag(8, VARINT)
_MSG_REJECT_HINT: Final = tag(9, VARINT)
_MSG_CONTEXT: Final = tag(10, LEN)
_MSG_SEQ: Final = tag(11, VARINT)
_MSG_TRANSFER: Final = tag(12, VARINT)
_MSG_ENTRIES: Final = tag(13, LEN)
_MSG_SNAPSHOT: Final = tag(14, LEN)
_MSG_ELECTION_TIMEOUT: Final = tag(15, VARINT)
_MSG_ELECTION_DELAY: Final = tag(16, VARINT)

# RaftMessage: field number -> wire type, for the fields this version knows.
_MSG_VARINT_FIELDS = (
    False, True, False, False, True, True, True, True, True, True, False, True, True, False, False, True,
    True,
)  # fmt: skip
_MSG_INTS = len(_MSG_VARINT_FIELDS)
_MSG_LEN_FIELDS = frozenset((2, 3, 10, 13, 14))
_MSG_FIELD_NAMES = {
    1: "type", 2: "to", 3: "frm", 4: "term", 5: "log_term", 6: "index", 7: "commit", 8: "reject",
    9: "reject_hint", 10: "context", 11: "seq", 12: "transfer", 13: "entries", 14: "snapshot",
    15: "election_timeout", 16: "election_delay",
}  # fmt: skip


class Frame(NamedTuple):
    """A decoded peer frame: who sent it, for which cluster, and the core messages in order."""

    cluster_id: str
    sender: str
    messages: list[Message]


# ---------------------------------------------------------------------------------------------
# Entry batches


def encode_entries(entries: Sequence[Entry], *, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """Pack entries into one blob (``b""`` for none).

    Layout, little-endian, no padding: ``u8 version (1) | u32 count | count x (u64 term,
    u64 index, u8 type, u32 data length) | the data of each entry, in order``.
    Raises :class:`EncodeError` on a value out of range or more than ``limits.max_entries``.
    """
    try:
        return b"".join(_entry_parts(entries, limits)[0])
    except EncodeError:
        raise
    except (TypeError, ValueError, AttributeError, OverflowError, struct.error) as exc:
        raise EncodeError(f"entries cannot be encoded: {type(exc).__name__}: {exc}") from exc


def _entry_parts(
    entries: Sequence[Entry], limits: Limits, cache: BatchCache | None = None
) -> tuple[list[bytes], int]:
    """The pieces of the entry blob and their total length (joined once, by the caller)."""
    return entry_parts(entries, limits.max_entries, cache)


def decode_entries(data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> tuple[Entry, ...]:
    """Unpack a blob made by :func:`encode_entries`; raises :class:`ProtocolError` if malformed."""
    if not isinstance(data, bytes):
        data = bytes(data)
    try:
        return decode_entries_at(data, 0, len(data), limits.max_entries)
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"malformed entry batch: {type(exc).__name__}: {exc}") from exc


def _decode_entries(data: bytes, pos: int, end: int, limits: Limits) -> tuple[Entry, ...]:
    return decode_entries_at(data, pos, end, limits.max_entries)


# ---------------------------------------------------------------------------------------------
# Messages and frames (hot path)


def _encode_message(
    m: Message, sender: str, limits: Limits, cache: BatchCache | None = None
) -> tuple[list[bytes], int]:
    """The RaftMessage encoding of ``m`` as pieces and their total length.

    ``frm`` is left out when it equals ``sender``. The pieces are joined once, by the frame, so
    entry data are copied only once on the way out.
    """
    if not isinstance(m, Message):
        cannot(f"not a Message: {type(m).__name__}")
    mtype = m.type
    if not isinstance(mtype, MessageType):
        cannot(f"message type must be a MessageType, not {mtype!r}")
    out = bytearray(_MSG_TYPE)
    out += SMALL_VARINTS[mtype.value]
    to = encode_id(m.to, limits.max_id_bytes, "message to")
    out += _MSG_TO
    out += uvarint(len(to))
    out += to
    if m.frm != sender:
        frm = encode_id(m.frm, limits.max_id_bytes, "message frm")
        out += _MSG_FRM
        out += uvarint(len(frm))
        out += frm
    for key, value, what in (
        (_MSG_TERM, m.term, "term"),
        (_MSG_LOG_TERM, m.log_term, "log_term"),
        (_MSG_INDEX, m.index, "index"),
        (_MSG_COMMIT, m.commit, "commit"),
    ):
        if value:
            if type(value) is not int or not 0 < value <= MAX_INT:
                cannot(f"{what} must be an int in [0, 2**63), not {value!r}")
            out += key
            out += uvarint(value)
    if m.reject:
        out += _MSG_REJECT
        out += _TRUE
    if m.reject_hint:
        out += _MSG_REJECT_HINT
        out += uvarint(check_int(m.reject_hint, "reject_hint"))
    if m.context:
        ctx = check_bytes(m.context, limits.max_context_bytes, "message context")
        out += _MSG_CONTEXT
        out += uvarint(len(ctx))
        out += ctx
    if m.seq:
        out += _MSG_SEQ
        out += uvarint(check_int(m.seq, "seq"))
    if m.transfer:
        out += _MSG_TRANSFER
        out += _TRUE
    parts: list[bytes] = [bytes(out)]
    size = len(out)
    if m.entries:
        blob, blob_size = _entry_parts(m.entries, limits, cache)
        key = _MSG_ENTRIES + uvarint(blob_size)
        parts.append(key)
        parts.extend(blob)
        size += len(key) + blob_size
    if m.snapshot is not None:
        snap = encode_snapshot(m.snapshot, limits)
        key = _MSG_SNAPSHOT + uvarint(len(snap))
        parts.append(key)
        parts.append(snap)
        size += len(key) + len(snap)
    if m.election_timeout:  # after 13 and 14: field order as the generated code writes it
        tail = _MSG_ELECTION_TIMEOUT + uvarint(check_int(m.election_timeout, "election_timeout"))
        parts.append(tail)
        size += len(tail)
    if m.election_delay:
        tail = _MSG_ELECTION_DELAY + uvarint(check_int(m.election_delay, "election_delay"))
        parts.append(tail)
        size += len(tail)
    return parts, size


def encode_message_at(
    m: Message, sender: str, limits: Limits, i: int, cache: BatchCache | None = None
) -> tuple[list[bytes], int]:
    """:func:`_encode_message`, with any failure reported as an :class:`EncodeError` naming ``i``."""
    try:
        return _encode_message(m, sender, limits, cache)
    except EncodeError as exc:
        raise EncodeError(f"message {i}: {exc}") from exc
    except (TypeError, ValueError, AttributeError, OverflowError, struct.error) as exc:
        raise EncodeError(f"message {i} cannot be encoded: {type(exc).__name__}: {exc}") from exc


def decode_message(
    data: bytes, pos: int, end: int, sender: str, limits: Limits, cache: BatchCache | None = None
) -> Message:
    """Decode the RaftMessage in ``data[pos:end]``; an empty ``frm`` becomes ``sender``.

    With ``cache`` (the receiving node's), the entries of an append are remembered with their
    blob: a follower then stores the blob it received instead of encoding the same entries
    again. (Not those of a forwarded proposal: a leader's cache holds what it just sent.)"""
    ints = [0] * _MSG_INTS  # varint fields by number: 1 type, 4-7, 8 reject, 9, 11, 12 transfer, 15, 16
    to = frm = ""
    context = b""
    entries: tuple[Entry, ...] = ()
    blob = (0, 0)
    snapshot: Snapshot | None = None
    varint_fields = _MSG_VARINT_FIELDS
    for number, wire, a, b in fields(data, pos, end, "message"):
        if wire == VARINT:
            if number < _MSG_INTS and varint_fields[number]:
                ints[number] = a
                continue
            if number in _MSG_LEN_FIELDS:
                wrong_wire("message", _MSG_FIELD_NAMES[number], wire)
        elif wire == LEN:
            if number == 2:
                to = decode_id(data, a, b, limits.max_id_bytes, "message to")
            elif number == 3:
                frm = decode_id(data, a, b, limits.max_id_bytes, "message frm")
            elif number == 10:
                if b - a > limits.max_context_bytes:
                    bad(f"message context is {b - a} bytes, over the limit of {limits.max_context_bytes}")
                context = data[a:b]
            elif number == 13:
                entries = _decode_entries(data, a, b, limits)
                blob = (a, b)
            elif number == 14:
                if snapshot is not None:
                    bad("message has two snapshots")
                snapshot = decode_snapshot(data, a, b, limits)
            elif number < _MSG_INTS and varint_fields[number]:
                wrong_wire("message", _MSG_FIELD_NAMES[number], wire)
        elif number in _MSG_FIELD_NAMES:
            wrong_wire("message", _MSG_FIELD_NAMES[number], wire)
    mtype = _MESSAGE_TYPES.get(ints[1])
    if mtype is None:
        bad(f"message type {ints[1]} is not a known MessageType")
    if not to:
        bad("message to is empty")
    _, _, _, _, term, log_term, index, commit, reject, reject_hint, _, seq, transfer, _, _, timeout, delay = (
        ints
    )
    if max(term, log_term, index, commit, reject_hint, seq, timeout, delay) > MAX_INT:
        bad("message has a term, index or counter above 2**63")
    if cache is not None and entries and mtype is MessageType.APP:
        # The layout is canonical (decoding checks every length to the last byte), so the
        # bytes received are exactly what encoding the entries would give.
        cache.last = (entries, [data[blob[0] : blob[1]]], blob[1] - blob[0])
    return Message(
        mtype,
        to,
        frm or sender,
        term,
        log_term,
        index,
        entries,
        commit,
        reject != 0,
        reject_hint,
        snapshot,
        context,
        seq,
        transfer != 0,
        timeout,
        delay,
    )


def frame_head(cluster_id: str, sender: str, limits: Limits) -> bytes:
    """The ids that open a PeerFrame (and the first chunk of a snapshot transfer)."""
    cid = encode_id(cluster_id, limits.max_id_bytes, "cluster_id")
    snd = encode_id(sender, limits.max_id_bytes, "sender")
    return b"".join((_FRAME_CLUSTER_ID, uvarint(len(cid)), cid, _FRAME_SENDER, uvarint(len(snd)), snd))


def encode_frames(
    cluster_id: str,
    sender: str,
    messages: Iterable[Message],
    *,
    limits: Limits = DEFAULT_LIMITS,
    cache: BatchCache | None = None,
) -> list[bytes]:
    """Encode ``messages`` into as few PeerFrames as ``limits`` allow, keeping their order.

    With no messages, returns one frame that carries only the ids (a hello or keepalive).
    Raises :class:`EncodeError` if a message cannot be encoded or alone exceeds
    ``limits.max_frame_bytes``. ``cache``, the sending node's batch cache, lets a batch of
    entries sent to several followers (and then stored) be encoded once.
    """
    head = frame_head(cluster_id, sender, limits)
    frames: list[bytes] = []
    parts: list[bytes] = [head]
    size = len(head)
    count = 0
    for i, m in enumerate(messages):
        body, body_size = encode_message_at(m, sender, limits, i, cache)
        key = _FRAME_MESSAGE + uvarint(body_size)
        piece = len(key) + body_size
        if len(head) + piece > limits.max_frame_bytes:
            cannot(f"message {i} needs {len(head) + piece} bytes, over the limit of {limits.max_frame_bytes}")
        if count == limits.max_messages or size + piece > limits.max_frame_bytes:
            frames.append(b"".join(parts))
            parts, size, count = [head], len(head), 0
        parts.append(key)
        parts.extend(body)
        size += piece
        count += 1
    if count or not frames:
        frames.append(b"".join(parts))
    return frames


def encode_frame(
    cluster_id: str, sender: str, messages: Sequence[Message], *, limits: Limits = DEFAULT_LIMITS
) -> bytes:
    """Encode one PeerFrame from ``sender`` in ``cluster_id`` carrying ``messages`` in order.

    Raises :class:`EncodeError` if a message cannot be encoded or the frame would exceed
    ``limits`` (use :func:`encode_frames` to split a large batch).
    """
    if len(messages) > limits.max_messages:
        cannot(f"{len(messages)} messages in one frame, over the limit of {limits.max_messages}")
    head = frame_head(cluster_id, sender, limits)
    parts: list[bytes] = [head]
    size = len(head)
    for i, m in enumerate(messages):
        body, body_size = encode_message_at(m, sender, limits, i)
        key = _FRAME_MESSAGE + uvarint(body_size)
        parts.append(key)
        parts.extend(body)
        size += len(key) + body_size
    if size > limits.max_frame_bytes:
        cannot(f"frame is {size} bytes, over the limit of {limits.max_frame_bytes}")
    return b"".join(parts)


def decode_frame(data: bytes, *, limits: Limits = DEFAULT_LIMITS, cache: BatchCache | None = None) -> Frame:
    """Decode a PeerFrame; raises :class:`ProtocolError` (and nothing else) if it is malformed.

    Checking ``cluster_id`` against the local one, and ``sender`` against the stream's peer, is
    the caller's business. ``cache``: the receiving node's batch cache (see
    :func:`decode_message`).
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    if len(data) > limits.max_frame_bytes:
        bad(f"frame is {len(data)} bytes, over the limit of {limits.max_frame_bytes}")
    try:
        return _decode_frame(data, limits, cache)
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"malformed frame: {type(exc).__name__}: {exc}") from exc


def _decode_frame(data: bytes, limits: Limits, cache: BatchCache | None = None) -> Frame:
    cluster_id = sender = ""
    spans: list[tuple[int, int]] = []
    for number, wire, a, b in fields(data, 0, len(data), "frame", limits.max_messages + MAX_FIELDS):
        if number in (1, 2, 3) and wire != LEN:
            wrong_wire("frame", ("cluster_id", "sender", "messages")[number - 1], wire)
        if number == 1:
            cluster_id = decode_id(data, a, b, limits.max_id_bytes, "frame cluster_id")
        elif number == 2:
            sender = decode_id(data, a, b, limits.max_id_bytes, "frame sender")
        elif number == 3:
            if len(spans) >= limits.max_messages:
                bad(f"frame has more than {limits.max_messages} messages")
            spans.append((a, b))
    if not cluster_id:
        bad("frame cluster_id is empty")
    if not sender:
        bad("frame sender is empty")
    messages: list[Message] = []
    for i, (a, b) in enumerate(spans):
        try:
            messages.append(decode_message(data, a, b, sender, limits, cache))
        except ProtocolError as exc:
            raise ProtocolError(f"frame from {sender!r}: message {i}: {exc}") from exc
    return Frame(cluster_id, sender, messages)


# ---------------------------------------------------------------------------------------------
# Acknowledgements (tiny and rare: the generated classes are fast enough)


def encode_stream_ack(frames: int, messages: int) -> bytes:
    """The StreamAck a receiver sends when a peer closes its stream."""
    ack = _pb.StreamAck(frames=check_int(frames, "frames"), messages=check_int(messages, "messages"))
    return bytes(ack)


def decode_stream_ack(data: bytes) -> tuple[int, int]:
    """The ``(frames, messages)`` counts of a StreamAck; :class:`ProtocolError` if malformed."""
    ack = _parse_ack(_pb.StreamAck, data)
    return _ack_int(ack.frames, "frames"), _ack_int(ack.messages, "messages")


def encode_snapshot_ack(received: int) -> bytes:
    """The SnapshotAck a receiver sends once a snapshot arrived whole."""
    return bytes(_pb.SnapshotAck(received=check_int(received, "received")))


def decode_snapshot_ack(data: bytes) -> int:
    """The byte count of a SnapshotAck; :class:`ProtocolError` if malformed."""
    return _ack_int(_parse_ack(_pb.SnapshotAck, data).received, "received")


_Ack = TypeVar("_Ack", _pb.StreamAck, _pb.SnapshotAck)


def _parse_ack(cls: type[_Ack], data: bytes) -> _Ack:
    if len(data) > 1024:
        bad(f"{cls.__name__} is {len(data)} bytes, too large")
    try:
        return cls().parse(bytes(data))
    except Exception as exc:
        raise ProtocolError(f"malformed {cls.__name__}: {type(exc).__name__}: {exc}") from exc


def _ack_int(value: object, what: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_INT:
        bad(f"ack field {what} is not an int in [0, 2**63): {value!r:.50}")
    return value
