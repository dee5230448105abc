"""A deterministic cluster of Raft cores in simulated time.

One seed drives everything: election jitter (each core gets its own ``random.Random`` derived
from the seed), message delays, disk delays and faults. Nodes persist to in-memory stores; a
crash discards the core and keeps only what was persisted. A node may write a leader's own
entries in the background, as ``RaftNode`` does (``Ready.send_before_persist``,
``advance(rd, entries_durable=False)``, then ``persisted()`` when the simulated disk is done);
a crash loses the writes still in flight. The :class:`~phalanx_aio.sim.checker.Checker`
judges every event.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import random
import struct
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import cast

from phalanx_aio.core.config import Config
from phalanx_aio.core.membership import ConfChange
from phalanx_aio.core.quorum import joint_quorum_index, quorum_size
from phalanx_aio.core.raft import InitialState, Raft, Role, bootstrap_state
from phalanx_aio.core.ready import Ready
from phalanx_aio.core.types import Entry, EntryType, HardState, Message, MessageType, Snapshot
from phalanx_aio.errors import NotApplied
from phalanx_aio.sim.checker import BudgetExceeded, Checker, chain_hash
from phalanx_aio.sim.network import NetworkOptions

__all__ = ["Cluster", "RaftFactory", "SimNode", "SimStore"]

RaftFactory = Callable[[str, Config, random.Random, InitialState | None], Raft]
_SM = struct.Struct(">QQ")
_TICK, _DELIVER, _CALL, _DISK = 0, 1, 2, 3
_TYPE_NAMES = {t: t.name for t in MessageType}
_LEADER = Role.LEADER
_CANDIDATE = Role.CANDIDATE
_APP = MessageType.APP
_HEARTBEAT = MessageType.HEARTBEAT
_HEARTBEAT_RESP = MessageType.HEARTBEAT_RESP
_READ_INDEX_RESP = MessageType.READ_INDEX_RESP
_VOTE_REQS = {MessageType.VOTE: MessageType.VOTE_RESP, MessageType.PRE_VOTE: MessageType.PRE_VOTE_RESP}


@dataclass(slots=True)
class SimStore:
    """What a node has persisted: it survives crashes. ``chains[i]`` hashes the prefix to
    ``entries[i]``; ``base_chain`` hashes the prefix to the snapshot."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot = field(default_factory=Snapshot)
    entries: list[Entry] = field(default_factory=list)
    chains: list[int] = field(default_factory=list)
    base_chain: int = 0
    drop_vote: bool = False
    """Planted bug for tests: the vote is never persisted."""
    early_hard_state: bool = False
    """Planted driver bug for tests: a hard state is saved at once even while the leader's
    entries it may commit are still being written in the background."""

    def last_index(self) -> int:
        """Index of the last persisted entry."""
        return self.snapshot.meta.index + len(self.entries)

    def holds(self, index: int, term: int) -> bool:
        """True if the persisted log holds ``(term, index)`` (or a snapshot covering it)."""
        off = index - self.snapshot.meta.index
        if off <= 0:
            return True
        return off <= len(self.entries) and self.entries[off - 1].term == term

    def chain_at(self, index: int) -> int:
        """Prefix hash at ``index`` (which must be held)."""
        off = index - self.snapshot.meta.index
        return self.base_chain if off == 0 else self.chains[off - 1]

    def initial_state(self) -> InitialState:
        """What a restarting core loads."""
        return InitialState(self.hard_state, self.snapshot, tuple(self.entries))


@dataclass(slots=True)
class _Write:
    """A leader's own entries handed to storage in the background, not yet durable."""

    seq: int
    entries: tuple[Entry, ...]
    chains: list[int]
    """Prefix hash at each entry (what the store will hold once the write is done)."""
    hard_state: HardState | None
    """Saved with the entries, atomically: its commit index may cover them."""


class SimNode:
    """One simulated server: its persistent store and, while up, its core and state machine.

    The state machine is a digest of every command applied, so nodes can be compared at any
    index and a snapshot is just ``(index, digest)``.
    """

    def __init__(self, node_id: str) -> None:
        self.id = node_id
        self.store = SimStore()
        self.core: Raft | None = None
        self.incarnation = 0
        self.applied_index = 0
        self.digest = 0
        self.applied_cmds: dict[int, bytes] = {}
        """Commands applied in this incarnation (not those restored from a snapshot)."""
        self.last_commit_checked = 0
        self.commit_seen = 0
        """Commit index up to which this node's commits were checked for agreement."""
        self.led_term = 0
        """The last term in which this node was seen leading (for :attr:`Cluster.on_leader`)."""
        self.background = False
        """Write a leader's own entries in the background (``advance(entries_durable=False)``)."""
        self.disk_ms: tuple[float, float] = (0.2, 2.0)
        """Range of the simulated time one background write takes."""
        self.pending: deque[_Write] = deque()
        """Background writes not yet durable, oldest first: a crash loses them."""
        self.write_seq = 0
        self.batch_start = 0.0
        self.batch_end = 0.0
        """The last background write batch the disk started (or will start) and finishes."""
        self.campaigned = 0
        """The last term in which this node was seen campaigning (for :attr:`Cluster.on_campaign`)."""

    @property
    def up(self) -> bool:
        """True while the node runs."""
        return self.core is not None


class Cluster:
    """A simulated cluster with an event queue in milliseconds of simulated time.

    ``background_writes`` is the probability that a node writes a leader's own entries in
    the background (drawn per node from the seed); each node's :attr:`SimNode.disk_ms` says
    how long such a write takes."""

    def __init__(
        self,
        node_ids: Sequence[str],
        *,
        seed: int,
        config: Config | None = None,
        network: NetworkOptions | None = None,
        raft_factory: RaftFactory | None = None,
        snapshot_every: int = 0,
        check: bool = True,
        spare_ids: Sequence[str] = (),
        trace: bool = True,
        background_writes: float = 0.0,
    ) -> None:
        self.seed = seed
        self.config = config or Config.lan()
        self.net = network or NetworkOptions()
        self.rng = random.Random(f"phalanx-sim:{seed}")
        self.factory: RaftFactory = raft_factory or Raft
        self.snapshot_every = snapshot_every
        self.checker = Checker() if check else None
        self.now = 0.0
        self.tick_ms = self.config.tick_interval * 1000.0
        self._events: list[tuple[float, int, int, object]] = []
        self._seq = 0
        self._trace = hashlib.blake2b(digest_size=16)
        self._tracing = trace
        """Hash every event into :attr:`trace_hash` (long studies turn it off for speed)."""
        self.events = 0
        self._hb_sent: dict[tuple[str, int, int], float] = {}
        """(leader, incarnation, heartbeat round) -> when it was first sent."""
        self._hb_last: dict[tuple[str, int], int] = {}
        """(leader, incarnation) -> its latest heartbeat round."""
        self._hb_acks: dict[tuple[str, int, int], dict[str, int]] = {}
        """(leader, incarnation, term) -> follower -> highest round it acknowledged."""
        self._read_invoked: dict[bytes, float] = {}
        """Read context -> when the client invoked it (kept: a duplicated request may be
        answered again later)."""
        self._vote_req: tuple[Message, tuple[int, int]] | None = None
        """The vote or pre-vote request being stepped, with the voter's last (index, term)."""
        self.msg_counts: Counter[str] = Counter()
        self.msg_bytes = 0
        self.elections = 0
        self.writes_lost = 0
        """Background writes a crash discarded before they were durable."""
        self.nodes: dict[str, SimNode] = {nid: SimNode(nid) for nid in [*node_ids, *spare_ids]}
        self.founders = list(node_ids)
        if background_writes:
            for n in self.nodes.values():
                n.background = self.rng.random() < background_writes
        self.on_apply: list[Callable[[SimNode, Entry], None]] = []
        self.on_read: list[Callable[[SimNode, bytes, int], None]] = []
        self.on_leader: list[Callable[[SimNode, int], None]] = []
        """Called with ``(node, term)`` the first time a node is seen leading ``term``."""
        self.on_commit: list[Callable[[SimNode, int], None]] = []
        """Called with ``(leader, index)`` when a leader's commit index moves."""
        self.on_campaign: list[Callable[[SimNode, int], None]] = []
        """Called with ``(node, term)`` when a node becomes a candidate in ``term``."""
        self.on_install: list[Callable[[SimNode, int], None]] = []
        """Called with ``(node, index)`` when a node installs a snapshot from its leader."""
        self.crash_before_send: list[Callable[[SimNode, Ready], bool]] = []
        """Asked with ``(node, ready)`` once step 1 of a ``Ready`` is done: if one answers
        True the node crashes there, before sending any of the ``Ready``'s messages."""
        self.on_write_behind: list[Callable[[SimNode], None]] = []
        """Called with the node when it hands entries to a background write."""
        self.on_dropped: list[Callable[[SimNode, bytes], None]] = []
        """Called with ``(node, context)`` for each read a node's core dropped."""
        self.max_events = 0
        """Raise :class:`BudgetExceeded` once this many events ran (0: no bound)."""
        self.clock: Callable[[], float] | None = None
        """A wall clock in seconds (injected: the simulator never reads time itself)."""
        self.deadline = 0.0
        """With :attr:`clock`: raise :class:`BudgetExceeded` once it passes this."""
        for nid in node_ids:
            self._boot(self.nodes[nid], bootstrap=True)
        for nid in spare_ids:
            self._boot(self.nodes[nid], bootstrap=False)

    # ------------------------------------------------------------------ events

    def _push(self, at: float, kind: int, payload: object) -> None:
        self._seq += 1
        heapq.heappush(self._events, (at, self._seq, kind, payload))

    def call_at(self, at: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` at simulated time ``at`` (workloads and fault schedules)."""
        self._push(at, _CALL, fn)

    def step(self) -> bool:
        """Process the next event; False if there is none."""
        events = self._events
        if not events:
            return False
        at, _, kind, payload = heapq.heappop(events)
        self.now = at
        self.events += 1
        if self.events & 1023 == 0:
            self._check_budget()
        if kind == _DELIVER:
            m = cast(Message, payload)
            target = self.nodes.get(m.to)
            if target is not None and target.core is not None:
                if self._tracing:
                    self._trace.update(
                        f"M{at:.3f}{m.frm}{m.to}{m.type}{m.term}{m.index}{len(m.entries)}".encode()
                    )
                core = target.core
                chk = self.checker
                before = core.term
                if m.type in _VOTE_REQS and chk is not None:
                    log = core.log
                    self._vote_req = (m, (log.last_index(), log.last_term()))
                core.step(m)
                if chk is not None:
                    chk.on_step(m.to, m, before, core.term)
                    if m.type is _HEARTBEAT_RESP and m.term == core.term and core.role is _LEADER:
                        acks = self._hb_acks.setdefault((m.to, target.incarnation, m.term), {})
                        acks[m.frm] = max(acks.get(m.frm, 0), m.seq)
                self._drain(target)
                self._vote_req = None
        elif kind == _DISK:
            nid, inc, seq = cast(tuple[str, int, int], payload)
            node = self.nodes[nid]
            if node.core is not None and node.incarnation == inc:
                if self._tracing:
                    self._trace.update(f"D{at:.3f}{nid}{seq}".encode())
                self._disk_done(node, seq)
        elif kind == _TICK:
            nid, inc = cast(tuple[str, int], payload)
            node = self.nodes[nid]
            ticking = node.core
            if ticking is not None and node.incarnation == inc:
                if self._tracing:
                    self._trace.update(f"T{at:.3f}{nid}".encode())
                ticking.tick()
                self._drain(node)
                self._seq += 1
                heapq.heappush(events, (at + self.tick_ms, self._seq, _TICK, payload))
        else:
            fn = cast(Callable[[], None], payload)
            if self._tracing:
                self._trace.update(f"C{at:.3f}".encode())
            fn()
        return True

    def _check_budget(self) -> None:
        if self.max_events and self.events >= self.max_events:
            raise BudgetExceeded(f"{self.events} events (the bound) at {self.now:.0f} simulated ms")
        if self.clock is not None and self.clock() > self.deadline:
            raise BudgetExceeded(
                f"wall-clock budget spent after {self.events} events, at {self.now:.0f} simulated ms"
            )

    def run_for(self, ms: float) -> None:
        """Process events for ``ms`` of simulated time."""
        end = self.now + ms
        events = self._events
        step = self.step
        while events and events[0][0] <= end:
            step()
        self.now = max(self.now, end)

    def run_until(self, pred: Callable[[], bool], timeout_ms: float) -> bool:
        """Process events until ``pred()`` holds (checked after each event) or time runs out."""
        end = self.now + timeout_ms
        while self._events and self._events[0][0] <= end:
            self.step()
            if pred():
                return True
        self.now = max(self.now, end)
        return pred()

    @property
    def trace_hash(self) -> str:
        """Hash of every event processed so far: equal seeds give equal hashes."""
        return self._trace.hexdigest()

    # ------------------------------------------------------------------ nodes

    def _core_rng(self, node: SimNode) -> random.Random:
        return random.Random(f"phalanx-sim:{self.seed}:{node.id}:{node.incarnation}")

    def _boot(self, node: SimNode, *, bootstrap: bool) -> None:
        node.incarnation += 1
        rng = self._core_rng(node)
        if bootstrap:
            state = bootstrap_state(self.founders)
            node.store.hard_state = state.hard_state
            for e in state.entries:
                self._persist_entries(node, [e])
        node.core = self.factory(node.id, self.config, rng, node.store.initial_state())
        snap = node.store.snapshot
        node.applied_index = snap.meta.index
        node.digest = _SM.unpack(snap.data)[1] if snap.data else 0
        node.applied_cmds = {}
        node.last_commit_checked = 0
        node.commit_seen = node.core.log.committed
        phase = self.rng.uniform(0, self.tick_ms)
        self._push(self.now + phase, _TICK, (node.id, node.incarnation))
        self._drain(node)

    def crash(self, nid: str) -> None:
        """Stop ``nid`` at once: everything not persisted is lost, background writes included."""
        node = self.nodes[nid]
        node.core = None
        self.writes_lost += len(node.pending)
        node.pending.clear()
        node.batch_start = node.batch_end = 0.0

    def restart(self, nid: str) -> None:
        """Start ``nid`` again from its store (no-op if it is up)."""
        node = self.nodes[nid]
        if node.core is None:
            self._boot(node, bootstrap=False)

    def start(self, nid: str) -> None:
        """Start a spare node (empty, not yet a member: it waits to be added)."""
        self.restart(nid)

    def live(self) -> list[SimNode]:
        """Nodes that are up."""
        return [n for n in self.nodes.values() if n.core is not None]

    def leaders(self) -> list[SimNode]:
        """Up nodes that believe they lead (possibly stale ones in older terms)."""
        return [n for n in self.live() if n.core is not None and n.core.role is Role.LEADER]

    def leader(self) -> SimNode | None:
        """The up leader with the highest term, if any."""
        best = None
        for n in self.leaders():
            assert n.core is not None
            if best is None or n.core.term > best.core.term:  # type: ignore[union-attr]
                best = n
        return best

    # ------------------------------------------------------------------ client actions

    def propose(self, nid: str, data: bytes) -> tuple[int, int] | None:
        """Propose through ``nid``; returns (term, index) on a leader, None if forwarded.

        Raises :class:`~phalanx_aio.errors.NotApplied` subclasses when refused.
        """
        node = self.nodes[nid]
        if node.core is None:
            raise NotApplied(f"{nid} is down")
        out = node.core.propose(data)
        self._drain(node)
        return out

    def read_index(self, nid: str, ctx: bytes) -> None:
        """Start a ReadIndex read on ``nid`` (answered through ``on_read`` callbacks)."""
        node = self.nodes[nid]
        if node.core is None:
            raise NotApplied(f"{nid} is down")
        self._read_invoked[ctx] = self.now
        node.core.read_index(ctx)
        self._drain(node)

    def conf_change(self, nid: str, change: ConfChange | Sequence[ConfChange]) -> tuple[int, int]:
        """Propose a membership change on leader ``nid``: one change, or several at once
        (joint consensus)."""
        node = self.nodes[nid]
        if node.core is None:
            raise NotApplied(f"{nid} is down")
        if isinstance(change, ConfChange):
            out = node.core.propose_conf_change(change)
        else:
            out = node.core.propose_joint_change(change)
        self._drain(node)
        return out

    def transfer(self, nid: str, target: str) -> None:
        """Ask leader ``nid`` to hand leadership to ``target``."""
        node = self.nodes[nid]
        if node.core is None:
            raise NotApplied(f"{nid} is down")
        node.core.transfer_leadership(target)
        self._drain(node)

    # ------------------------------------------------------------------ the driver loop

    def _drain(self, node: SimNode) -> None:
        core = node.core
        assert core is not None
        while core.has_ready():
            role = core.role
            rd = core.ready()
            background = node.background and rd.send_before_persist and bool(rd.entries)
            done = self._persist(node, rd, role is _LEADER, core.term, background)
            for hook in self.crash_before_send:
                if hook(node, rd):
                    # A crash in the middle of the driver's loop: step 1 done, nothing sent.
                    self.crash(node.id)
                    return
            for m in rd.messages:
                self._send(node, m)
            self._apply(node, rd)
            core.advance(rd, entries_durable=not background)
            for index, term in done:  # background writes this Ready waited for
                core.persisted(index, term)
            if node.core is not core:  # crashed by a callback
                return
            if core.log.committed > node.commit_seen:
                self._check_commits(node, core)
                if core.role is _LEADER:
                    for cb3 in self.on_commit:
                        cb3(node, core.log.committed)
                    if node.core is not core:
                        return
        if core.role is _CANDIDATE and node.campaigned != core.term:
            node.campaigned = core.term
            for cb in self.on_campaign:
                cb(node, core.term)
            return
        if core.role is _LEADER:
            if node.led_term != core.term:
                node.led_term = core.term
                # Only commits this leader makes are judged against its configuration.
                node.last_commit_checked = core.log.committed
                for cb in self.on_leader:
                    cb(node, core.term)
                if node.core is not core:
                    return
            self._check_leader(node, core)

    def _check_commits(self, node: SimNode, core: Raft) -> None:
        chk = self.checker
        log = core.log
        c = log.committed
        if chk is not None:
            for index in range(max(node.commit_seen + 1, log.snap_index), c + 1):
                t = log.term(index)
                if t is not None:
                    chk.on_node_commit(node.id, index, t)
        node.commit_seen = c

    def _check_leader(self, node: SimNode, core: Raft) -> None:
        chk = self.checker
        if chk is None:
            return
        if chk.leaders.get(core.term) != node.id:
            if core.term not in chk.leaders:
                self.elections += 1
            log = core.log
            idx = chk.committed[0]
            chk.on_leader(node.id, core.term, {idx: log.term(idx)}, log.snap_index)
        c = core.log.committed
        if c > node.last_commit_checked:  # in any term: a bug may commit an earlier term's entry
            node.last_commit_checked = c
            t = core.log.term(c)
            assert t is not None
            conf = core.conf
            # A joint configuration (thesis §4.3) commits on a majority of each half.
            for voters in (conf.voters, conf.voters_outgoing):
                if voters:
                    holders = sum(1 for v in voters if v in self.nodes and self.nodes[v].store.holds(c, t))
                    chk.on_commit(node.id, c, t, holders, voters)
            halves = [h for h in (conf.voters, conf.voters_outgoing) if h]
            chk.on_commit_safe(node.id, c, t, self._electable_without(c, t, halves))

    def _electable_without(self, index: int, term: int, halves: Sequence[Collection[str]]) -> str | None:
        """A voter that lacks entry ``(term, index)`` but whose log is at least as up to date
        (§5.4.1) as the stored logs of a majority of each of ``halves`` (the voters, and in a
        joint configuration the outgoing voters too; itself included): it could still be
        elected, after crashes, and overwrite the entry. None if there is none."""
        lasts = {}
        for v in sorted(set().union(*halves)):
            n = self.nodes.get(v)
            if n is not None:
                st = n.store
                last = st.entries[-1].term if st.entries else st.snapshot.meta.term
                lasts[v] = (last, st.last_index())
        for v in sorted(lasts):
            n = self.nodes[v]
            if n.core is not None:
                log = n.core.log
                if log.snap_index >= index or log.term(index) == term:
                    continue
                mine = (log.last_term(), log.last_index())
            elif n.store.holds(index, term):
                continue
            else:
                mine = lasts[v]
            behind = {w for w, last in lasts.items() if last <= mine}
            if all(len(behind & set(half)) >= quorum_size(half) for half in halves):
                return v
        return None

    def _persist(
        self, node: SimNode, rd: Ready, leader: bool, term: int, background: bool
    ) -> list[tuple[int, int]]:
        """Step 1 of ``rd``. Returns the background writes it had to complete first (their
        last ``(index, term)``), to report with ``persisted()`` after ``advance()``."""
        st = node.store
        chk = self.checker
        hs = rd.hard_state
        if hs is not None and st.drop_vote:
            hs = HardState(hs.term, None, hs.commit)
        done: list[tuple[int, int]] = []
        if rd.entries and leader and chk is not None and rd.entries[0].index <= self._handed_last(node):
            chk.on_leader_overwrite(node.id, term, rd.entries[0].index)
        if background:
            # Messages leave now, the entries later; the hard state goes with them (its
            # commit index may cover them), unless the planted driver bug saves it at once.
            self._write_behind(node, rd.entries, None if st.early_hard_state else hs)
            if not st.early_hard_state:
                hs = None
        elif node.pending:
            if (
                rd.entries
                or rd.snapshot is not None
                or (hs is not None and (hs.term, hs.vote) != (st.hard_state.term, st.hard_state.vote))
            ):
                # Storage makes writes durable in order: this one waits for the background ones.
                while node.pending:
                    done.append(self._complete_write(node, node.pending.popleft()))
            elif hs is not None and not st.early_hard_state:
                # Only the commit index moved: it is saved with the last background write.
                node.pending[-1].hard_state = hs
                hs = None
        if not background:
            if rd.snapshot is not None:
                snap = rd.snapshot
                st.snapshot = snap
                st.entries = []
                st.chains = []
                st.base_chain = chk.chains.get((snap.meta.index, snap.meta.term), 0) if chk else 0
            if rd.entries:
                self._persist_entries(node, rd.entries)
        if hs is not None:
            self._save_hard_state(node, hs)
        if chk is not None:
            req = self._vote_req
            for m in rd.messages:
                chk.on_send(node.id, m, st.hard_state.vote, st.hard_state.term)
                if (
                    req is not None
                    and not m.reject
                    and m.type is _VOTE_REQS.get(req[0].type)
                    and m.to == req[0].frm
                    and m.term == req[0].term
                ):
                    r = req[0]
                    chk.on_grant(node.id, r.type.name, r.frm, r.term, (r.index, r.log_term), req[1])
        return done

    def _save_hard_state(self, node: SimNode, hs: HardState) -> None:
        st = node.store
        chk = self.checker
        if chk is not None:
            chk.on_persist_hard_state(node.id, st.hard_state, hs)
            chk.on_loadable(node.id, hs.commit, st.last_index())
        st.hard_state = hs

    # ------------------------------------------------------------------ background writes

    def _handed_last(self, node: SimNode) -> int:
        """Index of the last entry handed to storage (durable or in a background write)."""
        return node.pending[-1].entries[-1].index if node.pending else node.store.last_index()

    def _chain_at(self, node: SimNode, index: int) -> int:
        """Prefix hash at ``index`` in the log this node handed to storage."""
        for w in reversed(node.pending):
            first = w.entries[0].index
            if first <= index <= w.entries[-1].index:
                return w.chains[index - first]
        return node.store.chain_at(index)

    def _write_behind(self, node: SimNode, entries: Sequence[Entry], hs: HardState | None) -> None:
        prev = self._chain_at(node, entries[0].index - 1)
        chains = []
        for e in entries:
            prev = chain_hash(prev, e)
            chains.append(prev)
        node.write_seq += 1
        node.pending.append(_Write(node.write_seq, tuple(entries), chains, hs))
        if self.now >= node.batch_start:
            # The disk is idle or busy with a batch already started: a new batch follows it.
            # (Otherwise this write joins the batch waiting to start, as a writer task would.)
            node.batch_start = max(self.now, node.batch_end)
            node.batch_end = node.batch_start + self.rng.uniform(*node.disk_ms)
        self._push(node.batch_end, _DISK, (node.id, node.incarnation, node.write_seq))
        for cb in self.on_write_behind:
            cb(node)

    def _complete_write(self, node: SimNode, w: _Write) -> tuple[int, int]:
        self._persist_entries(node, w.entries)
        if w.hard_state is not None:
            self._save_hard_state(node, w.hard_state)
        last = w.entries[-1]
        return last.index, last.term

    def _disk_done(self, node: SimNode, seq: int) -> None:
        """The simulated disk finished background write ``seq`` (and every earlier one)."""
        done = []
        while node.pending and node.pending[0].seq <= seq:
            done.append(self._complete_write(node, node.pending.popleft()))
        core = node.core
        assert core is not None
        for index, term in done:
            core.persisted(index, term)
        self._drain(node)

    def _persist_entries(self, node: SimNode, entries: Sequence[Entry]) -> None:
        st = node.store
        chk = self.checker
        keep = entries[0].index - st.snapshot.meta.index - 1
        del st.entries[keep:]
        del st.chains[keep:]
        prev = st.chains[-1] if st.chains else st.base_chain
        for e in entries:
            prev = chain_hash(prev, e)
            st.entries.append(e)
            st.chains.append(prev)
            if chk is not None:
                chk.on_persist_entry(node.id, e, prev)

    def _confirm_read(self, node: SimNode, core: Raft, ctx: bytes) -> None:
        """Judge a read this leader answers against the heartbeat rounds a quorum acknowledged."""
        chk = self.checker
        conf = core.conf
        voters = conf.voters
        invoked = self._read_invoked.get(ctx)
        alone = len(voters) <= 1 and not conf.joint
        if chk is None or invoked is None or alone or core.role is not _LEADER:
            return
        inc = node.incarnation
        acks = dict(self._hb_acks.get((node.id, inc, core.term), {}))
        acks[node.id] = self._hb_last.get((node.id, inc), 0)
        confirmed = self._hb_sent.get((node.id, inc, joint_quorum_index(voters, conf.voters_outgoing, acks)))
        cfg = self.config
        lease = 0.0
        if cfg.read_mode == "lease":
            ticks = cfg.rtt_min_election_ticks if cfg.rtt_aware else cfg.election_ticks
            lease = (ticks - cfg.lease_margin_ticks) * self.tick_ms
        chk.on_read_confirmed(node.id, core.term, self.now, invoked, confirmed, lease)

    def _send(self, node: SimNode, m: Message) -> None:
        if m.type is _HEARTBEAT and self.checker is not None:
            self._hb_sent.setdefault((m.frm, node.incarnation, m.seq), self.now)
            self._hb_last[(m.frm, node.incarnation)] = m.seq
        elif m.type is _READ_INDEX_RESP and not m.reject and node.core is not None:
            self._confirm_read(node, node.core, m.context)
        self.msg_counts[_TYPE_NAMES[m.type]] += 1
        if m.entries:
            self.msg_bytes += sum(len(e.data) for e in m.entries)
        for delay in self.net.deliveries(self.rng, m.frm, m.to):
            self._seq += 1
            heapq.heappush(self._events, (self.now + delay, self._seq, _DELIVER, m))
        if m.type is _APP and self.net.reslice and self.rng.random() < self.net.reslice:
            self._reslice(node, m)

    def _reslice(self, node: SimNode, m: Message) -> None:
        """Send ``m``'s destination an earlier slice of the leader's log (see
        :attr:`NetworkOptions.reslice`)."""
        core = node.core
        if core is None or not core.is_leader:
            return
        log = core.log
        lo = max(log.snap_index, m.index - 8)
        if m.index < lo:
            return
        prev = self.rng.randint(lo, m.index)
        prev_term = log.term(prev)
        end = min(prev + self.rng.randint(1, 3), log.last_index())
        if prev_term is None or end <= prev:
            return
        entries = tuple(log.entries[prev - log.snap_index : end - log.snap_index])
        s = Message(
            _APP,
            m.to,
            m.frm,
            core.term,
            log_term=prev_term,
            index=prev,
            entries=entries,
            commit=log.committed,
        )
        self.msg_counts["APP (reslice)"] += 1
        for delay in self.net.deliveries(self.rng, s.frm, s.to):
            self._seq += 1
            heapq.heappush(self._events, (self.now + delay, self._seq, _DELIVER, s))

    def _apply(self, node: SimNode, rd: Ready) -> None:
        chk = self.checker
        core = node.core
        assert core is not None
        if rd.snapshot is not None:
            idx, digest = _SM.unpack(rd.snapshot.data)
            node.applied_index, node.digest = idx, digest
            for cb0 in self.on_install:
                cb0(node, idx)
        for e in rd.committed_entries:
            if e.index != node.applied_index + 1 and chk is not None:
                chk.fail("apply in order", f"{node.id} applied {e.index} after {node.applied_index}")
            node.applied_index = e.index
            if e.type is EntryType.NORMAL:
                node.digest = chain_hash(node.digest, e)
                node.applied_cmds[e.index] = e.data
            if chk is not None:
                chk.on_apply(node.id, e.index, e.term, self._chain_at(node, e.index), node.digest)
            for cb in self.on_apply:
                cb(node, e)
        for rs in rd.read_states:
            if core.role is _LEADER:
                self._confirm_read(node, core, rs.context)
            for cb2 in self.on_read:
                cb2(node, rs.context, rs.index)
        for ctx in rd.dropped_reads:
            for cb3 in self.on_dropped:
                cb3(node, ctx)
        if self.snapshot_every and node.applied_index - core.log.snap_index >= self.snapshot_every:
            # Entries up to applied_index are applied once this Ready is advanced; compact then.
            self.call_at(self.now, functools.partial(self._snapshot, node, core))

    def _snapshot(self, node: SimNode, core: Raft) -> None:
        if node.core is not core or node.applied_index <= core.log.snap_index:
            return
        index = node.applied_index
        if index != core.log.applied or index >= core.log.unstable:
            return  # not applied yet, or not durable here yet (a background write)
        snap = core.compact(index, _SM.pack(index, node.digest))
        st = node.store
        drop = index - st.snapshot.meta.index
        st.base_chain = st.chains[drop - 1]
        del st.entries[:drop]
        del st.chains[:drop]
        st.snapshot = snap

    # ------------------------------------------------------------------ network shortcuts

    def disconnect(self, nid: str) -> None:
        """Cut ``nid`` off from every other node (both directions)."""
        self.net.isolate(nid, self.nodes)

    def connect(self, nid: str) -> None:
        """Restore every link of ``nid``."""
        self.net.reconnect(nid)

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """Split the nodes into groups that cannot talk to each other."""
        self.net.partition([list(g) for g in groups])

    def heal(self) -> None:
        """Remove every partition."""
        self.net.heal()
