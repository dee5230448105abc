"""A tiny synchronous network of Raft cores for the core's tests.

Cores are wired through a fake link (a FIFO queue) in the spirit of h11's tests: nothing runs
unless the test says so. ``Network.stabilize()`` repeatedly handles every node's ``Ready``
(persist to an in-memory :class:`Store`, apply, queue the messages) and delivers the queue
until the whole network is quiet. Filters drop messages (one-way cuts, isolation,
partitions, whole message types). A node can crash (its core is discarded) and restart from
what it persisted.

The network also checks State Machine Safety as it goes: every entry applied anywhere must
agree with every entry applied at that index before (on any node, in any life).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from phalanx_aio.core import (
    Config,
    ConfState,
    Entry,
    EntryType,
    HardState,
    InitialState,
    Message,
    MessageType,
    Placement,
    Raft,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
)
from phalanx_aio.core.membership import decode_conf

# The paper's model: no pre-vote, no check quorum (scenario tests switch them on).
PAPER = Config.lan(pre_vote=False, check_quorum=False, eager_commit=True)


def ids(n: int) -> list[str]:
    """Node ids "1".."n"."""
    return [str(i) for i in range(1, n + 1)]


def log_state(
    voters: Iterable[str],
    terms: Sequence[int],
    *,
    term: int | None = None,
    vote: str | None = None,
    commit: int = 0,
) -> InitialState:
    """A persisted state whose log holds empty NORMAL entries of ``terms`` from index 1.

    The configuration comes from a snapshot at index 0, so the log is free of CONF entries
    (handy for the paper's figures). ``term`` defaults to the last log term.
    """
    conf = ConfState(voters=frozenset(voters))
    entries = tuple(Entry(t, i, EntryType.NORMAL, b"") for i, t in enumerate(terms, start=1))
    hs = HardState(term=max(terms, default=0) if term is None else term, vote=vote, commit=commit)
    return InitialState(hard_state=hs, snapshot=Snapshot(SnapshotMeta(0, 0, conf)), entries=entries)


def fmt(m: Message) -> str:
    """A one-line, human readable rendering of a message (used in golden traces)."""
    t = MessageType
    s = f"{m.frm}->{m.to} {m.type.name} t{m.term}"
    if m.type is t.APP:
        ents = " ".join(f"{e.term}/{e.index}" for e in m.entries)
        s += f" prev={m.log_term}/{m.index} [{ents}] commit={m.commit}"
    elif m.type is t.APP_RESP:
        s += f" index={m.index}"
        if m.reject:
            s += f" REJECT hint={m.log_term}/{m.reject_hint}"
    elif m.type in (t.VOTE, t.PRE_VOTE):
        s += f" last={m.log_term}/{m.index}"
        if m.transfer:
            s += " transfer"
    elif m.type in (t.VOTE_RESP, t.PRE_VOTE_RESP):
        s += " REJECT" if m.reject else " granted"
    elif m.type is t.HEARTBEAT:
        s += f" commit={m.commit} seq={m.seq}"
    elif m.type is t.HEARTBEAT_RESP:
        s += f" seq={m.seq}"
    elif m.type is t.SNAP:
        assert m.snapshot is not None
        s += f" snap={m.snapshot.meta.term}/{m.snapshot.meta.index}"
    elif m.type is t.PROP:
        s += f" n={len(m.entries)}"
        if m.index:
            s += f" retry since={m.index}"
    elif m.type is t.PROP_RESP:
        s += f" ctx={m.context.decode()}"
        s += f" REFUSED {m.reject_hint}" if m.reject else f" placed={m.log_term}/{m.index}"
    elif m.type is t.READ_INDEX:
        s += f" ctx={m.context.decode()}"
    elif m.type is t.READ_INDEX_RESP:
        s += f" ctx={m.context.decode()}" + (" REJECT" if m.reject else f" index={m.index}")
    return s


@dataclass
class Store:
    """What one node persisted; survives crashes."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot = field(default_factory=Snapshot)
    entries: list[Entry] = field(default_factory=list)

    def persist(self, rd: Ready) -> None:
        """Step 1 of the Ready contract."""
        if rd.snapshot is not None:
            self.snapshot = rd.snapshot
            self.entries = []  # a received snapshot replaces the whole log
        if rd.entries:
            first = rd.entries[0].index
            base = self.snapshot.meta.index
            assert base < first <= base + len(self.entries) + 1, "entries would leave a gap"
            del self.entries[first - base - 1 :]
            self.entries.extend(rd.entries)
        if rd.hard_state is not None:
            self.hard_state = rd.hard_state

    def compacted(self, snap: Snapshot) -> None:
        """The node took its own snapshot: keep it and drop the entries it covers."""
        self.entries = [e for e in self.entries if e.index > snap.meta.index]
        self.snapshot = snap

    def initial_state(self) -> InitialState:
        return InitialState(self.hard_state, self.snapshot, tuple(self.entries))


class Node:
    """One core, its store and its (trivial) state machine: the list of applied commands."""

    def __init__(self, raft: Raft, store: Store | None = None) -> None:
        self.raft = raft
        self.store = store or Store()
        self.sm: list[tuple[int, bytes]] = []  # (index, data) of applied NORMAL entries
        self.applied_index = raft.log.applied
        self.confs_applied: list[ConfState] = []
        self.read_states: list[ReadState] = []
        self.dropped_reads: list[bytes] = []
        self.placements: list[Placement] = []
        self.readies: list[Ready] = []
        if self.store.snapshot.meta.index:
            self._install(self.store.snapshot)

    @property
    def id(self) -> str:
        return self.raft.id

    def applied(self) -> list[bytes]:
        """The commands applied so far, in order."""
        return [d for _, d in self.sm]

    def _install(self, snap: Snapshot) -> None:
        self.sm = [(i, bytes.fromhex(d)) for i, d in json.loads(snap.data or b"[]")]
        self.applied_index = snap.meta.index

    def snapshot_data(self, index: int) -> bytes:
        assert index <= self.applied_index
        return json.dumps([(i, d.hex()) for i, d in self.sm if i <= index]).encode()


class Network:
    """Cores connected through a lossy-on-demand FIFO link."""

    def __init__(self, config: Config = PAPER, seed: int = 0) -> None:
        self.config = config
        self.seed = seed
        self.nodes: dict[str, Node] = {}
        self.down: set[str] = set()
        self.queue: list[Message] = []
        self.cut: set[tuple[str, str]] = set()
        self.dropped_types: set[MessageType] = set()
        self.drop_if: Callable[[Message], bool] | None = None
        self.trace: list[str] = []
        """Every message handed to the link, formatted; dropped ones are prefixed ``DROP``."""
        self.applied_anywhere: dict[int, Entry] = {}
        self.leader_of_term: dict[int, str] = {}
        self.read_floor: dict[bytes, int] = {}
        """Per read context: the highest index applied anywhere when the read was asked."""
        self.reorder: random.Random | None = None
        """If set, each round delivers the queued messages in a random order."""

    # -- construction ------------------------------------------------------------------

    @classmethod
    def bootstrap(cls, n: int, config: Config = PAPER, seed: int = 0) -> Network:
        """``n`` founding voters "1".."n", all bootstrapped with the same configuration."""
        net = cls(config, seed)
        for nid in ids(n):
            net.nodes[nid] = Node(Raft.bootstrap(nid, config, net._rng(nid), ids(n)))
        net.stabilize()  # persist the bootstrap entry
        return net

    @classmethod
    def from_states(cls, states: dict[str, InitialState], config: Config = PAPER, seed: int = 0) -> Network:
        """Nodes started from given persisted states."""
        net = cls(config, seed)
        for nid, st in states.items():
            net.add(nid, st)
        return net

    def _rng(self, nid: str, life: int = 0) -> random.Random:
        return random.Random(f"{self.seed}/{nid}/{life}")

    def add(self, nid: str, state: InitialState | None = None, config: Config | None = None) -> Node:
        """Start a node from ``state`` (empty: a new node joining an existing cluster)."""
        state = state or InitialState()
        store = Store(state.hard_state, state.snapshot, list(state.entries))
        node = Node(Raft(nid, config or self.config, self._rng(nid), state), store)
        self.nodes[nid] = node
        self.down.discard(nid)
        return node

    def raft(self, nid: str) -> Raft:
        return self.nodes[nid].raft

    def __getitem__(self, nid: str) -> Raft:
        return self.nodes[nid].raft

    # -- faults ------------------------------------------------------------------------

    def isolate(self, nid: str) -> None:
        """Cut every link to and from ``nid``."""
        for other in self.nodes:
            if other != nid:
                self.cut.add((nid, other))
                self.cut.add((other, nid))

    def partition(self, *groups: Iterable[str]) -> None:
        """Only nodes in the same group can talk."""
        sets = [set(g) for g in groups]
        for a in self.nodes:
            for b in self.nodes:
                if a != b and not any(a in s and b in s for s in sets):
                    self.cut.add((a, b))

    def cut_one_way(self, frm: str, to: str) -> None:
        self.cut.add((frm, to))

    def heal(self) -> None:
        self.cut.clear()
        self.dropped_types.clear()
        self.drop_if = None

    def crash(self, nid: str) -> None:
        """Discard ``nid``'s core (what it did not persist is lost); drop its traffic."""
        self.down.add(nid)

    def restart(self, nid: str, life: int = 1, config: Config | None = None) -> Node:
        """Rebuild ``nid`` from its store (a fresh core and a state machine from the snapshot)."""
        old = self.nodes[nid]
        raft = Raft(nid, config or self.config, self._rng(nid, life), old.store.initial_state())
        node = Node(raft, old.store)
        self.nodes[nid] = node
        self.down.discard(nid)
        return node

    # -- driving -----------------------------------------------------------------------

    def handle_ready(self, nid: str) -> list[Message]:
        """Handle one Ready of ``nid`` per the contract; return its messages (not sent)."""
        node = self.nodes[nid]
        raft = node.raft
        rd = raft.ready()
        node.readies.append(rd)
        node.store.persist(rd)
        if rd.snapshot is not None:
            node._install(rd.snapshot)
        for e in rd.committed_entries:
            assert e.index == node.applied_index + 1, f"{nid} applies {e.index} after {node.applied_index}"
            seen = self.applied_anywhere.setdefault(e.index, e)
            assert seen == e, f"safety: {nid} applies {e} but {seen} was applied at that index"
            node.applied_index = e.index
            if e.type is EntryType.NORMAL:
                node.sm.append((e.index, e.data))
            elif e.type is EntryType.CONF:
                node.confs_applied.append(decode_conf(e.data)[1])
        for rs in rd.read_states:
            # Linearizability: a read must see every write applied (so maybe acknowledged)
            # anywhere before it was asked.
            floor = self.read_floor.get(rs.context, 0)
            assert rs.index >= floor, f"stale read {rs} at {nid}: {floor} was applied before it began"
        node.read_states.extend(rd.read_states)
        node.dropped_reads.extend(rd.dropped_reads)
        node.placements.extend(rd.placements)
        raft.advance(rd)
        return list(rd.messages)

    def collect(self, nid: str) -> list[Message]:
        """Handle every pending Ready of ``nid``; return the messages."""
        out: list[Message] = []
        while self.nodes[nid].raft.has_ready():
            out.extend(self.handle_ready(nid))
        return out

    def allowed(self, m: Message) -> bool:
        return not (
            m.frm in self.down
            or m.to in self.down
            or m.to not in self.nodes
            or (m.frm, m.to) in self.cut
            or m.type in self.dropped_types
            or (self.drop_if is not None and self.drop_if(m))
        )

    def send(self, msgs: Iterable[Message]) -> None:
        """Put messages on the link (filters apply at delivery)."""
        self.queue.extend(msgs)

    def deliver(self, m: Message) -> bool:
        """Step one message into its destination if the filters allow it."""
        ok = self.allowed(m)
        self.trace.append(fmt(m) if ok else "DROP " + fmt(m))
        if ok:
            self.nodes[m.to].raft.step(m)
            self._note_leader(m.to)
        return ok

    def _note_leader(self, nid: str) -> None:
        """Election Safety: at most one leader per term, ever."""
        r = self.nodes[nid].raft
        if r.is_leader:
            other = self.leader_of_term.setdefault(r.term, nid)
            assert other == nid, f"two leaders in term {r.term}: {other} and {nid}"

    def pump(self) -> bool:
        """One round: handle every live node's Ready, then deliver everything queued.
        Returns True if anything happened."""
        busy = False
        for nid in sorted(self.nodes):
            if nid not in self.down and self.nodes[nid].raft.has_ready():
                busy = True
                self.send(self.collect(nid))
        queue, self.queue = self.queue, []
        if self.reorder is not None:
            self.reorder.shuffle(queue)
        for m in queue:
            busy = True
            self.deliver(m)
        return busy

    def stabilize(self, max_rounds: int = 500) -> None:
        """Pump until no node has anything to do and no message is in flight."""
        for _ in range(max_rounds):
            if not self.pump():
                return
        raise AssertionError("network did not stabilize (livelock?)")

    def tick(self, nid: str, n: int = 1) -> None:
        for _ in range(n):
            self.nodes[nid].raft.tick()
            self._note_leader(nid)

    def tick_all(self, n: int = 1, stabilize: bool = True) -> None:
        """Tick every live node ``n`` times (stabilizing after each tick by default)."""
        for _ in range(n):
            for nid in sorted(self.nodes):
                if nid not in self.down:
                    self.tick(nid)
            if stabilize:
                self.stabilize()

    def campaign(self, nid: str, transfer: bool = False) -> None:
        """``nid`` starts an election (as a leadership transfer's target if ``transfer``: even
        nodes that just restarted grant it); run it to completion."""
        self.nodes[nid].raft.campaign(transfer=transfer)
        self._note_leader(nid)
        self.stabilize()

    def read(self, nid: str, ctx: bytes) -> None:
        """Ask ``nid`` for a read index, recording what it must at least return."""
        self.read_floor[ctx] = max(self.applied_anywhere, default=0)
        self.nodes[nid].raft.read_index(ctx)

    def propose(self, nid: str, *data: bytes) -> None:
        self.nodes[nid].raft.propose_many(list(data))
        self.stabilize()

    def compact(self, nid: str, index: int) -> Snapshot:
        node = self.nodes[nid]
        snap = node.raft.compact(index, node.snapshot_data(index))
        node.store.compacted(snap)
        return snap

    # -- queries -----------------------------------------------------------------------

    def leaders(self) -> list[str]:
        return sorted(n for n, node in self.nodes.items() if n not in self.down and node.raft.is_leader)

    def leader(self) -> str:
        (lead,) = self.leaders()
        return lead

    def roles(self) -> dict[str, Role]:
        return {n: node.raft.role for n, node in self.nodes.items()}

    def applied(self, nid: str) -> list[bytes]:
        return self.nodes[nid].applied()

    def log_terms(self, nid: str) -> list[int]:
        """Terms of ``nid``'s log entries from its first index on."""
        return [e.term for e in self.nodes[nid].raft.log.entries]

    def take_trace(self) -> list[str]:
        out, self.trace = self.trace, []
        return out


def by_type(msgs: Iterable[Message], *types: MessageType) -> list[Message]:
    return [m for m in msgs if m.type in types]


# -- driving a lone core by hand (the paper tests' style) -----------------------------------


def drain(r: Raft) -> list[Message]:
    """Handle a lone core's pending Ready (nothing persisted anywhere); return its messages."""
    out: list[Message] = []
    while r.has_ready():
        rd = r.ready()
        r.advance(rd)
        out.extend(rd.messages)
    return out


def new_raft(nid: str = "1", n: int = 3, config: Config = PAPER, seed: int = 0) -> Raft:
    """A bootstrapped core of an ``n``-voter cluster, its bootstrap Ready already handled."""
    r = Raft.bootstrap(nid, config, random.Random(seed), ids(n))
    drain(r)
    return r


def elect(r: Raft) -> list[Message]:
    """Make ``r`` leader by feeding it granted votes (no pre-vote); return what it sent."""
    r.campaign(transfer=not r.cfg.pre_vote)
    for peer in sorted(r.conf.voters - {r.id}):
        if r.is_leader:
            break
        r.step(Message(MessageType.VOTE_RESP, r.id, peer, r.term))
    assert r.is_leader
    return drain(r)
