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
from dataclasses import dataclass
from typing import Final, NamedTuple, TypeVar

from phalanx_aio._entry_batch import MAX_INT, EncodeError, decode_entries_at, entry_parts
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
    put_len,
    put_uint,
    tag,
    uvarint,
    wrong_wire,
)
from phalanx_aio.core.types import (
    ConfState,
    Entry,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)
from phalanx_aio.errors import ConfigError, ProtocolError

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
# Snapshot, SnapshotMeta, ConfState, MemberContext
_SNAPSHOT_META: Final = tag(1, LEN)
_SNAPSHOT_DATA: Final = tag(2, LEN)
_META_INDEX: Final = tag(1, VARINT)
_META_TERM: Final = tag(2, VARINT)
_META_CONF: Final = tag(3, LEN)
_CONF_VOTERS: Final = tag(1, LEN)
_CONF_LEARNERS: Final = tag(2, LEN)
_CONF_CONTEXTS: Final = tag(3, LEN)
_CONF_VOTERS_OUTGOING: Final = tag(4, LEN)
_CONF_REMOVED: Final = tag(5, LEN)
_REMOVED_NODE_ID: Final = tag(1, LEN)
_REMOVED_INDEX: Final = tag(2, VARINT)
_CONTEXT_NODE_ID: Final = tag(1, LEN)
_CONTEXT_DATA: Final = tag(2, LEN)

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
        cannot(f"snapshot conf must be a ConfState, not {type(conf).__name__}")
    voters, learners, outgoing = conf.voters, conf.learners, conf.voters_outgoing
    members = conf.members()
    if len(members) > limits.max_members:
        cannot(f"configuration has {len(members)} members, over {limits.max_members}")
    if (voters | outgoing) & learners:
        cannot(f"configuration lists {sorted((voters | outgoing) & learners)!r} as both voters and learners")
    if outgoing and not voters:
        cannot("a joint configuration needs voters in its new half")
    if len(conf.removed) > limits.max_members:
        cannot(f"configuration lists {len(conf.removed)} removed members, over {limits.max_members}")
    out = bytearray()
    for key, ids, what in (
        (_CONF_VOTERS, voters, "voter id"),
        (_CONF_LEARNERS, learners, "learner id"),
        (_CONF_VOTERS_OUTGOING, outgoing, "outgoing voter id"),
    ):
        for raw in sorted(encode_id(nid, limits.max_id_bytes, what) for nid in ids):
            out += key
            out += uvarint(len(raw))
            out += raw
    seen: set[str] = set()
    for item in conf.contexts:
        if not isinstance(item, tuple) or len(item) != 2:
            cannot(f"configuration context {item!r:.100} is not a (node_id, bytes) pair")
        nid, ctx = item
        raw = encode_id(nid, limits.max_id_bytes, "context node id")
        if nid in seen:
            cannot(f"configuration has two contexts for {nid!r}")
        if nid not in members:
            cannot(f"configuration has a context for {nid!r}, which is not a member")
        seen.add(nid)
        ctx = check_bytes(ctx, limits.max_context_bytes, f"context of {nid!r}")
        body = bytearray()
        put_len(body, _CONTEXT_NODE_ID, raw)
        if ctx:
            put_len(body, _CONTEXT_DATA, ctx)
        put_len(out, _CONF_CONTEXTS, body)
    for removal in conf.removed:
        if not isinstance(removal, tuple) or len(removal) != 2:
            cannot(f"configuration removal {removal!r:.100} is not a (node_id, index) pair")
        gone, index = removal
        body = bytearray()
        put_len(body, _REMOVED_NODE_ID, encode_id(gone, limits.max_id_bytes, "removed node id"))
        put_uint(body, _REMOVED_INDEX, check_int(index, "removal index"))
        put_len(out, _CONF_REMOVED, body)
    return bytes(out)


def _encode_snapshot(snap: Snapshot, limits: Limits) -> bytes:
    if not isinstance(snap, Snapshot) or not isinstance(snap.meta, SnapshotMeta):
        cannot(f"snapshot must be a Snapshot, not {type(snap).__name__}")
    meta = snap.meta
    body = bytearray()
    for key, value, what in (
        (_META_INDEX, meta.index, "snapshot index"),
        (_META_TERM, meta.term, "snapshot term"),
    ):
        put_uint(body, key, check_int(value, what))
    put_len(body, _META_CONF, _encode_conf(meta.conf, limits))
    data = check_bytes(snap.data, limits.max_frame_bytes, "snapshot data")
    out = bytearray()
    put_len(out, _SNAPSHOT_META, body)
    if data:
        put_len(out, _SNAPSHOT_DATA, data)
    return bytes(out)


def _decode_conf(data: bytes, pos: int, end: int, limits: Limits) -> ConfState:
    lists: dict[int, list[str]] = {1: [], 2: [], 4: []}
    contexts: list[tuple[str, bytes]] = []
    removed: list[tuple[str, int]] = []
    members = 0
    for number, wire, a, b in fields(data, pos, end, "conf", 4 * limits.max_members + MAX_FIELDS):
        if number in (1, 2, 3, 4, 5):
            if wire != LEN:
                names = ("voters", "learners", "contexts", "voters_outgoing", "removed")
                wrong_wire("conf", names[number - 1], wire)
            if number == 3:
                if len(contexts) >= limits.max_members:
                    bad(f"conf: more than {limits.max_members} contexts")
                contexts.append(_decode_member_context(data, a, b, limits))
                continue
            if number == 5:
                if len(removed) >= limits.max_members:
                    bad(f"conf: more than {limits.max_members} removed members")
                removed.append(_decode_removed(data, a, b, limits))
                continue
            members += 1
            if members > 2 * limits.max_members:
                bad(f"conf: more than {limits.max_members} members")
            lists[number].append(decode_id(data, a, b, limits.max_id_bytes, "conf: member id"))
    voters, learners, outgoing = lists[1], lists[2], lists[4]
    voter_set, learner_set, outgoing_set = frozenset(voters), frozenset(learners), frozenset(outgoing)
    if len(voter_set) + len(learner_set) + len(outgoing_set) != len(voters) + len(learners) + len(outgoing):
        bad("conf: a member is listed twice")
    member_set = voter_set | learner_set | outgoing_set
    if len(member_set) > limits.max_members:
        bad(f"conf: more than {limits.max_members} members")
    if (voter_set | outgoing_set) & learner_set:
        bad(f"conf: {sorted((voter_set | outgoing_set) & learner_set)!r} are both voters and learners")
    if outgoing_set and not voter_set:
        bad("conf: a joint configuration without voters in its new half")
    seen: set[str] = set()
    for nid, _ in contexts:
        if nid in seen:
            bad(f"conf: two contexts for {nid!r}")
        if nid not in member_set:
            bad(f"conf: context for {nid!r}, which is not a member")
        seen.add(nid)
    if len({nid for nid, _ in removed}) != len(removed):
        bad("conf: a removed member is listed twice")
    return ConfState(
        voters=voter_set,
        learners=learner_set,
        contexts=tuple(contexts),
        voters_outgoing=outgoing_set,
        removed=tuple(removed),
    )


def _decode_removed(data: bytes, pos: int, end: int, limits: Limits) -> tuple[str, int]:
    nid: str | None = None
    index = 0
    for number, wire, a, b in fields(data, pos, end, "removed member"):
        if number == 1:
            if wire != LEN:
                wrong_wire("removed member", "node_id", wire)
            nid = decode_id(data, a, b, limits.max_id_bytes, "removed member: node_id")
        elif number == 2:
            if wire != VARINT:
                wrong_wire("removed member", "index", wire)
            index = a
    if nid is None:
        bad("removed member: node_id is empty")
    return nid, index


def _decode_member_context(data: bytes, pos: int, end: int, limits: Limits) -> tuple[str, bytes]:
    nid: str | None = None
    ctx = b""
    for number, wire, a, b in fields(data, pos, end, "member context"):
        if number == 1:
            if wire != LEN:
                wrong_wire("member context", "node_id", wire)
            nid = decode_id(data, a, b, limits.max_id_bytes, "member context: node_id")
        elif number == 2:
            if wire != LEN:
                wrong_wire("member context", "context", wire)
            if b - a > limits.max_context_bytes:
                bad(f"member context: {b - a} bytes, over the limit of {limits.max_context_bytes}")
            ctx = data[a:b]
    if nid is None:
        bad("member context: node_id is empty")
    return nid, ctx


def _decode_snapshot(data: bytes, pos: int, end: int, limits: Limits) -> Snapshot:
    index = term = 0
    conf = ConfState()
    snap_data = b""
    for number, wire, a, b in fields(data, pos, end, "snapshot"):
        if number == 1:
            if wire != LEN:
                wrong_wire("snapshot", "meta", wire)
            for mnum, mwire, ma, mb in fields(data, a, b, "snapshot meta"):
                if mnum in (1, 2):
                    if mwire != VARINT:
                        wrong_wire("snapshot meta", ("index", "term")[mnum - 1], mwire)
                    if ma > MAX_INT:
                        bad("snapshot meta: index or term above 2**63")
                    if mnum == 1:
                        index = ma
                    else:
                        term = ma
                elif mnum == 3:
                    if mwire != LEN:
                        wrong_wire("snapshot meta", "conf", mwire)
                    conf = _decode_conf(data, ma, mb, limits)
        elif number == 2:
            if wire != LEN:
                wrong_wire("snapshot", "data", wire)
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
        blob, blob_size = _entry_parts(m.entries, limits)
        key = _MSG_ENTRIES + uvarint(blob_size)
        parts.append(key)
        parts.extend(blob)
        size += len(key) + blob_size
    if m.snapshot is not None:
        snap = _encode_snapshot(m.snapshot, limits)
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


def encode_message_at(m: Message, sender: str, limits: Limits, i: int) -> tuple[list[bytes], int]:
    """:func:`_encode_message`, with any failure reported as an :class:`EncodeError` naming ``i``."""
    try:
        return _encode_message(m, sender, limits)
    except EncodeError as exc:
        raise EncodeError(f"message {i}: {exc}") from exc
    except (TypeError, ValueError, AttributeError, OverflowError, struct.error) as exc:
        raise EncodeError(f"message {i} cannot be encoded: {type(exc).__name__}: {exc}") from exc


def decode_message(data: bytes, pos: int, end: int, sender: str, limits: Limits) -> Message:
    """Decode the RaftMessage in ``data[pos:end]``; an empty ``frm`` becomes ``sender``."""
    ints = [0] * _MSG_INTS  # varint fields by number: 1 type, 4-7, 8 reject, 9, 11, 12 transfer, 15, 16
    to = frm = ""
    context = b""
    entries: tuple[Entry, ...] = ()
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
            elif number == 14:
                if snapshot is not None:
                    bad("message has two snapshots")
                snapshot = _decode_snapshot(data, a, b, limits)
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
    cluster_id: str, sender: str, messages: Iterable[Message], *, limits: Limits = DEFAULT_LIMITS
) -> list[bytes]:
    """Encode ``messages`` into as few PeerFrames as ``limits`` allow, keeping their order.

    With no messages, returns one frame that carries only the ids (a hello or keepalive).
    Raises :class:`EncodeError` if a message cannot be encoded or alone exceeds
    ``limits.max_frame_bytes``.
    """
    head = frame_head(cluster_id, sender, limits)
    frames: list[bytes] = []
    parts: list[bytes] = [head]
    size = len(head)
    count = 0
    for i, m in enumerate(messages):
        body, body_size = encode_message_at(m, sender, limits, i)
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


def decode_frame(data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> Frame:
    """Decode a PeerFrame; raises :class:`ProtocolError` (and nothing else) if it is malformed.

    Checking ``cluster_id`` against the local one, and ``sender`` against the stream's peer, is
    the caller's business.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    if len(data) > limits.max_frame_bytes:
        bad(f"frame is {len(data)} bytes, over the limit of {limits.max_frame_bytes}")
    try:
        return _decode_frame(data, limits)
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"malformed frame: {type(exc).__name__}: {exc}") from exc


def _decode_frame(data: bytes, limits: Limits) -> Frame:
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
            messages.append(decode_message(data, a, b, sender, limits))
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
