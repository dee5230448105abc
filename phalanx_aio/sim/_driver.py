"""The driver of each simulated node (private): what :class:`~phalanx_aio.sim.cluster.Cluster`
does with a core's ``Ready``, as ``RaftNode`` does with a real one (persist, in the foreground
or in the background, then send, then apply), with the checks it makes at each step.

A mixin: ``Cluster`` holds the state, set in its constructor; the event loop, the nodes'
lifecycle and the client actions stay in ``cluster.py``.
"""

from __future__ import annotations

import functools
import heapq
import random
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING

from phalanx_aio.core.config import Config
from phalanx_aio.core.quorum import joint_quorum_index, quorum_size
from phalanx_aio.core.raft import Raft
from phalanx_aio.core.ready import Ready
from phalanx_aio.core.types import Entry, EntryType, HardState, Message
from phalanx_aio.sim.checker import Checker, chain_hash
from phalanx_aio.sim.network import NetworkOptions
from phalanx_aio.sim.nodes import (
    _APP,
    _CANDIDATE,
    _DELIVER,
    _DISK,
    _HEARTBEAT,
    _LEADER,
    _READ_INDEX_RESP,
    _SM,
    _TYPE_NAMES,
    _VOTE_REQS,
    SimNode,
    _Write,
)

__all__ = ["Driver"]


class Driver:
    """Persisting, sending and applying what each core produced, and checking it."""

    nodes: dict[str, SimNode]
    config: Config
    net: NetworkOptions
    rng: random.Random
    checker: Checker | None
    now: float
    tick_ms: float
    snapshot_every: int
    elections: int
    msg_counts: Counter[str]
    msg_bytes: int
    _events: list[tuple[float, int, int, object]]
    _seq: int
    _hb_sent: dict[tuple[str, int, int], float]
    _hb_last: dict[tuple[str, int], int]
    _hb_acks: dict[tuple[str, int, int], dict[str, int]]
    _read_invoked: dict[bytes, float]
    _vote_req: tuple[Message, tuple[int, int]] | None
    on_apply: list[Callable[[SimNode, Entry], None]]
    on_read: list[Callable[[SimNode, bytes, int], None]]
    on_leader: list[Callable[[SimNode, int], None]]
    on_commit: list[Callable[[SimNode, int], None]]
    on_campaign: list[Callable[[SimNode, int], None]]
    on_install: list[Callable[[SimNode, int], None]]
    crash_before_send: list[Callable[[SimNode, Ready], bool]]
    on_write_behind: list[Callable[[SimNode], None]]
    on_dropped: list[Callable[[SimNode, bytes], None]]

    if TYPE_CHECKING:  # defined by Cluster

        def _push(self, at: float, kind: int, payload: object) -> None: ...

        def call_at(self, at: float, fn: Callable[[], None]) -> None: ...

        def crash(self, nid: str) -> None: ...

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
