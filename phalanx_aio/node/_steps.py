"""What the loop of :class:`~phalanx_aio.RaftNode` does with each queued item and with each
``Ready`` of the core (private): persist, then send, then apply (see
:class:`~phalanx_aio.core.ready.Ready` for the contract), and give proposers and readers
their outcomes.

A mixin, like :mod:`phalanx_aio.node._proposals`; the loop itself is ``RaftNode._run``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any

from phalanx_aio.core.raft import Raft
from phalanx_aio.core.types import Entry, EntryType
from phalanx_aio.errors import NotApplied, NotLeader, PhalanxError
from phalanx_aio.node import _envelope
from phalanx_aio.node._futures import set_exc, set_result, settle
from phalanx_aio.node._items import (
    ConfRequest,
    Messages,
    Persisted,
    ReadRequest,
    Removed,
    SnapshotBuilt,
    SnapshotStatus,
    Tick,
    TransferRequest,
    Unreachable,
    WriteFailed,
)
from phalanx_aio.node._membership import MembershipDriver
from phalanx_aio.node._proposals import ProposalRegistry
from phalanx_aio.node._snapshots import LocalSnapshots
from phalanx_aio.node._writer import WRITE_BEHIND_MAX_BYTES, WRITE_BEHIND_MAX_ENTRIES, BackgroundWriter
from phalanx_aio.node.events import SnapshotRestored

__all__ = ["LoopSteps"]

_data_of = attrgetter("data")
_unpack_request = _envelope.unpack_request


class LoopSteps(ProposalRegistry, BackgroundWriter, LocalSnapshots, MembershipDriver):
    """Items and Ready, step by step."""

    def _handle(self, core: Raft, item: Any) -> None:
        """Hand one queued item to the core (``STOP`` and ``WAKE`` aside), by its type."""
        self._item_handlers[type(item)](core, item)

    def _handlers(self) -> dict[type, Callable[[Raft, Any], None]]:
        """What the loop does with each kind of queued item (``STOP`` and ``WAKE`` aside)."""
        return {
            Tick: self._on_tick,
            Messages: self._on_messages,
            ReadRequest: self._on_read,
            ConfRequest: self._on_conf,
            TransferRequest: self._on_transfer,
            Unreachable: lambda core, item: core.report_unreachable(item.peer),
            SnapshotStatus: lambda core, item: core.report_snapshot(item.peer, item.ok),
            Persisted: lambda core, item: core.persisted(item.log_index, item.term),
            WriteFailed: self._on_write_failed,
            Removed: lambda core, item: self._on_removed(core, item.peer, item.log_index),
            SnapshotBuilt: lambda core, item: self._snapshot_built(core, item.log_index, item.result),
        }

    def _on_tick(self, core: Raft, _: Tick) -> None:
        core.tick()
        if self._snap_retry is not None:
            self._retry_snapshot()
        self._sweep_in -= 1
        if self._sweep_in <= 0:  # forget what nobody waits for any more (lost answers)
            self._sweep_in = self.config.election_ticks
            self._forwards.sweep(self._pending)
            self._reads.sweep()

    def _on_messages(self, core: Raft, item: Messages) -> None:
        for m in item.messages:
            try:
                core.step(m)
            except PhalanxError as exc:
                self.log.warning("rejected a message from %s: %s", item.sender, exc)

    def _on_read(self, core: Raft, item: ReadRequest) -> None:
        ctx = item.context
        if self._reads.take(ctx):
            try:
                core.read_index(ctx)
            except NotLeader as exc:
                if not self.config.forward_proposals:
                    self._reads.fail(ctx, exc)
                # else no leader known: asked again once one is (_reissue_reads)
            except NotApplied as exc:
                self._reads.fail(ctx, exc)

    def _on_conf(self, core: Raft, item: ConfRequest) -> None:
        if core.is_leader and not core.ready_for_conf_change:
            # Transient: a new leader's first commit, or the previous change, is on its way.
            self._deferred_conf.append((item.change, item.future))
        else:
            self._start_conf_change(core, item.change, item.future)

    def _on_transfer(self, core: Raft, item: TransferRequest) -> None:
        try:
            target = item.target or self._best_transferee(core)
            core.transfer_leadership(target)
        except PhalanxError as exc:
            set_exc(item.future, exc)
        else:
            set_result(item.future, target)

    def _on_write_failed(self, core: Raft, item: WriteFailed) -> None:
        raise item.error

    async def _process_ready(self, core: Raft) -> None:
        while core.has_ready():
            rd = core.ready()
            # A leader's appends may leave before its own write (thesis §10.2.1): the core
            # counts its own copy once advance() reports it durable.
            early = rd.send_before_persist
            if early:
                if core.conf is not self._peers_conf:
                    self._update_peers(core.conf)  # membership takes effect when appended
                if rd.messages:
                    assert self._transport is not None
                    self._transport.send(rd.messages)
            if rd.snapshot is not None:
                # Restore before saving: a snapshot the state machine cannot read stops the
                # node with its store as it was, rather than saved and unreadable at restart.
                await self._restore(rd.snapshot)
            hs = rd.hard_state
            # A leader's own entries (its term and vote already durable, so only entries and
            # the commit index to write) are written in the background: the loop goes on
            # stepping, ticking and sending meanwhile, and the core counts them once the
            # Persisted item reports them durable.
            behind = early and bool(rd.entries)
            if behind:
                self._write_behind(rd.entries, hs if hs is not None else self._unsaved_hs)
                self._unsaved_hs = None
            elif (
                rd.entries
                or rd.snapshot is not None
                or (hs is not None and (hs.term, hs.vote) != self._saved_tv)
            ):
                await self._drain_writes()  # the store applies writes in order
                await self._persist(rd.entries, hs if hs is not None else self._unsaved_hs, rd.snapshot)
                if hs is not None:
                    self._saved_tv = (hs.term, hs.vote)
                self._unsaved_hs = None
            elif hs is not None:
                # Only the commit index moved: no write, no fsync (it need not be durable; a
                # restart learns it again). The next write carries it along.
                self._unsaved_hs = hs
            if not early:
                if core.conf is not self._peers_conf:
                    self._update_peers(core.conf)  # membership takes effect when appended
                if rd.messages:
                    assert self._transport is not None
                    self._transport.send(rd.messages)
            if rd.snapshot is not None:
                if self._placed:
                    self._covered_by_snapshot(rd.snapshot.meta.index)
                if self._listeners:
                    self._emit(SnapshotRestored(self.id, core.term, rd.snapshot.meta.index, "leader"))
            for placement in rd.placements:  # before applying: the entries may be in this Ready
                self._on_placement(core, placement)
            committed = rd.committed_entries
            if committed:
                if self._placed:
                    self._check_placed(committed)
                self._apply(committed)
            reads = self._reads
            for rs in rd.read_states:
                reads.confirmed(rs.index, rs.context)
            for ctx in rd.dropped_reads:
                reads.fail(ctx, NotLeader(core.leader, "leadership changed before the read was confirmed"))
            core.advance(rd, entries_durable=not behind)
            reads.serve(core.log.applied, self._sm)
            if core.leader is not None and len(self._forwards):
                self._renew_forwards(core)
            if self._deferred_conf:
                self._retry_deferred_conf(core)
            if core.leader != self._last_leader:
                self._last_leader = core.leader
                self._leader_changed.set()
                self.log.info("leader is now %s", core.leader)
                if core.leader is not None and len(self._reads):
                    self._reissue_reads(core)
                if core.leader is not None and self._leaderless:
                    self._propose_leaderless(core)
            log_ = core.log
            if committed:
                self._log_bytes += sum(map(len, map(_data_of, committed)))
            if rd.snapshot is not None:
                self._log_bytes = 0
                self._last_snap_size = len(rd.snapshot.data)
            # Snapshot only entries this node holds durably (the background write may lag).
            if (
                self._entries_due(log_.applied - log_.snap_index) or self._log_bytes >= self._log_bytes_due
            ) and log_.snap_index < log_.applied < log_.unstable:
                self._take_snapshot(core)
            if self._behind_bytes >= WRITE_BEHIND_MAX_BYTES or len(self._behind) >= WRITE_BEHIND_MAX_ENTRIES:
                await self._drain_writes()  # the disk is the bottleneck: stop taking more

    def _apply(self, committed: Sequence[Entry]) -> None:
        """Apply committed entries in order; give this node's proposers their outcomes."""
        sm_apply, pending, own, other = self._sm.apply, self._pending, self._own, self._other
        start, other_start = len(own) + 8, len(other) + 8
        observer = self._latency
        started = time.perf_counter() if observer is not None else 0.0
        for e in committed:
            if e.type is not EntryType.NORMAL:
                self._apply_other(e)
                continue
            data = e.data
            # Envelopes recognised by their prefix, as unwrap would find them: this node's
            # own, then those of the last other proposer seen (a follower's leader).
            mine = data.startswith(own) and len(data) >= start
            if mine:
                command = data[start:]
            elif data.startswith(other) and len(data) >= other_start:
                command = data[other_start:]
            else:
                origin, _, command = _envelope.unwrap(data)
                if origin is not None:
                    other = self._other = _envelope.prefix(origin)
                    other_start = len(other) + 8
            try:
                result: Any = sm_apply(command)
                error: BaseException | None = None
            except Exception as exc:
                result, error = None, exc
                self.log.warning("state machine raised on entry %d: %r", e.index, exc)
            if mine:
                req = _unpack_request(data, start - 8)[0]
                waiter = pending.pop(req, None)
                if waiter is not None:
                    settle(waiter, req, result, error)
        if observer is not None:
            self._report_latency(observer, "apply", started)

    def _reissue_reads(self, core: Raft) -> None:
        """Ask the new leader again for every read not yet confirmed: one forwarded to a
        leader that died is never answered. Reads are side-effect free, so asking twice is
        harmless (the first confirmation serves it; a later one finds it gone)."""
        for ctx in self._reads.unconfirmed():
            try:
                core.read_index(ctx)
            except NotApplied as exc:
                self._reads.fail(ctx, exc)

    def _fail_all(self, exc: BaseException) -> None:
        waiting = list(self._pending.items())
        self._pending.clear()
        for req, w in waiting:
            settle(w, req, None, exc)
        self._carry.clear()
        self._leaderless.clear()
        self._forwards.clear()
        self._reads.fail_all(exc)
        for _, fut3 in list(self._conf_waiters.values()):
            set_exc(fut3, exc)
        self._conf_waiters.clear()
        for fut5 in self._leave_waiters:
            set_exc(fut5, exc)
        self._leave_waiters.clear()
        for _, fut4 in self._deferred_conf:
            set_exc(fut4, exc)
        self._deferred_conf.clear()
        self._leader_changed.set()
