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

import hashlib
import heapq
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import cast

from phalanx_aio.core.config import Config
from phalanx_aio.core.membership import ConfChange
from phalanx_aio.core.raft import InitialState, Raft, Role, bootstrap_state
from phalanx_aio.core.ready import Ready
from phalanx_aio.core.types import Entry, Message
from phalanx_aio.errors import NotApplied
from phalanx_aio.sim._driver import Driver
from phalanx_aio.sim.checker import BudgetExceeded, Checker
from phalanx_aio.sim.network import NetworkOptions
from phalanx_aio.sim.nodes import (
    _CALL,
    _DELIVER,
    _DISK,
    _HEARTBEAT_RESP,
    _LEADER,
    _SM,
    _TICK,
    _VOTE_REQS,
    SimNode,
    SimStore,
)

__all__ = ["Cluster", "RaftFactory", "SimNode", "SimStore"]

RaftFactory = Callable[[str, Config, random.Random, InitialState | None], Raft]


class Cluster(Driver):
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
