"""The node's events as :class:`~phalanx_aio.RaftNode` produces them (private): listeners called,
and the core's term, role and leader observed after every input while someone listens (see
:mod:`phalanx_aio.node.events`).

A mixin, like :mod:`phalanx_aio.node._proposals`.
"""

from __future__ import annotations

from phalanx_aio.core.raft import Raft, Role
from phalanx_aio.errors import ClosedError
from phalanx_aio.node._state import NodeState
from phalanx_aio.node.events import (
    ElectionStarted,
    ElectionWon,
    LeaderChanged,
    NodeEvent,
    RoleChanged,
    TermChanged,
)

__all__ = ["EventSource"]


class EventSource(NodeState):
    """Emitting events and observing the core for them."""

    def _check_subscribable(self) -> None:
        if self._closed or self._failure is not None or self._subscriptions.closed:
            raise ClosedError(f"node {self.id} is closed")

    def _leader_term(self) -> int | None:
        """The term this node leads, or ``None`` (not the leader, closed or stopped)."""
        core = self._core
        if core is None or self._closed or self._failure is not None or not core.is_leader:
            return None
        return core.term

    def _emit(self, event: NodeEvent) -> None:
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception:
                self.log.exception("event listener %r failed on %r", listener, event)

    def _observe(self, core: Raft) -> None:
        """Report how the core's term, role and leader changed since the last observation
        (called after every input while someone listens)."""
        term, role, leader = core.term, core.role, core.leader
        seen_term, seen_role, seen_leader = self._seen
        if term == seen_term and role is seen_role and leader == seen_leader:
            return
        self._seen = (term, role, leader)
        if term != seen_term:
            self._emit(TermChanged(self.id, term, seen_term))
            if core.vote == self.id:  # a node votes for itself only in its own campaign
                self._emit(ElectionStarted(self.id, term))
        if role is not seen_role:
            self._emit(RoleChanged(self.id, term, role.value, seen_role.value))
            if role is Role.LEADER:
                self._emit(ElectionWon(self.id, term))
        if leader != seen_leader:
            self._emit(LeaderChanged(self.id, term, leader, seen_leader))
