"""Snapshots and configurations on the peer wire (private): the ``Snapshot``, ``SnapshotMeta``,
``ConfState``, ``MemberContext`` and ``RemovedMember`` messages of ``protos/phalanx/v1/raft.proto``,
written and read by hand like the rest of :mod:`phalanx_aio.transport.codec`, which calls
:func:`encode_snapshot` and :func:`decode_snapshot` for the ``snapshot`` field of a SNAP message.

The cold path: only SNAP messages carry them. The same rules hold as in the codec: a decoder
raises only :class:`~phalanx_aio.errors.ProtocolError`, an encoder only ``EncodeError``.
"""

from __future__ import annotations

from typing import Final

from phalanx_aio._entry_batch import MAX_INT
from phalanx_aio._protowire import (
    LEN,
    MAX_FIELDS,
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
from phalanx_aio.core.types import ConfState, Snapshot, SnapshotMeta
from phalanx_aio.transport._limits import Limits

__all__ = ["decode_snapshot", "encode_snapshot"]

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


def encode_snapshot(snap: Snapshot, limits: Limits) -> bytes:
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


def decode_snapshot(data: bytes, pos: int, end: int, limits: Limits) -> Snapshot:
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
