"""The proposal registry of :class:`~phalanx_aio.RaftNode` (private): which proposals wait, where
they were placed in the log, and how each caller learns its outcome (applied, not applied, or
unknown), also when the proposal was forwarded to a leader.

A mixin: :class:`~phalanx_aio.node.raft_node.RaftNode` holds the state, initialised in its
constructor; these methods run only on the node's loop task.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterable, Sequence
from operator import itemgetter
from typing import Any, Final

from phalanx_aio.core.raft import Raft
from phalanx_aio.core.types import Entry, Placement, PlacementOutcome
from phalanx_aio.errors import NotApplied, NotLeader, OutcomeUnknown, PhalanxError, ProposalDropped
from phalanx_aio.node._forwards import Forward, Forwards
from phalanx_aio.node._futures import Batch, settle
from phalanx_aio.node._state import NodeState

__all__ = ["TURN_MAX_BYTES", "TURN_MAX_PROPOSALS", "TURN_MIN_PROPOSALS", "ProposalRegistry"]

# Work bounds of one loop turn, so that a turn (one storage write, one burst of sends) stays
# short and ticks, heartbeats and peer messages keep flowing under any load: at most this many
# proposals (or appended entries received), and bytes of proposals. Within that, the number
# adapts so that a turn takes at most about two ticks (a fifth of the shortest LAN election
# timeout): halved after a longer turn, grown by a quarter after a full one that was quick
# enough (see RaftNode._adapt_turn).
TURN_MAX_PROPOSALS: Final = 4096
TURN_MIN_PROPOSALS: Final = 256
TURN_MAX_BYTES: Final = 512 << 10


class ProposalRegistry(NodeState):
    """Taking proposals into the core, and settling their callers."""

    def _init_proposals(self, node_id: str) -> None:
        """The registry's state, empty (called by ``RaftNode.__init__``)."""
        # This node's proposals forwarded to a leader and not answered yet (see _forwards).
        self._forwards = Forwards()
        # Nodes that answered a forward in this run: they check retries for earlier copies (a
        # leader of an earlier release would append a retry again), and (leader, term) last
        # probed to find out.
        self._answering: set[str] = {node_id}
        self._probed: tuple[str, int] | None = None
        # request id -> future of a proposal made on this node (matched by envelope), or the
        # Batch of a propose_many call. An entry leaves once the request has its outcome.
        self._pending: dict[int, asyncio.Future[Any] | Batch] = {}
        # Proposals (request id, wrapped command) not yet handed to the core, oldest first;
        # the loop takes them in bounded turns (see TURN_MAX_PROPOSALS). _wake_queued: a
        # WAKE item is in the queue (so one item wakes the loop for many proposals).
        self._carry: deque[tuple[int, bytes]] = deque()
        # Proposals handed to the core while no leader was known (an election): request id ->
        # wrapped command, proposed as soon as a leader is known, unless their caller gave up.
        self._leaderless: dict[int, bytes] = {}
        self._wake_queued = False
        self._turn_cap = TURN_MAX_PROPOSALS
        # Proposals of this node placed in the log (appended here as leader, or placed by the
        # leader they were forwarded to) and not yet committed (or found overwritten), one
        # batch per turn or forward: (first index, term, [(request id, data), ...]) at
        # consecutive indexes. Each leaves once committed entries pass its end.
        self._placed: list[tuple[int, int, list[tuple[int, bytes]]]] = []

    def _adapt_turn(self, work: int, seconds: float) -> None:
        """Adjust the proposals taken per turn so that a turn lasts at most about two ticks."""
        cap = self._turn_cap
        if seconds > 2 * self.config.tick_interval:
            self._turn_cap = max(TURN_MIN_PROPOSALS, min(cap, work) // 2)
        elif work >= cap:
            self._turn_cap = min(TURN_MAX_PROPOSALS, cap + cap // 4)

    def _take_proposals(self) -> list[tuple[int, bytes]]:
        """The oldest queued proposals, within one turn's bounds (at least one)."""
        carry = self._carry
        cap = min(self._turn_cap, TURN_MAX_PROPOSALS)
        if len(carry) <= cap and sum(map(len, map(itemgetter(1), carry))) <= TURN_MAX_BYTES:
            out = list(carry)
            carry.clear()
            return out
        out = []
        size = 0
        while carry and len(out) < cap and size < TURN_MAX_BYTES:
            item = carry.popleft()
            out.append(item)
            size += len(item[1])
        return out

    def _propose_batch(self, core: Raft, proposals: list[tuple[int, bytes]]) -> None:
        # Proposals whose caller gave up (timed out, cancelled) go in too: their outcome was
        # unknown to the caller, and filtering them out costs more than applying them.
        ctx = self._forwards.new_context()
        try:
            placed = core.propose_batch(list(map(itemgetter(1), proposals)), context=ctx)
        except NotLeader as exc:
            if not self.config.forward_proposals:
                self._settle_all(proposals, exc)
                return
            # No leader known (an election is on): they wait for one, within their deadline.
            self._leaderless.update(proposals)
            return
        except NotApplied as exc:
            self._settle_all(proposals, exc)
            return
        if placed is not None:  # on the leader: at consecutive indexes, in order
            term, first = placed
            self._placed.append((first, term, proposals))
        else:  # forwarded: the leader answers with a Placement for ctx
            leader = core.leader or ""
            self._forwards.sent(ctx, Forward(proposals, core.log.committed + 1, core.term, leader, False))

    def _propose_leaderless(self, core: Raft) -> None:
        """A leader is known again: propose what waited for one (callers still waiting only:
        the others were told it was not proposed)."""
        held, self._leaderless = self._leaderless, {}
        pending = self._pending
        live = [(req, data) for req, data in held.items() if req in pending]
        if live:
            self._propose_batch(core, live)

    def _not_proposed(self, reqs: Iterable[int]) -> bool:
        """Forget requests that still wait for a leader (their caller gave up); True if every
        one of them did (none was ever proposed)."""
        held = self._leaderless
        return all([held.pop(req, None) is not None for req in reqs])

    def _settle_all(self, proposals: Iterable[tuple[int, bytes]], exc: BaseException) -> None:
        """Fail every proposal in ``proposals`` whose caller still waits with ``exc``."""
        pending = self._pending
        for req, _ in proposals:
            w = pending.pop(req, None)
            if w is not None:
                settle(w, req, None, exc)

    def _on_placement(self, core: Raft, p: Placement) -> None:
        """The leader's answer to one of this node's forwards (or to a retry)."""
        fwd = self._forwards.answered(p.context)
        if fwd is None:
            return
        self._answering.add(fwd.leader)
        outcome = p.outcome
        if outcome is PlacementOutcome.PLACED:
            self._place(core, p.index, p.term, fwd.proposals)
        elif outcome is PlacementOutcome.NOT_LEADER:
            self._forwards.refused(fwd)  # appended nowhere by this attempt: again, next term
        elif outcome is PlacementOutcome.DROPPED:
            self._settle_all(fwd.proposals, ProposalDropped("the leader refused the forwarded proposal"))
        else:
            self._settle_all(
                fwd.proposals,
                OutcomeUnknown(
                    "the leader could not tell whether an earlier copy of the forwarded proposal "
                    "commits (its log is compacted past it); outcome unknown"
                ),
            )

    def _place(self, core: Raft, first: int, term: int, proposals: list[tuple[int, bytes]]) -> None:
        """Proposals sit at consecutive indexes from ``first``, in ``term``: wait for that
        entry to commit, or settle them at once if this node applied past it already."""
        applied = core.log.applied
        if first > applied:
            self._placed.append((first, term, proposals))
            return
        # Applied already: an entry of ours would have settled its caller (by its envelope).
        # Those still waiting found another entry there (overwritten: not applied), or this
        # node got that index in a snapshot (outcome unknown).
        split = min(len(proposals), applied - first + 1)
        for index, (req, _) in enumerate(proposals[:split], first):
            w = self._pending.pop(req, None)
            if w is None:
                continue
            held = core.log.term(index)
            exc: PhalanxError
            if held is not None and held != term and index > core.log.snap_index:
                exc = NotApplied(f"entry {index} was overwritten by a new leader; not applied")
            else:
                exc = OutcomeUnknown(f"entry {index} reached this node in a snapshot; outcome unknown")
            settle(w, req, None, exc)
        if split < len(proposals):
            self._placed.append((first + split, term, proposals[split:]))

    def _renew_forwards(self, core: Raft) -> None:
        """Once a leader of a newer term is known: send again the forwards it must see."""
        forwards, leader, term = self._forwards, core.leader, core.term
        assert leader is not None
        may_retry = leader in self._answering
        if not may_retry and self._probed != (leader, term) and forwards.retries_waiting(term):
            # Retries go only to a leader known to check them for earlier copies: ask it an
            # empty forward first (a leader of an earlier release would not answer it).
            self._probed = (leader, term)
            ctx = forwards.new_context()
            with contextlib.suppress(NotApplied):
                core.propose_batch((), context=ctx)
                forwards.sent(ctx, Forward([], core.log.committed + 1, term, leader, False))
        due = forwards.due(term, may_retry)
        pending = self._pending
        for fwd in due:
            live = [(req, data) for req, data in fwd.proposals if req in pending]
            if not live:
                continue
            if not fwd.retry:  # refused, appended nowhere: forward it as it was
                self._propose_batch(core, live)
                continue
            for item in live:
                ctx = self._forwards.new_context()
                try:
                    core.repropose(item[1], ctx, fwd.since)
                except NotApplied:
                    # No leader after all (it changed within this turn): next term.
                    self._forwards.refused(Forward([item], fwd.since, term, leader, True))
                else:
                    self._forwards.sent(ctx, Forward([item], fwd.since, term, leader, True))

    def _covered_by_snapshot(self, index: int) -> None:
        """A snapshot from the leader replaced this node's log up to ``index``: proposals
        placed there have an unknown outcome (their entries are not applied one by one)."""
        kept = []
        for first, term, proposals in self._placed:
            n = max(0, min(len(proposals), index - first + 1))  # how many the snapshot covers
            if n:
                self._settle_all(
                    proposals[:n],
                    OutcomeUnknown(f"the entries up to {index} arrived in a snapshot; outcome unknown"),
                )
            if n < len(proposals):
                kept.append((first + n, term, proposals[n:]))
        self._placed = kept

    def _check_placed(self, committed: Sequence[Entry]) -> None:
        """Fail this node's proposals whose entries a new leader overwrote, as ``committed``
        (consecutive entries) reaches them; forget the batches it passes.

        A proposal's entry survived if the committed entry at its index has the term it was
        appended in (one leader per term, which never overwrites its own entries). Terms never
        decrease along the log, so a batch whose first and last committed entries have its
        term survived whole: the check costs two comparisons per batch, not one per entry.
        """
        lo, hi = committed[0].index, committed[-1].index
        kept = []
        # Every batch, not only the oldest: after losing and regaining leadership this node
        # may have placed a batch below an older one (its log was truncated in between).
        for batch in self._placed:
            first, term, proposals = batch
            last = first + len(proposals) - 1
            a, b = max(first, lo), min(last, hi)
            if a <= b and (committed[a - lo].term != term or committed[b - lo].term != term):
                for index in range(a, b + 1):
                    e = committed[index - lo]
                    if e.term != term:
                        req = proposals[index - first][0]
                        waiter = self._pending.pop(req, None)
                        if waiter is not None:
                            exc = NotApplied(f"entry {index} was overwritten by a new leader; not applied")
                            settle(waiter, req, None, exc)
            if last > hi:
                kept.append(batch)
        self._placed = kept
