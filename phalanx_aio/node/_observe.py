"""The node's events as :class:`~phalanx_aio.RaftNode` produces them (private): the calls that
subscribe to them (listeners, the latency observer, ``while_leader``, ``events``), listeners
called, and the core's term, role and leader observed after every input while someone listens
(see :mod:`phalanx_aio.node.events`).

A mixin, like :mod:`phalanx_aio.node._proposals`.
"""

from __future__ import annotations

import time

from phalanx_aio.core.raft import Raft, Role
from phalanx_aio.errors import ClosedError, LocalError
from phalanx_aio.node._leader_work import EventStream, LeaderFn, LeaderWork
from phalanx_aio.node._state import LatencyObserver, NodeState
from phalanx_aio.node.events import (
    ElectionStarted,
    ElectionWon,
    EventListener,
    LeaderChanged,
    NodeEvent,
    RoleChanged,
    TermChanged,
)

__all__ = ["EventSource"]


class EventSource(NodeState):
    """Subscribing to events, emitting them and observing the core for them."""

    def add_listener(self, listener: EventListener) -> None:
        """Call ``listener(event)`` for every :class:`~phalanx_aio.node.events.NodeEvent` from
        now on (elections, leader and term changes, membership changes, snapshots). It runs in
        the node's loop task and must not block; what it raises is logged and ignored."""
        if not callable(listener):
            raise LocalError(f"an event listener must be callable, not {type(listener).__name__}")
        if not self._listeners and self._core is not None:
            # Nobody watched until now: start from the present, report no stale changes.
            self._seen = (self._core.term, self._core.role, self._core.leader)
        self._listeners.append(listener)

    def set_latency_observer(self, observer: LatencyObserver | None) -> None:
        """Call ``observer(kind, seconds)`` with how long each of these took (``None`` stops):

        * ``"propose"``: a :meth:`propose` or :meth:`propose_many` call that succeeded, from
          the call to its result (committed and applied on this node);
        * ``"storage_save"``: one write of entries and hard state to storage, its fsync
          included (in the loop, or in the background writer);
        * ``"apply"``: applying one batch of committed entries to the state machine (one
          loop turn's worth).

        It runs in the node's tasks and must be quick; what it raises is logged and ignored.
        :class:`~phalanx_aio.observability.NodeMetrics` turns these into histograms."""
        if observer is not None and not callable(observer):
            raise LocalError(f"a latency observer must be callable, not {type(observer).__name__}")
        self._latency = observer

    def _report_latency(self, observer: LatencyObserver, kind: str, started: float) -> None:
        try:
            observer(kind, time.perf_counter() - started)
        except Exception:
            self.log.exception("the latency observer raised; ignored")

    def remove_listener(self, listener: EventListener) -> None:
        """Stop calling ``listener``; raises :class:`LocalError` if it was not added."""
        try:
            self._listeners.remove(listener)
        except ValueError:
            raise LocalError("that listener was not added to this node") from None

    def while_leader(
        self,
        fn: LeaderFn,
        *,
        name: str | None = None,
        restart_delay: float = 1.0,
        max_restart_delay: float = 30.0,
    ) -> LeaderWork:
        """Run ``await fn(term)`` whenever this node leads, cancelled as soon as it stops.

        ``fn`` starts when the node becomes the leader of ``term`` (at once if it leads now)
        and is cancelled, from the node's loop in the same turn, when it steps down or hands
        leadership over, or when the node closes; it starts again with the new term whenever
        the node leads again. If ``fn`` returns, it is done for that term; if it raises, the
        error is logged and counted and ``fn`` runs again after ``restart_delay`` seconds,
        doubling up to ``max_restart_delay``, while the node still leads that term.

        The term is a fencing token: two nodes can briefly both run ``fn`` (a deposed leader
        learns of its successor only after a while), the newer one with a higher term. Returns
        a :class:`~phalanx_aio.node.LeaderWork`; ``await work.stop()`` or ``async with`` ends
        it. Call it from the event loop. Raises :class:`ClosedError` once the node is closed.
        """
        self._check_subscribable()
        return LeaderWork(
            self,
            self._subscriptions,
            fn,
            name=name,
            restart_delay=restart_delay,
            max_restart_delay=max_restart_delay,
        )

    def events(self, *, max_queue: int = 1024) -> EventStream:
        """This node's events from now on as an async iterator: ``async for ev in
        node.events()``. At most ``max_queue`` wait for the consumer; beyond, the oldest is
        dropped and counted (:attr:`EventStream.dropped <phalanx_aio.node.EventStream.dropped>`).
        The iteration ends when the node closes. Raises :class:`ClosedError` once it is closed.
        """
        self._check_subscribable()
        return EventStream(self, self._subscriptions, max_queue=max_queue)

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
