"""A follower's forwarded proposals, from the forward to a definite answer.

A follower forwards its proposals to the leader it knows (``Raft.propose_batch`` with a
context); the leader answers where it placed them, or why it refused them (a
:class:`~phalanx_aio.core.types.Placement`). A forward left unanswered when the term changes
(the leader died, the message was lost) may or may not have been appended, so each of its
commands is sent again as a *retry* (``Raft.repropose``) to the next leader, which finds the
earlier copy if it can ever commit and appends the command only if not: nothing is applied
twice. A forward refused by a node that no longer led was appended nowhere; it is sent again
as it was, once a leader of a newer term is known.

The table below holds every forward not answered yet, by context; the driver settles the
callers. Everything here runs in the node's loop task.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection
from dataclasses import dataclass

from phalanx_aio.node._envelope import pack_request

__all__ = ["Forward", "Forwards"]


@dataclass(slots=True)
class Forward:
    """One attempt at placing some of this node's proposals through a leader."""

    proposals: list[tuple[int, bytes]]
    """(request id, entry data), in log order."""
    since: int
    """The first log index where a copy may sit: one more than this node's commit index when
    the proposals were first forwarded (the leader appends after every entry committed then)."""
    term: int
    """The term of the leader this attempt was sent to."""
    leader: str
    """The node it was sent to."""
    retry: bool
    """True if an earlier attempt may have been appended somewhere (its outcome unknown): the
    proposals then go again only as retries, which the leader checks for copies."""


class Forwards:
    """The forwarded proposals of one node that wait for an answer, by context."""

    __slots__ = ("_checked_term", "_ids", "_refused", "_sent")

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._sent: dict[bytes, Forward] = {}
        self._refused: list[Forward] = []  # refused by a node that no longer led that term
        self._checked_term = 0  # the last term in which the attempts were renewed

    def __len__(self) -> int:
        return len(self._sent) + len(self._refused)

    def new_context(self) -> bytes:
        """A context no other attempt of this run uses."""
        return pack_request(next(self._ids))

    def sent(self, context: bytes, forward: Forward) -> None:
        """Record an attempt, to be answered for ``context``."""
        self._sent[context] = forward

    def answered(self, context: bytes) -> Forward | None:
        """The attempt answered for ``context`` (forgotten from now on), if any."""
        return self._sent.pop(context, None)

    def refused(self, forward: Forward) -> None:
        """The node asked did not lead the term asked: try again in a newer term."""
        self._refused.append(forward)

    def due(self, term: int, may_retry: bool) -> list[Forward]:
        """The attempts to renew now that a leader of ``term`` is known: those refused, and
        those sent in an earlier term and never answered (the latter become retries). Each
        term renews them once; an empty list otherwise, and also while some would become
        retries but ``may_retry`` is false (the leader is not known to check retries)."""
        if term <= self._checked_term or not (self._sent or self._refused):
            return []
        stale = [c for c, f in self._sent.items() if f.term < term]
        if not may_retry and any(self._sent[c].proposals for c in stale):
            return []
        self._checked_term = term
        out = [f for f in self._refused if f.term < term]
        self._refused = [f for f in self._refused if f.term >= term]
        for ctx in stale:
            fwd = self._sent.pop(ctx)
            if fwd.proposals:  # a probe (see RaftNode._renew_forwards) is simply forgotten
                fwd.retry = True
                out.append(fwd)
        return out

    def retries_waiting(self, term: int) -> bool:
        """True if some unanswered attempt of an earlier term waits to be retried."""
        return term > self._checked_term and any(f.term < term and f.proposals for f in self._sent.values())

    def sweep(self, pending: Collection[int]) -> None:
        """Forget the attempts none of whose callers still wait (timed out or cancelled)."""
        self._sent = {c: f for c, f in self._sent.items() if any(r in pending for r, _ in f.proposals)}
        self._refused = [f for f in self._refused if any(r in pending for r, _ in f.proposals)]

    def clear(self) -> None:
        """Forget everything (the node stops)."""
        self._sent.clear()
        self._refused.clear()
