"""Raft's safety invariants, checked by the simulator after every event.

The checker sees what each node persists, sends and applies; it knows nothing of the network
model. Each check raises :class:`SafetyViolation` naming the invariant.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Collection

from phalanx_aio.core.types import Entry, HardState, Message, MessageType

__all__ = ["BudgetExceeded", "Checker", "LivenessFailure", "SafetyViolation", "chain_hash"]

_PACK = struct.Struct(">QQ").pack
_TERM_EXEMPT = frozenset(
    {
        MessageType.PROP,
        MessageType.READ_INDEX,
        MessageType.READ_INDEX_RESP,
        MessageType.VOTE,
        MessageType.PRE_VOTE,
    }
)


def chain_hash(prev: int, entry: Entry) -> int:
    """Hash of a log prefix ending in ``entry``, given the hash of the prefix before it."""
    return zlib.crc32(entry.data, zlib.crc32(_PACK(entry.term, entry.index), prev))


class SafetyViolation(AssertionError):
    """A Raft safety invariant was broken; ``invariant`` names which."""

    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"{invariant}: {detail}")
        self.invariant = invariant
        self.detail = detail


class LivenessFailure(AssertionError):
    """The cluster failed to make progress it owed: no leader or no convergence after healing,
    or a read or write not answered within the bound while the cluster was healthy."""


class BudgetExceeded(LivenessFailure):
    """A run exceeded its event or wall-clock budget (a livelock, or a message storm)."""


class Checker:
    """Global knowledge accumulated across the whole run, used to judge every event."""

    def __init__(self) -> None:
        self.leaders: dict[int, str] = {}
        """term -> the one leader of that term."""
        self.granted: dict[tuple[str, int], str] = {}
        """(voter, term) -> the candidate it granted its vote to."""
        self.chains: dict[tuple[int, int], int] = {(0, 0): 0}
        """(index, term) -> hash of the log prefix ending there (log matching)."""
        self.applied: dict[int, tuple[int, int, int]] = {}
        """index -> (term, log prefix hash, state digest) after applying it (state machine safety)."""
        self.committed: tuple[int, int] = (0, 0)
        """Highest (index, term) a leader has committed (in its term or, by a bug, an earlier one)."""
        self.committed_terms: dict[int, int] = {}
        """index -> term of the entry any node committed there (commit agreement)."""
        self.acked_index = 0
        """Highest log index of a write acknowledged to a client."""
        self.checks = 0

    def fail(self, invariant: str, detail: str) -> None:
        """Raise a violation."""
        raise SafetyViolation(invariant, detail)

    # -- called by the nodes ---------------------------------------------------------------

    def on_persist_hard_state(self, node: str, old: HardState, new: HardState) -> None:
        """Terms and commit indexes never go backwards on disk; one vote per term."""
        self.checks += 1
        if new.term < old.term:
            self.fail("term monotonic", f"{node} persisted term {new.term} after {old.term}")
        if new.commit < old.commit:
            self.fail("commit monotonic", f"{node} persisted commit {new.commit} after {old.commit}")
        if new.term == old.term and old.vote is not None and new.vote != old.vote:
            self.fail(
                "one vote per term", f"{node} changed its vote in term {new.term}: {old.vote} -> {new.vote}"
            )

    def on_persist_entry(self, node: str, entry: Entry, chain: int) -> None:
        """Log matching: the same (index, term) always ends the same prefix."""
        self.checks += 1
        key = (entry.index, entry.term)
        known = self.chains.setdefault(key, chain)
        if known != chain:
            self.fail("log matching", f"{node} holds ({entry.term}, {entry.index}) after a different prefix")

    def on_loadable(self, node: str, commit: int, last_index: int) -> None:
        """A saved hard state never commits beyond the saved log: the store stays loadable."""
        self.checks += 1
        if commit > last_index:
            self.fail(
                "loadable store",
                f"{node} saved commit index {commit} but its stored log ends at {last_index}",
            )

    def on_leader_overwrite(self, node: str, term: int, index: int) -> None:
        """A leader never overwrites or deletes entries in its own log."""
        self.fail("leader append-only", f"leader {node} of term {term} overwrote its log from index {index}")

    def on_send(self, node: str, m: Message, vote: str | None, term: int) -> None:
        """Votes are granted once per term, and only after being persisted."""
        if m.type is MessageType.VOTE_RESP and not m.reject:
            self.checks += 1
            if vote != m.to or term != m.term:
                self.fail(
                    "vote persisted before reply", f"{node} granted {m.to} in term {m.term} with vote {vote}"
                )
            prev = self.granted.setdefault((node, m.term), m.to)
            if prev != m.to:
                self.fail("one vote per term", f"{node} voted for {prev} and {m.to} in term {m.term}")

    def on_grant(
        self,
        voter: str,
        kind: str,
        candidate: str,
        term: int,
        candidate_last: tuple[int, int],
        voter_last: tuple[int, int],
    ) -> None:
        """§5.4.1 (and thesis §9.6 for pre-votes): a vote or pre-vote is granted only to a
        candidate whose log, ``(last index, last term)``, is at least as up to date."""
        self.checks += 1
        c_index, c_term = candidate_last
        v_index, v_term = voter_last
        if c_term < v_term or (c_term == v_term and c_index < v_index):
            self.fail(
                "vote for an up-to-date log",
                f"{voter} granted a {kind} of term {term} to {candidate}, whose log ends at "
                f"({c_term}, {c_index}), behind its own ({v_term}, {v_index})",
            )

    def on_step(self, node: str, m: Message, term_before: int, term_after: int) -> None:
        """§5.1: a node that receives a message of a higher term adopts that term (and a
        leader or candidate steps down). Exempt: forwarded requests and their answers, vote
        and pre-vote requests (leader stickiness may ignore them, and a pre-vote raises no
        term), and granted pre-votes (they carry the term the candidate may campaign in)."""
        if m.term <= term_before or m.type in _TERM_EXEMPT:
            return
        if m.type is MessageType.PRE_VOTE_RESP and not m.reject:
            return
        self.checks += 1
        if term_after < m.term:
            self.fail(
                "higher term adopted",
                f"{node} in term {term_before} stepped a {m.type.name} of term {m.term} "
                f"from {m.frm} and stayed in term {term_after}",
            )

    def on_node_commit(self, node: str, index: int, term: int) -> None:
        """Commit agreement: no two nodes ever consider different entries committed at one
        index (whatever the entry's term, followers included)."""
        self.checks += 1
        known = self.committed_terms.setdefault(index, term)
        if known != term:
            self.fail(
                "commit agreement",
                f"{node} committed an entry of term {term} at index {index}, "
                f"where an entry of term {known} was committed",
            )

    def on_leader(self, node: str, term: int, log_term_at: dict[int, int | None], snap_index: int) -> None:
        """At most one leader per term; a new leader holds every committed entry."""
        self.checks += 1
        other = self.leaders.setdefault(term, node)
        if other != node:
            self.fail("election safety", f"two leaders in term {term}: {other} and {node}")
        idx, t = self.committed
        if idx > snap_index and log_term_at.get(idx) != t:
            self.fail(
                "leader completeness", f"leader {node} of term {term} lacks committed entry ({t}, {idx})"
            )

    def on_commit(self, node: str, index: int, term: int, holders: int, voters: Collection[str]) -> None:
        """Every committed entry is stored on a majority of the voters."""
        self.checks += 1
        if holders < len(voters) // 2 + 1:
            self.fail(
                "committed on a quorum", f"{node} committed {index} but only {holders}/{len(voters)} hold it"
            )
        if index > self.committed[0]:
            self.committed = (index, term)

    def on_commit_safe(self, node: str, index: int, term: int, electable: str | None) -> None:
        """A committed entry can never be lost: no voter lacking it may still win a majority
        of votes (§5.4.1) against the logs the voters have stored. A correct commit (an entry
        of the leader's term, stored on a majority) always passes; the Raft paper's Figure 8
        commit of an earlier term's entry does not."""
        self.checks += 1
        if electable is not None:
            self.fail(
                "committed entry safe",
                f"{node} committed ({term}, {index}) but {electable}, which lacks it, can still be elected",
            )

    def on_apply(self, node: str, index: int, term: int, chain: int, digest: int) -> None:
        """No two nodes apply different entries at one index, nor reach different states."""
        self.checks += 1
        known = self.applied.setdefault(index, (term, chain, digest))
        if known != (term, chain, digest):
            self.fail("state machine safety", f"{node} applied a different entry at index {index}")

    def on_read_confirmed(
        self, node: str, term: int, now: float, invoked: float, confirmed: float | None, lease_ms: float
    ) -> None:
        """A leader answers a read only while a quorum has confirmed its leadership: by a
        heartbeat round sent after the read was invoked (ReadIndex), or, with lease reads,
        sent less than the lease before the answer. ``confirmed`` is the send time of the
        latest round a quorum acknowledged (``None``: none)."""
        self.checks += 1
        if confirmed is None or confirmed < min(invoked, now - lease_ms):
            when = "never" if confirmed is None else f"last at {confirmed:.1f} ms"
            self.fail(
                "read confirmed by a quorum",
                f"leader {node} of term {term} answered a read at {now:.1f} ms (invoked at "
                f"{invoked:.1f} ms, lease {lease_ms:.0f} ms) but a quorum confirmed it {when}",
            )

    def on_read(self, node: str, read_index: int, needed: int) -> None:
        """A read sees every write acknowledged, and every entry committed, before it was
        invoked (linearizability; ``needed`` is the larger of the two indexes)."""
        self.checks += 1
        if read_index < needed:
            self.fail(
                "linearizable read",
                f"{node} served a read at index {read_index}, "
                f"but index {needed} was committed or acknowledged before it began",
            )
