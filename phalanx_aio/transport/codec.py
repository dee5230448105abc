"""The peer wire codec: core messages to protobuf frames and back.

This is the only module that knows the wire format of ``protos/phalanx/v1/raft.proto`` (and the
only one allowed to import the generated code in ``_proto``); the rest of the library works with
the core's dataclasses. ``docs/wire.md`` describes the format and why it is shaped so.

The hot path (``PeerFrame`` and ``RaftMessage``, and the snapshot chunks that embed one) is
written and read here by hand, in standard protobuf encoding: pure-Python betterproto costs a few
hundred microseconds per message, this code a few tens. Log entries travel packed in one
``bytes`` field per message (see :func:`encode_entries`). The tests check both directions
against the generated betterproto classes, so any protobuf implementation can read the frames.

It also carries the client-facing service of ``kv.proto``: :func:`encode_kv_message` and
:func:`decode_kv_message` convert the dataclasses of :mod:`phalanx_aio.kv.messages` through the
generated classes (those calls are few and small), and the batches of its ``Stream`` call
(:func:`encode_kv_stream_request` and friends), which carry every operation of a busy client
and are therefore written and read by hand, like the peer frames.

Decoding never trusts its input: every field is checked (wire types, enum ranges, integers below
2**63, non-empty UTF-8 ids, the sizes in :class:`Limits`, configuration invariants) and any
defect raises :class:`~phalanx_aio.errors.ProtocolError`; no other exception escapes a decoder.
Encoding checks the same rules and raises :class:`EncodeError`, so a frame this node sends is
one its peers accept (given the same limits).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, NoReturn, TypeVar

from phalanx_aio._entry_batch import MAX_INT, EncodeError, decode_entries_at, entry_parts
from phalanx_aio.core.types import (
    ConfState,
    Entry,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)
from phalanx_aio.errors import ConfigError, LocalError, ProtocolError
from phalanx_aio.kv.messages import (
    CompareAndSetRequest,
    CompareAndSetResponse,
    DeleteRequest,
    DeleteResponse,
    GetRequest,
    GetResponse,
    KVRequest,
    KVResponse,
    MemberAddRequest,
    MemberChangeResponse,
    MemberListRequest,
    MemberListResponse,
    MemberPromoteRequest,
    MemberRemoveRequest,
    PutRequest,
    PutResponse,
    ReadConsistency,
    StatusRequest,
    StatusResponse,
    TransferLeaderRequest,
    TransferLeaderResponse,
)
from phalanx_aio.kv.messages import ErrorCode as KVErrorCode
from phalanx_aio.kv.messages import Member as KVMember
from phalanx_aio.kv.messages import RequestHeader as KVRequestHeader
from phalanx_aio.kv.messages import ResponseHeader as KVResponseHeader
from phalanx_aio.transport._proto.phalanx import v1 as _pb

__all__ = [
    "DEFAULT_LIMITS",
    "INSTALL_SNAPSHOT_METHOD",
    "KV_STREAM_MAX_ITEMS",
    "KV_STREAM_METHOD",
    "MAX_INT",
    "STREAM_METHOD",
    "EncodeError",
    "Frame",
    "Limits",
    "SnapshotAssembler",
    "WireBytes",
    "decode_entries",
    "decode_frame",
    "decode_health_request",
    "decode_kv_message",
    "decode_kv_stream_requests",
    "decode_kv_stream_responses",
    "decode_snapshot_ack",
    "decode_stream_ack",
    "encode_entries",
    "encode_frame",
    "encode_frames",
    "encode_health_response",
    "encode_kv_message",
    "encode_kv_stream_request",
    "encode_kv_stream_response",
    "encode_snapshot_ack",
    "encode_stream_ack",
    "snapshot_chunks",
]

STREAM_METHOD = "/phalanx.v1.RaftPeer/Stream"
"""The gRPC path of the long-lived peer stream (client streaming: PeerFrame in, StreamAck out)."""

INSTALL_SNAPSHOT_METHOD = "/phalanx.v1.RaftPeer/InstallSnapshot"
"""The gRPC path of snapshot transfer (client streaming: SnapshotChunk in, SnapshotAck out)."""

_MESSAGE_TYPES: dict[int, MessageType] = {t.value: t for t in MessageType}
_MAX_FIELDS = 256  # fields in one message, beyond the repeated fields that Limits bound
_SMALL_VARINTS = tuple(bytes((i,)) for i in range(128))

# Protobuf wire types.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_WIRE_NAMES = {0: "varint", 1: "fixed64", 2: "length-delimited", 3: "group", 4: "group end", 5: "fixed32"}

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


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds that both the encoder and the decoder enforce; anything larger is refused.

    The defaults leave room above the core's own defaults (``Config.max_msg_bytes`` 1 MiB,
    ``max_msg_entries`` 1024) while keeping one frame's memory bounded.
    """

    max_frame_bytes: int = 64 << 20
    """One encoded frame or snapshot chunk."""
    max_messages: int = 16_384
    """Core messages in one frame."""
    max_entries: int = 65_536
    """Entries in one message."""
    max_id_bytes: int = 255
    """A node id or cluster id, in UTF-8 bytes."""
    max_context_bytes: int = 64 << 10
    """A message's ``context`` and each member's context in a configuration."""
    max_members: int = 1024
    """Voters plus learners in a configuration."""
    max_snapshot_bytes: int = 1 << 30
    """The data of one snapshot received in chunks (held in memory until complete)."""

    def __post_init__(self) -> None:
        for name in (
            "max_frame_bytes",
            "max_messages",
            "max_entries",
            "max_id_bytes",
            "max_context_bytes",
            "max_members",
            "max_snapshot_bytes",
        ):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ConfigError(f"invalid Limits: {name} must be a positive int, not {value!r}")


DEFAULT_LIMITS = Limits()
"""The limits used when none are given."""


class Frame(NamedTuple):
    """A decoded peer frame: who sent it, for which cluster, and the core messages in order."""

    cluster_id: str
    sender: str
    messages: list[Message]


class WireBytes:
    """An already encoded protobuf message, for grpclib's protobuf codec.

    grpclib serializes with ``SerializeToString()`` and parses with ``FromString()``; declaring a
    method's request and reply types as ``WireBytes`` lets the transport move the bytes this
    module produces and consumes without ever touching the generated classes.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def SerializeToString(self) -> bytes:
        """The bytes, unchanged."""
        return self.data

    @classmethod
    def FromString(cls, data: bytes) -> WireBytes:
        """Wrap received bytes without parsing them."""
        return cls(data)

    def __repr__(self) -> str:
        return f"WireBytes({len(self.data)} bytes)"


# ---------------------------------------------------------------------------------------------
# Errors


def _bad(what: str) -> NoReturn:
    raise ProtocolError(what)


def _cannot(what: str) -> NoReturn:
    raise EncodeError(what)


# ---------------------------------------------------------------------------------------------
# Protobuf primitives


def _uvarint(value: int) -> bytes:
    """The base-128 varint of a non-negative int (callers check the range)."""
    if value < 0x80:
        return _SMALL_VARINTS[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """Read a varint at ``pos`` that must end by ``end``; return it and the position after it."""
    if pos >= end:
        _bad("truncated varint")
    byte = data[pos]
    pos += 1
    if byte < 0x80:
        return byte, pos
    result = byte & 0x7F
    shift = 7
    while True:
        if pos >= end:
            _bad("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
        if shift >= 70:
            _bad("varint longer than 10 bytes")
    if result >> 64:
        _bad("varint above 2**64")
    return result, pos


def _fields(
    data: bytes, pos: int, end: int, what: str, max_fields: int = _MAX_FIELDS
) -> Iterator[tuple[int, int, int, int]]:
    """Walk the fields of a message in ``data[pos:end]``.

    Yields ``(number, wire_type, a, b)``: for a varint ``a`` is its value; for a length-delimited
    field ``data[a:b]`` is its payload; fixed-width fields (which this schema never uses) are
    yielded with their span for the caller to reject or skip. Groups are refused, and so is a
    message of more than ``max_fields`` fields (which bounds the work any input can cause).
    """
    count = 0
    while pos < end:
        count += 1
        if count > max_fields:
            _bad(f"{what}: more than {max_fields} fields")
        key, pos = _read_varint(data, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            _bad(f"{what}: field number 0")
        if wire == _VARINT:
            value, pos = _read_varint(data, pos, end)
            yield number, wire, value, 0
            continue
        if wire == _LEN:
            length, pos = _read_varint(data, pos, end)
            stop = pos + length
        elif wire == _I64:
            stop = pos + 8
        elif wire == _I32:
            stop = pos + 4
        else:
            _bad(f"{what}: field {number} has unsupported wire type {_WIRE_NAMES.get(wire, wire)}")
        if stop > end:
            _bad(f"{what}: field {number} runs past the end of its message")
        yield number, wire, pos, stop
        pos = stop


def _wrong_wire(what: str, field: str, wire: int) -> NoReturn:
    _bad(f"{what}: field {field} has wire type {_WIRE_NAMES.get(wire, wire)}")


def _decode_id(data: bytes, a: int, b: int, limits: Limits, what: str) -> str:
    if a == b:
        _bad(f"{what} is empty")
    if b - a > limits.max_id_bytes:
        _bad(f"{what} is {b - a} bytes, over the limit of {limits.max_id_bytes}")
    try:
        return data[a:b].decode("utf-8")
    except UnicodeDecodeError:
        _bad(f"{what} is not valid UTF-8")


def _encode_id(value: object, limits: Limits, what: str) -> bytes:
    if type(value) is not str:
        _cannot(f"{what} must be a str, not {type(value).__name__}")
    if not value:
        _cannot(f"{what} is empty")
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        _cannot(f"{what} {value!r} cannot be encoded as UTF-8")
    if len(raw) > limits.max_id_bytes:
        _cannot(f"{what} is {len(raw)} bytes, over the limit of {limits.max_id_bytes}")
    return raw


def _check_int(value: object, what: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_INT:
        _cannot(f"{what} must be an int in [0, 2**63), not {value!r}")
    return value


def _check_bytes(value: object, limit: int, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray):
        _cannot(f"{what} must be bytes, not {type(value).__name__}")
    if len(value) > limit:
        _cannot(f"{what} is {len(value)} bytes, over the limit of {limit}")
    return bytes(value)


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


def _entry_parts(entries: Sequence[Entry], limits: Limits) -> tuple[list[bytes], int]:
    """The pieces of the entry blob and their total length (joined once, by the caller)."""
    return entry_parts(entries, limits.max_entries)


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
# Snapshots and configurations (cold path: only SNAP messages carry them)


def _encode_conf(conf: ConfState, limits: Limits) -> bytes:
    if not isinstance(conf, ConfState):
        _cannot(f"snapshot conf must be a ConfState, not {type(conf).__name__}")
    voters, learners = conf.voters, conf.learners
    if len(voters) + len(learners) > limits.max_members:
        _cannot(f"configuration has {len(voters) + len(learners)} members, over {limits.max_members}")
    if voters & learners:
        _cannot(f"configuration lists {sorted(voters & learners)!r} as both voters and learners")
    out = bytearray()
    for tag, ids, what in ((b"\x0a", voters, "voter id"), (b"\x12", learners, "learner id")):
        for raw in sorted(_encode_id(nid, limits, what) for nid in ids):
            out += tag
            out += _uvarint(len(raw))
            out += raw
    seen: set[str] = set()
    for item in conf.contexts:
        if not isinstance(item, tuple) or len(item) != 2:
            _cannot(f"configuration context {item!r:.100} is not a (node_id, bytes) pair")
        nid, ctx = item
        raw = _encode_id(nid, limits, "context node id")
        if nid in seen:
            _cannot(f"configuration has two contexts for {nid!r}")
        if nid not in voters and nid not in learners:
            _cannot(f"configuration has a context for {nid!r}, which is not a member")
        seen.add(nid)
        ctx = _check_bytes(ctx, limits.max_context_bytes, f"context of {nid!r}")
        body = b"\x0a" + _uvarint(len(raw)) + raw + ((b"\x12" + _uvarint(len(ctx)) + ctx) if ctx else b"")
        out += b"\x1a"
        out += _uvarint(len(body))
        out += body
    return bytes(out)


def _encode_snapshot(snap: Snapshot, limits: Limits) -> bytes:
    if not isinstance(snap, Snapshot) or not isinstance(snap.meta, SnapshotMeta):
        _cannot(f"snapshot must be a Snapshot, not {type(snap).__name__}")
    meta = snap.meta
    body = bytearray()
    for tag, value, what in ((b"\x08", meta.index, "snapshot index"), (b"\x10", meta.term, "snapshot term")):
        if _check_int(value, what):
            body += tag
            body += _uvarint(value)
    conf = _encode_conf(meta.conf, limits)
    body += b"\x1a"
    body += _uvarint(len(conf))
    body += conf
    data = _check_bytes(snap.data, limits.max_frame_bytes, "snapshot data")
    out = bytearray(b"\x0a")
    out += _uvarint(len(body))
    out += body
    if data:
        out += b"\x12"
        out += _uvarint(len(data))
        out += data
    return bytes(out)


def _decode_conf(data: bytes, pos: int, end: int, limits: Limits) -> ConfState:
    voters: list[str] = []
    learners: list[str] = []
    contexts: list[tuple[str, bytes]] = []
    members = 0
    for number, wire, a, b in _fields(data, pos, end, "conf", 2 * limits.max_members + _MAX_FIELDS):
        if number in (1, 2, 3):
            if wire != _LEN:
                _wrong_wire("conf", ("voters", "learners", "contexts")[number - 1], wire)
            if number == 3:
                if len(contexts) >= limits.max_members:
                    _bad(f"conf: more than {limits.max_members} contexts")
                contexts.append(_decode_member_context(data, a, b, limits))
                continue
            members += 1
            if members > limits.max_members:
                _bad(f"conf: more than {limits.max_members} members")
            (voters if number == 1 else learners).append(_decode_id(data, a, b, limits, "conf: member id"))
    voter_set, learner_set = frozenset(voters), frozenset(learners)
    if len(voter_set) != len(voters) or len(learner_set) != len(learners):
        _bad("conf: a member is listed twice")
    if voter_set & learner_set:
        _bad(f"conf: {sorted(voter_set & learner_set)!r} are both voters and learners")
    seen: set[str] = set()
    for nid, _ in contexts:
        if nid in seen:
            _bad(f"conf: two contexts for {nid!r}")
        if nid not in voter_set and nid not in learner_set:
            _bad(f"conf: context for {nid!r}, which is not a member")
        seen.add(nid)
    return ConfState(voters=voter_set, learners=learner_set, contexts=tuple(contexts))


def _decode_member_context(data: bytes, pos: int, end: int, limits: Limits) -> tuple[str, bytes]:
    nid: str | None = None
    ctx = b""
    for number, wire, a, b in _fields(data, pos, end, "member context"):
        if number == 1:
            if wire != _LEN:
                _wrong_wire("member context", "node_id", wire)
            nid = _decode_id(data, a, b, limits, "member context: node_id")
        elif number == 2:
            if wire != _LEN:
                _wrong_wire("member context", "context", wire)
            if b - a > limits.max_context_bytes:
                _bad(f"member context: {b - a} bytes, over the limit of {limits.max_context_bytes}")
            ctx = data[a:b]
    if nid is None:
        _bad("member context: node_id is empty")
    return nid, ctx


def _decode_snapshot(data: bytes, pos: int, end: int, limits: Limits) -> Snapshot:
    index = term = 0
    conf = ConfState()
    snap_data = b""
    for number, wire, a, b in _fields(data, pos, end, "snapshot"):
        if number == 1:
            if wire != _LEN:
                _wrong_wire("snapshot", "meta", wire)
            for mnum, mwire, ma, mb in _fields(data, a, b, "snapshot meta"):
                if mnum in (1, 2):
                    if mwire != _VARINT:
                        _wrong_wire("snapshot meta", ("index", "term")[mnum - 1], mwire)
                    if ma > MAX_INT:
                        _bad("snapshot meta: index or term above 2**63")
                    if mnum == 1:
                        index = ma
                    else:
                        term = ma
                elif mnum == 3:
                    if mwire != _LEN:
                        _wrong_wire("snapshot meta", "conf", mwire)
                    conf = _decode_conf(data, ma, mb, limits)
        elif number == 2:
            if wire != _LEN:
                _wrong_wire("snapshot", "data", wire)
            snap_data = data[a:b]
    return Snapshot(SnapshotMeta(index, term, conf), snap_data)


# ---------------------------------------------------------------------------------------------
# Messages and frames (hot path)


def _encode_message(m: Message, sender: str, limits: Limits) -> tuple[list[bytes], int]:
    """The RaftMessage encoding of ``m`` as pieces and their total length.

    ``frm`` is left out when it equals ``sender``. The pieces are joined once, by the frame, so
    entry data are copied only once on the way out.
    """
    if not isinstance(m, Message):
        _cannot(f"not a Message: {type(m).__name__}")
    mtype = m.type
    if not isinstance(mtype, MessageType):
        _cannot(f"message type must be a MessageType, not {mtype!r}")
    out = bytearray(b"\x08")
    out += _SMALL_VARINTS[mtype.value]
    to = _encode_id(m.to, limits, "message to")
    out += b"\x12"
    out += _uvarint(len(to))
    out += to
    if m.frm != sender:
        frm = _encode_id(m.frm, limits, "message frm")
        out += b"\x1a"
        out += _uvarint(len(frm))
        out += frm
    for tag, value, what in (
        (b"\x20", m.term, "term"),
        (b"\x28", m.log_term, "log_term"),
        (b"\x30", m.index, "index"),
        (b"\x38", m.commit, "commit"),
    ):
        if value:
            if type(value) is not int or not 0 < value <= MAX_INT:
                _cannot(f"{what} must be an int in [0, 2**63), not {value!r}")
            out += tag
            out += _uvarint(value)
    if m.reject:
        out += b"\x40\x01"
    if m.reject_hint:
        out += b"\x48"
        out += _uvarint(_check_int(m.reject_hint, "reject_hint"))
    if m.context:
        ctx = _check_bytes(m.context, limits.max_context_bytes, "message context")
        out += b"\x52"
        out += _uvarint(len(ctx))
        out += ctx
    if m.seq:
        out += b"\x58"
        out += _uvarint(_check_int(m.seq, "seq"))
    if m.transfer:
        out += b"\x60\x01"
    parts: list[bytes] = [bytes(out)]
    size = len(out)
    if m.entries:
        blob, blob_size = _entry_parts(m.entries, limits)
        key = b"\x6a" + _uvarint(blob_size)
        parts.append(key)
        parts.extend(blob)
        size += len(key) + blob_size
    if m.snapshot is not None:
        snap = _encode_snapshot(m.snapshot, limits)
        key = b"\x72" + _uvarint(len(snap))
        parts.append(key)
        parts.append(snap)
        size += len(key) + len(snap)
    if m.election_timeout:  # after 13 and 14: field order as the generated code writes it
        tail = b"\x78" + _uvarint(_check_int(m.election_timeout, "election_timeout"))
        parts.append(tail)
        size += len(tail)
    if m.election_delay:
        tail = b"\x80\x01" + _uvarint(_check_int(m.election_delay, "election_delay"))
        parts.append(tail)
        size += len(tail)
    return parts, size


def _encode_nth(m: Message, sender: str, limits: Limits, i: int) -> tuple[list[bytes], int]:
    """:func:`_encode_message`, with any failure reported as an :class:`EncodeError` naming ``i``."""
    try:
        return _encode_message(m, sender, limits)
    except EncodeError as exc:
        raise EncodeError(f"message {i}: {exc}") from exc
    except (TypeError, ValueError, AttributeError, OverflowError, struct.error) as exc:
        raise EncodeError(f"message {i} cannot be encoded: {type(exc).__name__}: {exc}") from exc


def _decode_message(data: bytes, pos: int, end: int, sender: str, limits: Limits) -> Message:
    """Decode the RaftMessage in ``data[pos:end]``; an empty ``frm`` becomes ``sender``."""
    ints = [0] * _MSG_INTS  # varint fields by number: 1 type, 4-7, 8 reject, 9, 11, 12 transfer, 15, 16
    to = frm = ""
    context = b""
    entries: tuple[Entry, ...] = ()
    snapshot: Snapshot | None = None
    varint_fields = _MSG_VARINT_FIELDS
    for number, wire, a, b in _fields(data, pos, end, "message"):
        if wire == _VARINT:
            if number < _MSG_INTS and varint_fields[number]:
                ints[number] = a
                continue
            if number in _MSG_LEN_FIELDS:
                _wrong_wire("message", _MSG_FIELD_NAMES[number], wire)
        elif wire == _LEN:
            if number == 2:
                to = _decode_id(data, a, b, limits, "message to")
            elif number == 3:
                frm = _decode_id(data, a, b, limits, "message frm")
            elif number == 10:
                if b - a > limits.max_context_bytes:
                    _bad(f"message context is {b - a} bytes, over the limit of {limits.max_context_bytes}")
                context = data[a:b]
            elif number == 13:
                entries = _decode_entries(data, a, b, limits)
            elif number == 14:
                if snapshot is not None:
                    _bad("message has two snapshots")
                snapshot = _decode_snapshot(data, a, b, limits)
            elif number < _MSG_INTS and varint_fields[number]:
                _wrong_wire("message", _MSG_FIELD_NAMES[number], wire)
        elif number in _MSG_FIELD_NAMES:
            _wrong_wire("message", _MSG_FIELD_NAMES[number], wire)
    mtype = _MESSAGE_TYPES.get(ints[1])
    if mtype is None:
        _bad(f"message type {ints[1]} is not a known MessageType")
    if not to:
        _bad("message to is empty")
    _, _, _, _, term, log_term, index, commit, reject, reject_hint, _, seq, transfer, _, _, timeout, delay = (
        ints
    )
    if max(term, log_term, index, commit, reject_hint, seq, timeout, delay) > MAX_INT:
        _bad("message has a term, index or counter above 2**63")
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


def _frame_head(cluster_id: str, sender: str, limits: Limits) -> bytes:
    cid = _encode_id(cluster_id, limits, "cluster_id")
    snd = _encode_id(sender, limits, "sender")
    return b"\x0a" + _uvarint(len(cid)) + cid + b"\x12" + _uvarint(len(snd)) + snd


def encode_frames(
    cluster_id: str, sender: str, messages: Iterable[Message], *, limits: Limits = DEFAULT_LIMITS
) -> list[bytes]:
    """Encode ``messages`` into as few PeerFrames as ``limits`` allow, keeping their order.

    With no messages, returns one frame that carries only the ids (a hello or keepalive).
    Raises :class:`EncodeError` if a message cannot be encoded or alone exceeds
    ``limits.max_frame_bytes``.
    """
    head = _frame_head(cluster_id, sender, limits)
    frames: list[bytes] = []
    parts: list[bytes] = [head]
    size = len(head)
    count = 0
    for i, m in enumerate(messages):
        body, body_size = _encode_nth(m, sender, limits, i)
        key = b"\x1a" + _uvarint(body_size)
        piece = len(key) + body_size
        if len(head) + piece > limits.max_frame_bytes:
            _cannot(
                f"message {i} needs {len(head) + piece} bytes, over the limit of {limits.max_frame_bytes}"
            )
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
        _cannot(f"{len(messages)} messages in one frame, over the limit of {limits.max_messages}")
    head = _frame_head(cluster_id, sender, limits)
    parts: list[bytes] = [head]
    size = len(head)
    for i, m in enumerate(messages):
        body, body_size = _encode_nth(m, sender, limits, i)
        key = b"\x1a" + _uvarint(body_size)
        parts.append(key)
        parts.extend(body)
        size += len(key) + body_size
    if size > limits.max_frame_bytes:
        _cannot(f"frame is {size} bytes, over the limit of {limits.max_frame_bytes}")
    return b"".join(parts)


def decode_frame(data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> Frame:
    """Decode a PeerFrame; raises :class:`ProtocolError` (and nothing else) if it is malformed.

    Checking ``cluster_id`` against the local one, and ``sender`` against the stream's peer, is
    the caller's business.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    if len(data) > limits.max_frame_bytes:
        _bad(f"frame is {len(data)} bytes, over the limit of {limits.max_frame_bytes}")
    try:
        return _decode_frame(data, limits)
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"malformed frame: {type(exc).__name__}: {exc}") from exc


def _decode_frame(data: bytes, limits: Limits) -> Frame:
    cluster_id = sender = ""
    spans: list[tuple[int, int]] = []
    for number, wire, a, b in _fields(data, 0, len(data), "frame", limits.max_messages + _MAX_FIELDS):
        if number in (1, 2, 3) and wire != _LEN:
            _wrong_wire("frame", ("cluster_id", "sender", "messages")[number - 1], wire)
        if number == 1:
            cluster_id = _decode_id(data, a, b, limits, "frame cluster_id")
        elif number == 2:
            sender = _decode_id(data, a, b, limits, "frame sender")
        elif number == 3:
            if len(spans) >= limits.max_messages:
                _bad(f"frame has more than {limits.max_messages} messages")
            spans.append((a, b))
    if not cluster_id:
        _bad("frame cluster_id is empty")
    if not sender:
        _bad("frame sender is empty")
    messages: list[Message] = []
    for i, (a, b) in enumerate(spans):
        try:
            messages.append(_decode_message(data, a, b, sender, limits))
        except ProtocolError as exc:
            raise ProtocolError(f"frame from {sender!r}: message {i}: {exc}") from exc
    return Frame(cluster_id, sender, messages)


# ---------------------------------------------------------------------------------------------
# Snapshot transfer


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
        _cannot(f"chunk_bytes must be a positive int, not {chunk_bytes!r}")
    snap = message.snapshot if isinstance(message, Message) else None
    if snap is None or message.type is not MessageType.SNAP:
        _cannot("snapshot_chunks needs a SNAP message with a snapshot")
    data = snap.data
    if not isinstance(data, bytes | bytearray):
        _cannot(f"snapshot data must be bytes, not {type(data).__name__}")
    total = len(data)
    if total > limits.max_snapshot_bytes:
        _cannot(f"snapshot is {total} bytes, over the limit of {limits.max_snapshot_bytes}")
    body, body_size = _encode_nth(replace(message, snapshot=replace(snap, data=b"")), sender, limits, 0)
    header = b"".join([_frame_head(cluster_id, sender, limits), b"\x1a", _uvarint(body_size), *body])
    checksum = zlib.crc32(data)
    offset = 0
    first = True
    while first or offset < total:
        piece = data[offset : offset + chunk_bytes]
        out = bytearray(header if first else b"")
        if offset:
            out += b"\x20"
            out += _uvarint(offset)
        if total:
            out += b"\x28"
            out += _uvarint(total)
        if piece:
            out += b"\x32"
            out += _uvarint(len(piece))
            out += piece
        offset += len(piece)
        if offset == total and checksum:
            out += b"\x38"
            out += _uvarint(checksum)
        if len(out) > limits.max_frame_bytes:
            _cannot(f"snapshot chunk is {len(out)} bytes, over the limit of {limits.max_frame_bytes}")
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
            _bad("snapshot transfer already failed")
        if self._done:
            self._failed = True
            _bad("snapshot chunk after the last one")
        if not isinstance(chunk, bytes):
            chunk = bytes(chunk)
        try:
            if len(chunk) > self._limits.max_frame_bytes:
                _bad(
                    f"snapshot chunk is {len(chunk)} bytes, over the limit of {self._limits.max_frame_bytes}"
                )
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
        for number, wire, a, b in _fields(data, 0, len(data), "snapshot chunk"):
            if number in (1, 2, 3, 6):
                if wire != _LEN:
                    _wrong_wire(
                        "snapshot chunk",
                        {1: "cluster_id", 2: "sender", 3: "message", 6: "data"}[number],
                        wire,
                    )
                if not first:
                    if number != 6:
                        _bad("snapshot chunk: ids and message belong in the first chunk only")
                elif number == 1:
                    cluster_id = _decode_id(data, a, b, limits, "snapshot chunk cluster_id")
                elif number == 2:
                    sender = _decode_id(data, a, b, limits, "snapshot chunk sender")
                elif number == 3:
                    msg_span = (a, b)
                if number == 6:
                    piece = data[a:b]
            elif number in (4, 5, 7):
                if wire != _VARINT:
                    _wrong_wire("snapshot chunk", {4: "offset", 5: "total", 7: "checksum"}[number], wire)
                if number == 4:
                    offset = a
                elif number == 5:
                    total = a
                else:
                    checksum = a
        if first:
            if not cluster_id or not sender or msg_span is None:
                _bad("snapshot chunk: the first chunk needs cluster_id, sender and message")
            header = _decode_message(data, msg_span[0], msg_span[1], sender, limits)
            if header.type is not MessageType.SNAP or header.snapshot is None:
                _bad("snapshot chunk: the first chunk's message is not a SNAP with a snapshot")
            if header.snapshot.data:
                _bad("snapshot chunk: the first chunk's snapshot carries data inline")
            if total > limits.max_snapshot_bytes:
                _bad(f"snapshot chunk: snapshot of {total} bytes, over {limits.max_snapshot_bytes}")
            self._header, self._cluster_id, self._sender, self._total = header, cluster_id, sender, total
        elif total != self._total:
            _bad(f"snapshot chunk: total changed from {self._total} to {total}")
        if offset != len(self._buf):
            _bad(f"snapshot chunk: offset {offset}, expected {len(self._buf)}")
        if offset + len(piece) > self._total:
            _bad(f"snapshot chunk: data runs past the announced total of {self._total} bytes")
        if not piece and not first:
            _bad("snapshot chunk: empty chunk")
        self._buf += piece
        self._crc = zlib.crc32(piece, self._crc)
        if len(self._buf) < self._total:
            if checksum:
                _bad("snapshot chunk: checksum before the last chunk")
            return None
        if checksum != self._crc:
            _bad(f"snapshot chunk: checksum {checksum:#010x} does not match the data ({self._crc:#010x})")
        self._done = True
        done = self._header
        assert done is not None and done.snapshot is not None
        data_bytes = bytes(self._buf)
        self._buf = bytearray()
        return replace(done, snapshot=replace(done.snapshot, data=data_bytes))


# ---------------------------------------------------------------------------------------------
# Acknowledgements (tiny and rare: the generated classes are fast enough)


def encode_stream_ack(frames: int, messages: int) -> bytes:
    """The StreamAck a receiver sends when a peer closes its stream."""
    ack = _pb.StreamAck(frames=_check_int(frames, "frames"), messages=_check_int(messages, "messages"))
    return bytes(ack)


def decode_stream_ack(data: bytes) -> tuple[int, int]:
    """The ``(frames, messages)`` counts of a StreamAck; :class:`ProtocolError` if malformed."""
    ack = _parse_ack(_pb.StreamAck, data)
    return _ack_int(ack.frames, "frames"), _ack_int(ack.messages, "messages")


def decode_health_request(data: bytes) -> str:
    """The ``service`` of a ``grpc.health.v1.HealthCheckRequest`` (field 1, a string);
    :class:`ProtocolError` if malformed. Unknown fields are skipped, as protobuf does."""
    service = ""
    for number, wire, a, b in _fields(data, 0, len(data), "health check request"):
        if number == 1:
            if wire != _LEN:
                _wrong_wire("health check request", "service", wire)
            if b - a > 1024:
                _bad("health check request: service name over 1024 bytes")
            try:
                service = data[a:b].decode()
            except UnicodeDecodeError:
                _bad("health check request: service name is not UTF-8")
    return service


def encode_health_response(status: int) -> bytes:
    """A ``grpc.health.v1.HealthCheckResponse`` with ``status`` (field 1, the ServingStatus
    enum: 0 unknown, 1 serving, 2 not serving, 3 service unknown)."""
    return b"\x08" + _uvarint(status) if status else b""


def encode_snapshot_ack(received: int) -> bytes:
    """The SnapshotAck a receiver sends once a snapshot arrived whole."""
    return bytes(_pb.SnapshotAck(received=_check_int(received, "received")))


def decode_snapshot_ack(data: bytes) -> int:
    """The byte count of a SnapshotAck; :class:`ProtocolError` if malformed."""
    return _ack_int(_parse_ack(_pb.SnapshotAck, data).received, "received")


_Ack = TypeVar("_Ack", _pb.StreamAck, _pb.SnapshotAck)


def _parse_ack(cls: type[_Ack], data: bytes) -> _Ack:
    if len(data) > 1024:
        _bad(f"{cls.__name__} is {len(data)} bytes, too large")
    try:
        return cls().parse(bytes(data))
    except Exception as exc:
        raise ProtocolError(f"malformed {cls.__name__}: {type(exc).__name__}: {exc}") from exc


def _ack_int(value: object, what: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_INT:
        _bad(f"ack field {what} is not an int in [0, 2**63): {value!r:.50}")
    return value


# ---------------------------------------------------------------------------------------------
# The client-facing KV service (kv.proto): small unary messages, through the generated classes


_MAX_U64 = (1 << 64) - 1
_KV = TypeVar("_KV")
_E = TypeVar("_E", KVErrorCode, ReadConsistency)


def encode_kv_message(message: KVRequest | KVResponse) -> bytes:
    """The protobuf bytes of a KV service request or response (a dataclass of
    :mod:`phalanx_aio.kv.messages`); :class:`EncodeError` if a field is out of range or of the
    wrong type."""
    encoder = _KV_ENCODERS.get(type(message))
    if encoder is None:
        _cannot(f"{type(message).__name__} is not a KV service message")
    try:
        return bytes(encoder(message))
    except EncodeError:
        raise
    except Exception as exc:  # betterproto on a value of the wrong type
        raise EncodeError(f"{type(message).__name__}: {type(exc).__name__}: {exc}") from exc


def decode_kv_message(
    kind: type[_KV], data: bytes, *, max_bytes: int = DEFAULT_LIMITS.max_frame_bytes
) -> _KV:
    """Decode ``data`` as the KV service message ``kind`` (a dataclass of
    :mod:`phalanx_aio.kv.messages`); :class:`ProtocolError` if it is malformed, over
    ``max_bytes``, or holds an unknown enum value. No other exception escapes."""
    entry = _KV_DECODERS.get(kind)
    if entry is None:
        raise LocalError(f"{getattr(kind, '__name__', kind)!r} is not a KV service message type")
    pb_type, convert = entry
    if len(data) > max_bytes:
        _bad(f"{kind.__name__} of {len(data)} bytes, over the limit of {max_bytes}")
    data = bytes(data)
    # betterproto quietly truncates a field that runs past the end: check the framing first.
    _kv_walk(data, 0, len(data), kind.__name__, _KV_NESTED.get(kind, (1,)))
    try:
        parsed = pb_type().parse(data)
    except Exception as exc:
        raise ProtocolError(f"malformed {kind.__name__}: {type(exc).__name__}: {exc}") from exc
    try:
        result: _KV = convert(parsed)
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"malformed {kind.__name__}: {type(exc).__name__}: {exc}") from exc
    return result


def _kv_walk(data: bytes, pos: int, end: int, what: str, nested: tuple[int, ...]) -> None:
    """Check that ``data[pos:end]`` is well-framed protobuf, and so are its sub-messages
    (the field numbers in ``nested``: the header, and the members of a configuration)."""
    for number, wire, a, b in _fields(data, pos, end, what, max_fields=1 << 20):
        if number in nested and wire == _LEN:
            _kv_walk(data, a, b, what, ())


def _kv_u64(value: object, what: str) -> int:
    if type(value) is not int or not 0 <= value <= _MAX_U64:
        _cannot(f"{what} must be an int in [0, 2**64), not {value!r:.50}")
    return value


def _kv_str(value: object, what: str) -> str:
    if type(value) is not str:
        _cannot(f"{what} must be a str, not {type(value).__name__}")
    return value


def _kv_bytes(value: object, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray):
        _cannot(f"{what} must be bytes, not {type(value).__name__}")
    return bytes(value)


def _kv_opt(value: object, what: str) -> tuple[bool, bytes]:
    return (False, b"") if value is None else (True, _kv_bytes(value, what))


def _kv_enum(enum_type: type[_E], value: object, what: str) -> _E:
    try:
        return enum_type(int(value))  # type: ignore[call-overload]
    except (TypeError, ValueError):
        _bad(f"unknown {what} {value!r:.50}")


def _to_pb_request_header(h: KVRequestHeader) -> _pb.RequestHeader:
    if not isinstance(h, KVRequestHeader):
        _cannot(f"header must be a RequestHeader, not {type(h).__name__}")
    return _pb.RequestHeader(
        cluster_id=_kv_str(h.cluster_id, "cluster_id"),
        client_id=_kv_str(h.client_id, "client_id"),
        sequence=_kv_u64(h.sequence, "sequence"),
        acked_sequence=_kv_u64(h.acked_sequence, "acked_sequence"),
    )


def _to_pb_response_header(h: KVResponseHeader) -> _pb.ResponseHeader:
    if not isinstance(h, KVResponseHeader):
        _cannot(f"header must be a ResponseHeader, not {type(h).__name__}")
    if not isinstance(h.error, KVErrorCode):
        _cannot(f"error must be an ErrorCode, not {h.error!r:.50}")
    return _pb.ResponseHeader(
        error=_pb.ErrorCode(int(h.error)),
        message=_kv_str(h.message, "message"),
        leader_hint=_kv_str(h.leader_hint, "leader_hint"),
        leader_address=_kv_str(h.leader_address, "leader_address"),
        term=_kv_u64(h.term, "term"),
        index=_kv_u64(h.index, "index"),
    )


def _to_pb_members(members: Iterable[KVMember]) -> list[_pb.Member]:
    out = []
    for m in members:
        if not isinstance(m, KVMember):
            _cannot(f"members must be Member, not {type(m).__name__}")
        out.append(
            _pb.Member(
                node_id=_kv_str(m.node_id, "node_id"),
                address=_kv_str(m.address, "address"),
                learner=bool(m.learner),
            )
        )
    return out


def _from_pb_request_header(h: _pb.RequestHeader) -> KVRequestHeader:
    return KVRequestHeader(h.cluster_id, h.client_id, h.sequence, h.acked_sequence)


def _from_pb_response_header(h: _pb.ResponseHeader) -> KVResponseHeader:
    return KVResponseHeader(
        _kv_enum(KVErrorCode, h.error, "error code"),
        h.message,
        h.leader_hint,
        h.leader_address,
        h.term,
        h.index,
    )


def _from_pb_members(members: Iterable[_pb.Member]) -> tuple[KVMember, ...]:
    return tuple(KVMember(m.node_id, m.address, m.learner) for m in members)


def _enc_put(m: PutRequest) -> _pb.PutRequest:
    return _pb.PutRequest(
        header=_to_pb_request_header(m.header), key=_kv_bytes(m.key, "key"), value=_kv_bytes(m.value, "value")
    )


def _enc_put_response(m: PutResponse) -> _pb.PutResponse:
    had, previous = _kv_opt(m.previous, "previous")
    return _pb.PutResponse(header=_to_pb_response_header(m.header), had_previous=had, previous=previous)


def _enc_get(m: GetRequest) -> _pb.GetRequest:
    if not isinstance(m.consistency, ReadConsistency):
        _cannot(f"consistency must be a ReadConsistency, not {m.consistency!r:.50}")
    return _pb.GetRequest(
        header=_to_pb_request_header(m.header),
        key=_kv_bytes(m.key, "key"),
        consistency=_pb.ReadConsistency(int(m.consistency)),
    )


def _enc_get_response(m: GetResponse) -> _pb.GetResponse:
    found, value = _kv_opt(m.value, "value")
    return _pb.GetResponse(header=_to_pb_response_header(m.header), found=found, value=value)


def _enc_delete(m: DeleteRequest) -> _pb.DeleteRequest:
    return _pb.DeleteRequest(header=_to_pb_request_header(m.header), key=_kv_bytes(m.key, "key"))


def _enc_delete_response(m: DeleteResponse) -> _pb.DeleteResponse:
    return _pb.DeleteResponse(header=_to_pb_response_header(m.header), deleted=bool(m.deleted))


def _enc_cas(m: CompareAndSetRequest) -> _pb.CompareAndSetRequest:
    present, expected = _kv_opt(m.expected, "expected")
    return _pb.CompareAndSetRequest(
        header=_to_pb_request_header(m.header),
        key=_kv_bytes(m.key, "key"),
        expected=expected,
        expect_absent=not present,
        value=_kv_bytes(m.value, "value"),
    )


def _enc_cas_response(m: CompareAndSetResponse) -> _pb.CompareAndSetResponse:
    found, current = _kv_opt(m.current, "current")
    return _pb.CompareAndSetResponse(
        header=_to_pb_response_header(m.header), swapped=bool(m.swapped), found=found, current=current
    )


def _enc_status_response(m: StatusResponse) -> _pb.StatusResponse:
    return _pb.StatusResponse(
        header=_to_pb_response_header(m.header),
        node_id=_kv_str(m.node_id, "node_id"),
        role=_kv_str(m.role, "role"),
        term=_kv_u64(m.term, "term"),
        leader_id=_kv_str(m.leader_id, "leader_id"),
        commit_index=_kv_u64(m.commit_index, "commit_index"),
        applied_index=_kv_u64(m.applied_index, "applied_index"),
        last_index=_kv_u64(m.last_index, "last_index"),
        members=_to_pb_members(m.members),
        quota_alarm=bool(m.quota_alarm),
        quota_used_bytes=_kv_u64(m.quota_used_bytes, "quota_used_bytes"),
    )


def _enc_member_add(m: MemberAddRequest) -> _pb.MemberAddRequest:
    return _pb.MemberAddRequest(
        header=_to_pb_request_header(m.header),
        node_id=_kv_str(m.node_id, "node_id"),
        address=_kv_str(m.address, "address"),
        learner=bool(m.learner),
    )


_KV_NESTED: dict[type[Any], tuple[int, ...]] = {
    StatusResponse: (1, 9),
    MemberListResponse: (1, 2),
    MemberChangeResponse: (1, 2),
}

_KV_ENCODERS: dict[type[Any], Callable[[Any], Any]] = {
    PutRequest: _enc_put,
    PutResponse: _enc_put_response,
    GetRequest: _enc_get,
    GetResponse: _enc_get_response,
    DeleteRequest: _enc_delete,
    DeleteResponse: _enc_delete_response,
    CompareAndSetRequest: _enc_cas,
    CompareAndSetResponse: _enc_cas_response,
    StatusRequest: lambda m: _pb.StatusRequest(header=_to_pb_request_header(m.header)),
    StatusResponse: _enc_status_response,
    MemberListRequest: lambda m: _pb.MemberListRequest(header=_to_pb_request_header(m.header)),
    MemberListResponse: lambda m: _pb.MemberListResponse(
        header=_to_pb_response_header(m.header), members=_to_pb_members(m.members)
    ),
    MemberAddRequest: _enc_member_add,
    MemberRemoveRequest: lambda m: _pb.MemberRemoveRequest(
        header=_to_pb_request_header(m.header), node_id=_kv_str(m.node_id, "node_id")
    ),
    MemberPromoteRequest: lambda m: _pb.MemberPromoteRequest(
        header=_to_pb_request_header(m.header), node_id=_kv_str(m.node_id, "node_id")
    ),
    MemberChangeResponse: lambda m: _pb.MemberChangeResponse(
        header=_to_pb_response_header(m.header), members=_to_pb_members(m.members)
    ),
    TransferLeaderRequest: lambda m: _pb.TransferLeaderRequest(
        header=_to_pb_request_header(m.header), target=_kv_str(m.target, "target")
    ),
    TransferLeaderResponse: lambda m: _pb.TransferLeaderResponse(
        header=_to_pb_response_header(m.header), leader_id=_kv_str(m.leader_id, "leader_id")
    ),
}

_KV_DECODERS: dict[type[Any], tuple[type[Any], Callable[[Any], Any]]] = {
    PutRequest: (_pb.PutRequest, lambda p: PutRequest(_from_pb_request_header(p.header), p.key, p.value)),
    PutResponse: (
        _pb.PutResponse,
        lambda p: PutResponse(_from_pb_response_header(p.header), p.previous if p.had_previous else None),
    ),
    GetRequest: (
        _pb.GetRequest,
        lambda p: GetRequest(
            _from_pb_request_header(p.header),
            p.key,
            _kv_enum(ReadConsistency, p.consistency, "read consistency"),
        ),
    ),
    GetResponse: (
        _pb.GetResponse,
        lambda p: GetResponse(_from_pb_response_header(p.header), p.value if p.found else None),
    ),
    DeleteRequest: (_pb.DeleteRequest, lambda p: DeleteRequest(_from_pb_request_header(p.header), p.key)),
    DeleteResponse: (
        _pb.DeleteResponse,
        lambda p: DeleteResponse(_from_pb_response_header(p.header), p.deleted),
    ),
    CompareAndSetRequest: (
        _pb.CompareAndSetRequest,
        lambda p: CompareAndSetRequest(
            _from_pb_request_header(p.header), p.key, None if p.expect_absent else p.expected, p.value
        ),
    ),
    CompareAndSetResponse: (
        _pb.CompareAndSetResponse,
        lambda p: CompareAndSetResponse(
            _from_pb_response_header(p.header), p.swapped, p.current if p.found else None
        ),
    ),
    StatusRequest: (_pb.StatusRequest, lambda p: StatusRequest(_from_pb_request_header(p.header))),
    StatusResponse: (
        _pb.StatusResponse,
        lambda p: StatusResponse(
            _from_pb_response_header(p.header),
            p.node_id,
            p.role,
            p.term,
            p.leader_id,
            p.commit_index,
            p.applied_index,
            p.last_index,
            _from_pb_members(p.members),
            p.quota_alarm,
            p.quota_used_bytes,
        ),
    ),
    MemberListRequest: (
        _pb.MemberListRequest,
        lambda p: MemberListRequest(_from_pb_request_header(p.header)),
    ),
    MemberListResponse: (
        _pb.MemberListResponse,
        lambda p: MemberListResponse(_from_pb_response_header(p.header), _from_pb_members(p.members)),
    ),
    MemberAddRequest: (
        _pb.MemberAddRequest,
        lambda p: MemberAddRequest(_from_pb_request_header(p.header), p.node_id, p.address, p.learner),
    ),
    MemberRemoveRequest: (
        _pb.MemberRemoveRequest,
        lambda p: MemberRemoveRequest(_from_pb_request_header(p.header), p.node_id),
    ),
    MemberPromoteRequest: (
        _pb.MemberPromoteRequest,
        lambda p: MemberPromoteRequest(_from_pb_request_header(p.header), p.node_id),
    ),
    MemberChangeResponse: (
        _pb.MemberChangeResponse,
        lambda p: MemberChangeResponse(_from_pb_response_header(p.header), _from_pb_members(p.members)),
    ),
    TransferLeaderRequest: (
        _pb.TransferLeaderRequest,
        lambda p: TransferLeaderRequest(_from_pb_request_header(p.header), p.target),
    ),
    TransferLeaderResponse: (
        _pb.TransferLeaderResponse,
        lambda p: TransferLeaderResponse(_from_pb_response_header(p.header), p.leader_id),
    ),
}


# ---------------------------------------------------------------------------------------------
# The KV Stream call: batches of requests and answers, written and read by hand (the generated
# classes cost tens of microseconds per message, and this runs once per operation). A batch
# message (StreamRequestBatch, StreamResponseBatch) is a concatenation of framed items, so a
# sender encodes each item once and joins them; a receiver decodes the whole batch at once.

KV_STREAM_METHOD = "/phalanx.v1.KV/Stream"
"""The gRPC path of the KV service's streaming call (StreamRequestBatch in, StreamResponseBatch out)."""

KV_STREAM_MAX_ITEMS = 1 << 16
"""The most requests or answers a decoder accepts in one Stream message."""

_MAX_U32 = (1 << 32) - 1
_LEN_TAGS = tuple(_uvarint(n << 3 | _LEN) for n in range(8))
_VARINT_TAGS = tuple(_uvarint(n << 3 | _VARINT) for n in range(8))

# Request type -> its field number in StreamRequest; response type -> its number in StreamResponse.
_STREAM_REQ_FIELDS: dict[type[Any], int] = {
    PutRequest: 3,
    GetRequest: 4,
    DeleteRequest: 5,
    CompareAndSetRequest: 6,
}
_STREAM_RESP_FIELDS: dict[type[Any], int] = {
    PutResponse: 2,
    GetResponse: 3,
    DeleteResponse: 4,
    CompareAndSetResponse: 5,
}


def _w_len(out: list[bytes], number: int, payload: bytes) -> None:
    out.append(_LEN_TAGS[number])
    out.append(_uvarint(len(payload)))
    out.append(payload)


def _w_bytes(out: list[bytes], number: int, value: object, what: str) -> None:
    raw = _kv_bytes(value, what)
    if raw:
        _w_len(out, number, raw)


def _w_str(out: list[bytes], number: int, value: object, what: str) -> None:
    if value:
        try:
            raw = _kv_str(value, what).encode("utf-8")
        except UnicodeEncodeError:
            _cannot(f"{what} cannot be encoded as UTF-8")
        _w_len(out, number, raw)
    elif type(value) is not str:
        _cannot(f"{what} must be a str, not {type(value).__name__}")


def _w_uint(out: list[bytes], number: int, value: object, what: str, top: int = _MAX_U64) -> None:
    if type(value) is not int or not 0 <= value <= top:
        _cannot(f"{what} must be an int in [0, {top}], not {value!r:.50}")
    if value:
        out.append(_VARINT_TAGS[number])
        out.append(_uvarint(value))


def _w_opt(out: list[bytes], flag: int, number: int, value: object, what: str) -> None:
    """An optional bytes value as a (flag, bytes) pair of fields."""
    if value is not None:
        out.append(_VARINT_TAGS[flag])
        out.append(b"\x01")
        _w_bytes(out, number, value, what)


# A client's requests share their cluster and session ids: remember the last pair's bytes.
_req_header_ids: tuple[object, object, bytes] = (None, None, b"")


def _enc_stream_req_header(h: object) -> bytes:
    global _req_header_ids
    if not isinstance(h, KVRequestHeader):
        _cannot(f"header must be a RequestHeader, not {type(h).__name__}")
    cluster, client, ids = _req_header_ids
    if h.cluster_id != cluster or h.client_id != client or type(h.client_id) is not str:
        first: list[bytes] = []
        _w_str(first, 1, h.cluster_id, "cluster_id")
        _w_str(first, 2, h.client_id, "client_id")
        ids = b"".join(first)
        _req_header_ids = (h.cluster_id, h.client_id, ids)
    out = [ids]
    _w_uint(out, 3, h.sequence, "sequence")
    _w_uint(out, 4, h.acked_sequence, "acked_sequence")
    return b"".join(out)


# The answers of one batch usually share one header object (and so its bytes): remember the
# last one encoded and decoded. ResponseHeader is frozen, so the same object means the same bytes.
_resp_header_encoded: tuple[object, bytes] = (None, b"")
_resp_header_decoded: tuple[bytes | None, KVResponseHeader] = (None, KVResponseHeader())


def _enc_stream_resp_header(h: object) -> bytes:
    global _resp_header_encoded
    last, raw = _resp_header_encoded
    if h is last:
        return raw
    raw = _enc_stream_resp_header_fields(h)
    _resp_header_encoded = (h, raw)
    return raw


def _enc_stream_resp_header_fields(h: object) -> bytes:
    if not isinstance(h, KVResponseHeader):
        _cannot(f"header must be a ResponseHeader, not {type(h).__name__}")
    if not isinstance(h.error, KVErrorCode):
        _cannot(f"error must be an ErrorCode, not {h.error!r:.50}")
    out: list[bytes] = []
    _w_uint(out, 1, int(h.error), "error")
    _w_str(out, 2, h.message, "message")
    _w_str(out, 3, h.leader_hint, "leader_hint")
    _w_str(out, 4, h.leader_address, "leader_address")
    _w_uint(out, 5, h.term, "term")
    _w_uint(out, 6, h.index, "index")
    return b"".join(out)


def _enc_stream_request_body(m: object) -> bytes:
    out: list[bytes] = []
    _w_len(out, 1, _enc_stream_req_header(getattr(m, "header", None)))
    if isinstance(m, PutRequest):
        _w_bytes(out, 2, m.key, "key")
        _w_bytes(out, 3, m.value, "value")
    elif isinstance(m, GetRequest):
        _w_bytes(out, 2, m.key, "key")
        if not isinstance(m.consistency, ReadConsistency):
            _cannot(f"consistency must be a ReadConsistency, not {m.consistency!r:.50}")
        _w_uint(out, 3, int(m.consistency), "consistency")
    elif isinstance(m, DeleteRequest):
        _w_bytes(out, 2, m.key, "key")
    else:
        assert isinstance(m, CompareAndSetRequest)
        _w_bytes(out, 2, m.key, "key")
        if m.expected is None:
            out.append(_VARINT_TAGS[4])
            out.append(b"\x01")
        else:
            _w_bytes(out, 3, m.expected, "expected")
        _w_bytes(out, 5, m.value, "value")
    return b"".join(out)


def _enc_stream_response_body(m: object) -> bytes:
    out: list[bytes] = []
    _w_len(out, 1, _enc_stream_resp_header(getattr(m, "header", None)))
    if isinstance(m, PutResponse):
        _w_opt(out, 2, 3, m.previous, "previous")
    elif isinstance(m, GetResponse):
        _w_opt(out, 2, 3, m.value, "value")
    elif isinstance(m, DeleteResponse):
        if m.deleted:
            out.append(_VARINT_TAGS[2])
            out.append(b"\x01")
    else:
        assert isinstance(m, CompareAndSetResponse)
        if m.swapped:
            out.append(_VARINT_TAGS[2])
            out.append(b"\x01")
        _w_opt(out, 3, 4, m.current, "current")
    return b"".join(out)


def encode_kv_stream_request(request_id: int, timeout_ms: int, request: KVRequest) -> bytes:
    """One framed item of a ``StreamRequestBatch``: ``request`` (a Put, Get, Delete or
    CompareAndSet request) with the id its answer will carry and the time the client waits for
    it (milliseconds, 0: the node's default). A batch is the concatenation of such items.
    :class:`EncodeError` if a field is out of range or of the wrong type."""
    number = _STREAM_REQ_FIELDS.get(type(request))
    if number is None:
        _cannot(f"{type(request).__name__} cannot travel on the Stream call")
    out: list[bytes] = []
    _w_uint(out, 1, request_id, "request id")
    _w_uint(out, 2, timeout_ms, "timeout_ms", _MAX_U32)
    _w_len(out, number, _enc_stream_request_body(request))
    body = b"".join(out)
    return b"".join((_LEN_TAGS[1], _uvarint(len(body)), body))


def encode_kv_stream_response(request_id: int, response: KVResponse) -> bytes:
    """One framed item of a ``StreamResponseBatch``: the answer to the request ``request_id``
    (a Put, Get, Delete or CompareAndSet response). A batch is the concatenation of such items.
    :class:`EncodeError` if a field is out of range or of the wrong type."""
    number = _STREAM_RESP_FIELDS.get(type(response))
    if number is None:
        _cannot(f"{type(response).__name__} cannot travel on the Stream call")
    out: list[bytes] = []
    _w_uint(out, 1, request_id, "request id")
    _w_len(out, number, _enc_stream_response_body(response))
    body = b"".join(out)
    return b"".join((_LEN_TAGS[1], _uvarint(len(body)), body))


def _r_str(data: bytes, wire: int, a: int, b: int, what: str) -> str:
    if wire != _LEN:
        _wrong_wire("KV stream", what, wire)
    try:
        return data[a:b].decode("utf-8")
    except UnicodeDecodeError:
        _bad(f"KV stream: {what} is not valid UTF-8")


def _r_bytes(data: bytes, wire: int, a: int, b: int, what: str) -> bytes:
    if wire != _LEN:
        _wrong_wire("KV stream", what, wire)
    return data[a:b]


def _r_uint(wire: int, value: int, what: str) -> int:
    if wire != _VARINT:
        _wrong_wire("KV stream", what, wire)
    return value


def _dec_stream_req_header(data: bytes, a: int, b: int) -> KVRequestHeader:
    cluster = client = ""
    seq = acked = 0
    for number, wire, x, y in _fields(data, a, b, "RequestHeader"):
        if number == 1:
            cluster = _r_str(data, wire, x, y, "cluster_id")
        elif number == 2:
            client = _r_str(data, wire, x, y, "client_id")
        elif number == 3:
            seq = _r_uint(wire, x, "sequence")
        elif number == 4:
            acked = _r_uint(wire, x, "acked_sequence")
    return KVRequestHeader(cluster, client, seq, acked)


def _dec_stream_resp_header(data: bytes, a: int, b: int) -> KVResponseHeader:
    global _resp_header_decoded
    raw = data[a:b]
    if raw == _resp_header_decoded[0]:
        return _resp_header_decoded[1]
    header = _dec_stream_resp_header_fields(data, a, b)
    _resp_header_decoded = (raw, header)
    return header


def _dec_stream_resp_header_fields(data: bytes, a: int, b: int) -> KVResponseHeader:
    error = KVErrorCode.OK
    message = hint = address = ""
    term = index = 0
    for number, wire, x, y in _fields(data, a, b, "ResponseHeader"):
        if number == 1:
            error = _kv_enum(KVErrorCode, _r_uint(wire, x, "error"), "error code")
        elif number == 2:
            message = _r_str(data, wire, x, y, "message")
        elif number == 3:
            hint = _r_str(data, wire, x, y, "leader_hint")
        elif number == 4:
            address = _r_str(data, wire, x, y, "leader_address")
        elif number == 5:
            term = _r_uint(wire, x, "term")
        elif number == 6:
            index = _r_uint(wire, x, "index")
    return KVResponseHeader(error, message, hint, address, term, index)


def _dec_stream_request_body(data: bytes, a: int, b: int, kind: int) -> KVRequest:
    header = KVRequestHeader("")
    key = value = expected = b""
    absent = False
    consistency = ReadConsistency.LINEARIZABLE
    for number, wire, x, y in _fields(data, a, b, "stream request"):
        if number == 1:
            if wire != _LEN:
                _wrong_wire("KV stream", "header", wire)
            header = _dec_stream_req_header(data, x, y)
        elif number == 2:
            key = _r_bytes(data, wire, x, y, "key")
        elif kind == 3 and number == 3:  # PutRequest.value
            value = _r_bytes(data, wire, x, y, "value")
        elif kind == 4 and number == 3:  # GetRequest.consistency
            consistency = _kv_enum(ReadConsistency, _r_uint(wire, x, "consistency"), "read consistency")
        elif kind == 6 and number == 3:  # CompareAndSetRequest.expected
            expected = _r_bytes(data, wire, x, y, "expected")
        elif kind == 6 and number == 4:
            absent = _r_uint(wire, x, "expect_absent") != 0
        elif kind == 6 and number == 5:
            value = _r_bytes(data, wire, x, y, "value")
    if kind == 3:
        return PutRequest(header, key, value)
    if kind == 4:
        return GetRequest(header, key, consistency)
    if kind == 5:
        return DeleteRequest(header, key)
    return CompareAndSetRequest(header, key, None if absent else expected, value)


def _dec_stream_response_body(data: bytes, a: int, b: int, kind: int) -> KVResponse:
    header = KVResponseHeader()
    flag = swapped = False
    payload = b""
    for number, wire, x, y in _fields(data, a, b, "stream response"):
        if number == 1:
            if wire != _LEN:
                _wrong_wire("KV stream", "header", wire)
            header = _dec_stream_resp_header(data, x, y)
        elif kind == 5:  # CompareAndSetResponse: swapped, found, current
            if number == 2:
                swapped = _r_uint(wire, x, "swapped") != 0
            elif number == 3:
                flag = _r_uint(wire, x, "found") != 0
            elif number == 4:
                payload = _r_bytes(data, wire, x, y, "current")
        elif number == 2:  # had_previous, found, deleted
            flag = _r_uint(wire, x, "flag") != 0
        elif number == 3 and kind != 4:  # previous, value
            payload = _r_bytes(data, wire, x, y, "value")
    if kind == 2:
        return PutResponse(header, payload if flag else None)
    if kind == 3:
        return GetResponse(header, payload if flag else None)
    if kind == 4:
        return DeleteResponse(header, flag)
    return CompareAndSetResponse(header, swapped, payload if flag else None)


def _stream_items(data: bytes, max_bytes: int, what: str) -> Iterator[tuple[int, int]]:
    """The spans of the items (field 1) of a stream batch message."""
    if len(data) > max_bytes:
        _bad(f"{what} of {len(data)} bytes, over the limit of {max_bytes}")
    for number, wire, a, b in _fields(data, 0, len(data), what, KV_STREAM_MAX_ITEMS):
        if number == 1:
            if wire != _LEN:
                _wrong_wire(what, "items", wire)
            yield a, b


def decode_kv_stream_requests(
    data: bytes, *, max_bytes: int = DEFAULT_LIMITS.max_frame_bytes
) -> list[tuple[int, int, KVRequest]]:
    """The items of a ``StreamRequestBatch``: ``(request id, timeout_ms, request)`` each.
    :class:`ProtocolError` if any part is malformed, an item holds no request, or the message
    is over ``max_bytes`` or holds more than :data:`KV_STREAM_MAX_ITEMS` items."""
    data = bytes(data)
    out: list[tuple[int, int, KVRequest]] = []
    for a, b in _stream_items(data, max_bytes, "StreamRequestBatch"):
        rid = timeout_ms = kind = 0
        span = (0, 0)
        for number, wire, x, y in _fields(data, a, b, "StreamRequest"):
            if number == 1:
                rid = _r_uint(wire, x, "id")
            elif number == 2:
                timeout_ms = _r_uint(wire, x, "timeout_ms")
                if timeout_ms > _MAX_U32:
                    _bad(f"KV stream: timeout_ms {timeout_ms} is over 2**32")
            elif 3 <= number <= 6:
                if wire != _LEN:
                    _wrong_wire("StreamRequest", "request", wire)
                kind, span = number, (x, y)
        if not kind:
            _bad(f"StreamRequest {rid} holds no request")
        out.append((rid, timeout_ms, _dec_stream_request_body(data, span[0], span[1], kind)))
    return out


def decode_kv_stream_responses(
    data: bytes, *, max_bytes: int = DEFAULT_LIMITS.max_frame_bytes
) -> list[tuple[int, KVResponse]]:
    """The items of a ``StreamResponseBatch``: ``(request id, response)`` each.
    :class:`ProtocolError` if any part is malformed, an item holds no response, or the message
    is over ``max_bytes`` or holds more than :data:`KV_STREAM_MAX_ITEMS` items."""
    data = bytes(data)
    out: list[tuple[int, KVResponse]] = []
    for a, b in _stream_items(data, max_bytes, "StreamResponseBatch"):
        rid = kind = 0
        span = (0, 0)
        for number, wire, x, y in _fields(data, a, b, "StreamResponse"):
            if number == 1:
                rid = _r_uint(wire, x, "id")
            elif 2 <= number <= 5:
                if wire != _LEN:
                    _wrong_wire("StreamResponse", "response", wire)
                kind, span = number, (x, y)
        if not kind:
            _bad(f"StreamResponse {rid} holds no response")
        out.append((rid, _dec_stream_response_body(data, span[0], span[1], kind)))
    return out
