"""Hypothesis strategies for core messages, and a reference converter built on the generated code.

The converter (``to_pb``/``from_pb``) uses betterproto's generated classes, independently of the
hand-written codec, so tests can check that both agree on the wire.
"""

from __future__ import annotations

import betterproto
from hypothesis import strategies as st

from phalanx_aio._proto.phalanx import v1 as pb
from phalanx_aio.core.types import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)
from phalanx_aio.transport.codec import MAX_INT

ids = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=12)
small_ids = st.sampled_from(["n1", "n2", "n3", "n4", "n5", "é", "ノード"])
node_ids = st.one_of(small_ids, ids)
wire_ints = st.one_of(st.integers(0, 300), st.integers(0, MAX_INT), st.just(MAX_INT))
payloads = st.binary(max_size=48)

entries = st.builds(Entry, term=wire_ints, index=wire_ints, type=st.sampled_from(EntryType), data=payloads)


@st.composite
def conf_states(draw: st.DrawFn) -> ConfState:
    members = draw(st.lists(node_ids, unique=True, max_size=7))
    split = draw(st.integers(0, len(members)))
    voters, learners = members[:split], members[split:]
    # Sometimes joint: the outgoing half shares some voters and has some of its own.
    outgoing: list[str] = []
    if voters and draw(st.booleans()):
        own = [n for n in draw(st.lists(node_ids, unique=True, max_size=3)) if n not in members]
        outgoing = [v for v in voters if draw(st.booleans())] + own
        members = members + own
    with_ctx = draw(st.permutations(members))[: draw(st.integers(0, len(members)))]
    contexts = tuple((nid, draw(payloads)) for nid in with_ctx)
    gone = draw(st.lists(node_ids.filter(lambda n: n not in members), unique=True, max_size=3))
    removed = tuple(sorted((nid, draw(wire_ints)) for nid in gone))
    return ConfState(
        voters=frozenset(voters),
        learners=frozenset(learners),
        contexts=contexts,
        voters_outgoing=frozenset(outgoing),
        removed=removed,
    )


snapshots = st.builds(
    Snapshot,
    meta=st.builds(SnapshotMeta, index=wire_ints, term=wire_ints, conf=conf_states()),
    data=st.binary(max_size=300),
)


@st.composite
def messages(draw: st.DrawFn, sender: str | None = None) -> Message:
    frm = draw(st.one_of(st.just(sender), node_ids) if sender else node_ids)
    return Message(
        type=draw(st.sampled_from(MessageType)),
        to=draw(node_ids),
        frm=frm,
        term=draw(wire_ints),
        log_term=draw(wire_ints),
        index=draw(wire_ints),
        entries=tuple(draw(st.lists(entries, max_size=6))),
        commit=draw(wire_ints),
        reject=draw(st.booleans()),
        reject_hint=draw(wire_ints),
        snapshot=draw(st.one_of(st.none(), snapshots)),
        context=draw(payloads),
        seq=draw(wire_ints),
        transfer=draw(st.booleans()),
        election_timeout=draw(wire_ints),
        election_delay=draw(wire_ints),
    )


@st.composite
def frames(draw: st.DrawFn) -> tuple[str, str, list[Message]]:
    cluster_id = draw(st.one_of(st.just("c1"), ids))
    sender = draw(node_ids)
    return cluster_id, sender, draw(st.lists(messages(sender), max_size=5))


# --- reference conversion through the generated classes --------------------------------------


def _pb_entries(ents: tuple[Entry, ...]) -> bytes:
    # The blob layout is not protobuf; the reference re-implements it from the documented layout.
    import struct

    if not ents:
        return b""
    head = struct.pack("<BI", 1, len(ents))
    table = b"".join(struct.pack("<QQBI", e.term, e.index, e.type, len(e.data)) for e in ents)
    return head + table + b"".join(e.data for e in ents)


def _entries_from_blob(blob: bytes) -> tuple[Entry, ...]:
    import struct

    if not blob:
        return ()
    _, count = struct.unpack_from("<BI", blob)
    pos, out, recs = 5, [], []
    for _ in range(count):
        recs.append(struct.unpack_from("<QQBI", blob, pos))
        pos += 21
    for term, index, etype, length in recs:
        out.append(Entry(term, index, EntryType(etype), blob[pos : pos + length]))
        pos += length
    return tuple(out)


def to_pb(m: Message, sender: str) -> pb.RaftMessage:
    out = pb.RaftMessage(
        type=pb.MessageType(m.type.value),
        to=m.to,
        frm="" if m.frm == sender else m.frm,
        term=m.term,
        log_term=m.log_term,
        index=m.index,
        commit=m.commit,
        reject=m.reject,
        reject_hint=m.reject_hint,
        context=m.context,
        seq=m.seq,
        transfer=m.transfer,
        entries=_pb_entries(m.entries),
        election_timeout=m.election_timeout,
        election_delay=m.election_delay,
    )
    if m.snapshot is not None:
        c = m.snapshot.meta.conf
        out.snapshot = pb.Snapshot(
            meta=pb.SnapshotMeta(
                index=m.snapshot.meta.index,
                term=m.snapshot.meta.term,
                conf=pb.ConfState(
                    voters=sorted(c.voters),
                    learners=sorted(c.learners),
                    contexts=[pb.MemberContext(node_id=n, context=x) for n, x in c.contexts],
                    voters_outgoing=sorted(c.voters_outgoing),
                    removed=[pb.RemovedMember(node_id=n, index=i) for n, i in c.removed],
                ),
            ),
            data=m.snapshot.data,
        )
        out.snapshot._serialized_on_wire = True  # present even when all-default
    return out


def from_pb(p: pb.RaftMessage, sender: str) -> Message:
    snap = None
    if betterproto.serialized_on_wire(p.snapshot):
        meta, conf = p.snapshot.meta, p.snapshot.meta.conf
        snap = Snapshot(
            SnapshotMeta(
                meta.index,
                meta.term,
                ConfState(
                    voters=frozenset(conf.voters),
                    learners=frozenset(conf.learners),
                    contexts=tuple((c.node_id, c.context) for c in conf.contexts),
                    voters_outgoing=frozenset(conf.voters_outgoing),
                    removed=tuple((r.node_id, r.index) for r in conf.removed),
                ),
            ),
            p.snapshot.data,
        )
    return Message(
        type=MessageType(int(p.type)),
        to=p.to,
        frm=p.frm or sender,
        term=p.term,
        log_term=p.log_term,
        index=p.index,
        entries=_entries_from_blob(p.entries),
        commit=p.commit,
        reject=p.reject,
        reject_hint=p.reject_hint,
        snapshot=snap,
        context=p.context,
        seq=p.seq,
        transfer=p.transfer,
        election_timeout=p.election_timeout,
        election_delay=p.election_delay,
    )


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a few bit flips, overwrites, insertions, deletions, truncations or splices."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "splice"]))
        pos = draw(st.integers(0, len(buf)))
        if op == "flip" and buf:
            buf[min(pos, len(buf) - 1)] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and buf:
            buf[min(pos, len(buf) - 1)] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]))
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del buf[pos : pos + draw(st.integers(1, 8))]
        elif op == "truncate":
            del buf[pos:]
        elif op == "splice":
            start = draw(st.integers(0, len(buf)))
            buf[pos:pos] = buf[start : start + draw(st.integers(1, 16))]
    return bytes(buf)
