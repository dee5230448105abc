"""Membership as :class:`~phalanx_aio.RaftNode` drives it (private): starting and deferring
configuration changes, choosing a transfer target, applying committed changes, telling the
transport its peers and the members removed, and believing a peer that says this node was
removed.

A mixin, like :mod:`phalanx_aio.node._proposals`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from phalanx_aio.core.membership import ConfChange, decode_conf_changes
from phalanx_aio.core.raft import Raft
from phalanx_aio.core.types import ConfState, Entry, EntryType
from phalanx_aio.errors import NotApplied, NotLeader, PhalanxError, ProposalDropped
from phalanx_aio.node._futures import set_exc, set_result
from phalanx_aio.node._state import NodeState
from phalanx_aio.node.events import MembershipChanged, RemovedFromCluster

__all__ = ["MembershipDriver"]


class MembershipDriver(NodeState):
    """Configuration changes, from proposal to the transport's peer list."""

    def _init_membership(self) -> None:
        """No change in progress, nobody removed (called by ``RaftNode.__init__``)."""
        self._conf_waiters: dict[int, tuple[int, asyncio.Future[None]]] = {}
        # Joint changes whose C_old,new is committed, waiting for the entry that leaves it.
        self._leave_waiters: list[asyncio.Future[None]] = []
        self._deferred_conf: list[tuple[ConfChange | tuple[ConfChange, ...], asyncio.Future[Any]]] = []
        self._peers_conf: ConfState | None = None
        self._removed_members: dict[str, int] = {}  # former members -> index of their removal
        self._removed_at: int | None = None  # set once a member says this node was removed

    def _on_removed(self, core: Raft, peer: str, index: int) -> None:
        """Believe ``peer`` unless this node knows a configuration, from ``index`` on, that
        includes it (it was added again), or knows none at all (it is joining)."""
        conf = core.conf
        if self._removed_at is not None or not conf.members():
            return
        if core.confs.last_index >= index and conf.is_member(self.id):
            return
        self._removed_at = index
        self.log.error(
            "%s says this node was removed from the cluster by the change at index %d; it should be "
            "stopped (or added again)",
            peer,
            index,
        )
        if self._listeners:
            self._emit(RemovedFromCluster(self.id, core.term, index, peer))

    def _start_conf_change(
        self, core: Raft, change: ConfChange | tuple[ConfChange, ...], fut: asyncio.Future[Any]
    ) -> None:
        if fut.done():
            return
        try:
            if isinstance(change, ConfChange):
                term, index = core.propose_conf_change(change)
            else:
                term, index = core.propose_joint_change(change)
        except PhalanxError as exc:
            set_exc(fut, exc)
        else:
            self._conf_waiters[index] = (term, fut)

    def _retry_deferred_conf(self, core: Raft) -> None:
        """Start deferred membership changes once the leader can accept them, one at a time;
        fail them at once if this node stopped leading."""
        while self._deferred_conf and (core.ready_for_conf_change or not core.is_leader):
            change, fut = self._deferred_conf.pop(0)
            self._start_conf_change(core, change, fut)

    def _best_transferee(self, core: Raft) -> str:
        candidates = [
            (pr.match, nid) for nid, pr in core.prs.items() if nid != self.id and nid in core.conf.voters
        ]
        if not core.is_leader:
            raise NotLeader(core.leader)
        if not candidates:
            raise ProposalDropped("no other voter to transfer leadership to")
        return max(candidates)[1]

    def _apply_other(self, e: Entry) -> None:
        """Apply a membership change (a new leader's empty entry needs nothing)."""
        if e.type is EntryType.CONF:
            changes, conf = decode_conf_changes(e.data)
            self._note_removals(conf)
            if self._listeners:
                term = self._core.term if self._core is not None else e.term
                voters, learners = tuple(sorted(conf.voters)), tuple(sorted(conf.learners))
                change = changes[0] if changes else None
                outgoing = tuple(sorted(conf.voters_outgoing))
                self._emit(
                    MembershipChanged(
                        self.id, term, e.index, change, voters, learners, tuple(changes), outgoing
                    )
                )
            if not conf.joint:  # a joint configuration was left (by whichever leader)
                for fut in self._leave_waiters:
                    set_result(fut, None)
                self._leave_waiters.clear()
            w = self._conf_waiters.pop(e.index, None)
            if w is not None:
                if w[0] != e.term:
                    set_exc(w[1], NotApplied("membership change overwritten by a new leader"))
                elif conf.joint and self.id in conf.voters:
                    self._leave_waiters.append(w[1])  # done once C_new is committed
                else:
                    set_result(w[1], None)

    def _note_removals(self, conf: ConfState) -> None:
        """Hand the transport the removed members of a committed configuration (one merely
        appended may still be overwritten). They are part of the replicated configuration,
        snapshots included, so every member knows them after any restart."""
        removed = dict(conf.removed)
        if removed == self._removed_members:
            return
        self._removed_members = removed
        if self._transport is not None:
            self._transport.set_removed(removed)

    def _update_peers(self, conf: ConfState) -> None:
        self._peers_conf = conf
        if self._transport is None:
            return
        if not conf.members():
            # A joining node knows no configuration yet: talk to the members it was given.
            self._transport.set_peers(self._initial_peers)
            return
        peers = {nid: conf.context(nid).decode(errors="replace") for nid in conf.members() if nid != self.id}
        self._transport.set_peers(peers)
