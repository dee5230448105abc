"""Proposals in :class:`~phalanx_aio.core.raft.Raft` (private): appending commands and
configuration changes as the leader, forwarding them from a follower, the leader's retries of
forwarded proposals, and the placement answers a proposer learns its outcome from.

A mixin, like :mod:`~phalanx_aio.core._elections`.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat

from phalanx_aio.core._raft_base import (
    _DROPPED,
    _NOT_LEADER,
    _PLACED,
    _PROP,
    _PROP_RESP,
    _UNKNOWN,
    RaftState,
    Role,
    _remember,
)
from phalanx_aio.core.membership import (
    ConfChange,
    apply_change,
    decode_conf,
    encode_conf,
    enter_joint,
    note_removals,
)
from phalanx_aio.core.types import (
    ConfState,
    Entry,
    EntryType,
    Message,
    Placement,
    PlacementOutcome,
)
from phalanx_aio.errors import LocalError, NotLeader, ProposalDropped

__all__ = ["Proposals"]


class Proposals(RaftState):
    """Taking commands and membership changes into the log."""

    def propose(self, data: bytes) -> tuple[int, int] | None:
        """Propose one command. On the leader: append it, return its ``(term, index)``.

        On a follower with a known leader (and forwarding on): forward it, return ``None``.
        Otherwise raise :class:`~phalanx_aio.errors.NotLeader` or
        :class:`~phalanx_aio.errors.ProposalDropped` with the reason.
        """
        out = self.propose_many([data])
        return out[0] if out else None

    def propose_many(self, commands: Sequence[bytes]) -> list[tuple[int, int]]:
        """Propose several commands as one batch (one append per follower).

        Returns their ``(term, index)`` on the leader, ``[]`` when forwarded; raises like
        :meth:`propose`.
        """
        placed = self.propose_batch(commands)
        if placed is None:
            return []
        term, first = placed
        return [(term, index) for index in range(first, first + len(commands))]

    def propose_batch(self, commands: Sequence[bytes], *, context: bytes = b"") -> tuple[int, int] | None:
        """:meth:`propose_many`, answered in one pair: on the leader, the commands are at
        consecutive indexes from the returned ``(term, first index)``; ``None`` when forwarded.
        Raises like :meth:`propose` (nothing is appended then).

        A forward with a ``context`` is answered: a later ``Ready`` carries a
        :class:`~phalanx_aio.core.types.Placement` for it (where the leader placed the
        commands, or why it refused them). A forward that stays unanswered (the leader died,
        the message was lost) has an unknown outcome: see :meth:`repropose`."""
        if self.role is not Role.LEADER:
            if self.leader is not None and self.cfg.forward_proposals and self.role is Role.FOLLOWER:
                entries = tuple(Entry(0, 0, EntryType.NORMAL, bytes(d)) for d in commands)
                self._forward(entries, bytes(context), 0)
                return None
            raise NotLeader(self.leader)
        datas = list(map(bytes, commands))  # a copy of a bytearray; bytes as they are
        self._check_can_propose(sum(map(len, datas)) + 16 * len(datas))
        return self.term, self._append(EntryType.NORMAL, datas)

    def repropose(self, data: bytes, context: bytes, since: int) -> None:
        """Propose again a command forwarded earlier whose outcome is unknown (its forward was
        never answered, and the leader has changed since), without ever applying it twice.

        ``since`` is the first log index where an earlier copy may sit: one more than this
        node's commit index when it first forwarded the command (the leader it was sent to
        appended it, if at all, after every entry committed then). The leader of the current
        term, once it has committed an entry of its term, looks for a copy from ``since`` on:
        entries of earlier terms that it does not hold then can never commit (§5.4), and those
        it holds are committed. It answers with where the copy sits, or appends the command
        if there is none. The answer arrives as a :class:`~phalanx_aio.core.types.Placement`
        for ``context``, in a later ``Ready``, on the leader itself too.

        Raises :class:`~phalanx_aio.errors.NotLeader` when no leader is known (try again once
        one is), :class:`~phalanx_aio.errors.LocalError` if ``since`` is not positive.
        """
        if since < 1:
            raise LocalError(f"since must be a log index (>= 1), not {since}")
        if self.role is Role.LEADER:
            self._retry(bytes(data), bytes(context), since, self.id)
        elif self.role is Role.FOLLOWER and self.leader is not None and self.cfg.forward_proposals:
            self._forward((Entry(0, 0, EntryType.NORMAL, bytes(data)),), bytes(context), since)
        else:
            raise NotLeader(self.leader)

    def _forward(self, entries: tuple[Entry, ...], context: bytes, since: int) -> None:
        leader = self.leader
        assert leader is not None
        self._send(Message(_PROP, leader, self.id, self.term, index=since, entries=entries, context=context))
        if context:
            _remember(self._forwards, context, (leader, self.term))

    def _on_forwarded(self, m: Message) -> None:
        """A leader's handling of a forwarded proposal (see :attr:`MessageType.PROP`)."""
        datas = [e.data for e in m.entries]
        if m.term == 0:  # from an earlier release: appended, never answered
            try:
                self._check_can_propose(sum(e.size() for e in m.entries))
            except ProposalDropped:
                return  # the follower's caller times out: outcome unknown to it, but never applied
            self._append(EntryType.NORMAL, datas)
            return
        if m.term != self.term:
            # Meant for the leader of another term: not appended, by this node or any other.
            self._answer_forward(m.frm, m.context, m.term, _NOT_LEADER)
            return
        if not datas:  # a probe: is this leader one that answers?
            self._answer_forward(m.frm, m.context, m.term, _DROPPED)
            return
        if m.index:
            if len(datas) != 1:
                self._answer_forward(m.frm, m.context, m.term, _DROPPED)
                return
            self._retry(datas[0], m.context, m.index, m.frm)
            return
        try:
            self._check_can_propose(sum(e.size() for e in m.entries))
        except ProposalDropped:
            self._answer_forward(m.frm, m.context, m.term, _DROPPED)
            return
        first = self._append(EntryType.NORMAL, datas)
        self._answer_forward(m.frm, m.context, m.term, _PLACED, self.term, first)

    def _retry(self, data: bytes, context: bytes, since: int, requester: str) -> None:
        """Place a retried command once: where a copy already sits, else at the end."""
        if not self._committed_in_term:
            # Until an entry of this term commits, an entry of an earlier term that this leader
            # does not hold may still commit under a later leader, and those it holds are not
            # yet known to commit: look once this term's first entry has committed.
            self._retries_before_commit.append((data, context, since, requester))
            return
        log = self.log
        if since <= log.snap_index:
            self._answer_forward(requester, context, self.term, _UNKNOWN)
            return
        copy = self._find_copy(data, since)
        if copy is not None:
            self._answer_forward(requester, context, self.term, _PLACED, copy.term, copy.index)
            return
        try:
            self._check_can_propose(len(data) + 16)
        except ProposalDropped:
            self._answer_forward(requester, context, self.term, _DROPPED)
            return
        first = self._append(EntryType.NORMAL, [data])
        self._answer_forward(requester, context, self.term, _PLACED, self.term, first)

    def _find_copy(self, data: bytes, since: int) -> Entry | None:
        """The entry of an earlier term holding ``data`` at ``since`` or later, if this leader
        holds one. Entries of earlier terms sit below ``_term_start`` and never change while
        this node leads, so they are indexed once, by data, from the lowest ``since`` asked."""
        log = self.log
        lo = max(since, log.first_index())
        copies = self._copies
        if copies is None:
            copies = self._copies = {}
            self._copies_from = self._term_start
        if lo < self._copies_from:
            for i in range(lo, self._copies_from):
                e = log.entry(i)
                copies.setdefault(e.data, e)
            self._copies_from = lo
        return copies.get(data)

    def _answer_forward(
        self,
        requester: str,
        context: bytes,
        term: int,
        outcome: PlacementOutcome,
        placed_term: int = 0,
        index: int = 0,
    ) -> None:
        """Tell ``requester`` (this node itself, or a follower) what became of its forward
        ``context``, asked of the leader of ``term``."""
        if not context:
            return
        if requester == self.id:
            self._placements.append(Placement(context, outcome, placed_term, index))
            return
        self._send(
            Message(
                _PROP_RESP,
                requester,
                self.id,
                term,
                log_term=placed_term,
                index=index,
                reject=outcome is not _PLACED,
                reject_hint=int(outcome),
                context=context,
            )
        )

    def _on_placement(self, m: Message) -> None:
        """A PROP_RESP: taken only from the node asked, for the term asked."""
        ctx = m.context
        if self._forwards.get(ctx) != (m.frm, m.term):
            return
        del self._forwards[ctx]
        if not m.reject:
            if m.index < 1 or m.log_term < 1:
                return  # malformed: the driver times the proposal out
            self._placements.append(Placement(ctx, _PLACED, m.log_term, m.index))
            return
        try:
            outcome = PlacementOutcome(m.reject_hint)
        except ValueError:
            outcome = _UNKNOWN
        self._placements.append(Placement(ctx, _UNKNOWN if outcome is _PLACED else outcome))

    def _check_can_propose(self, nbytes: int) -> None:
        if self.lead_transferee is not None:
            raise ProposalDropped(f"leadership transfer to {self.lead_transferee!r} in progress")
        if self.id not in self.confs.current.voters:
            raise ProposalDropped(f"{self.id!r} is being removed from the cluster")
        limit = self.cfg.max_uncommitted_bytes
        if limit and self._uncommitted_bytes > 0 and self._uncommitted_bytes + nbytes > limit:
            raise ProposalDropped(
                f"too much uncommitted data ({self._uncommitted_bytes} bytes, limit {limit})"
            )

    def propose_conf_change(self, change: ConfChange) -> tuple[int, int]:
        """Propose one membership change (leader only); returns the entry's ``(term, index)``.

        Refused while another change is pending, before the leader committed an entry of its
        own term, during a leadership transfer, or if the change is invalid.
        """
        self._check_conf_change(1)
        return self.term, self._append_conf(change, apply_change(self.confs.current, change))

    def propose_joint_change(self, changes: Sequence[ConfChange]) -> tuple[int, int]:
        """Propose several membership changes at once (leader only; thesis §4.3); returns the
        ``(term, index)`` of the entry that enters the joint configuration.

        Once that entry is committed, the leader appends the entry that leaves it (C_new) by
        itself; the change is complete when that one is committed. A leader that is not a
        voter of C_new goes on leading until then, and steps down after. Changes that only
        touch learners need no joint configuration and take effect in one entry. Refused as
        :meth:`propose_conf_change` is, and if the changes are invalid together.
        """
        changes = list(changes)
        self._check_conf_change(len(changes))
        return self.term, self._append_conf(changes, enter_joint(self.confs.current, changes))

    def _check_conf_change(self, count: int) -> None:
        """Raise unless this leader may append a membership change of ``count`` changes now."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        self._check_can_propose(64 * max(1, count))
        if not self._committed_in_term:
            raise ProposalDropped("the leader has not yet committed an entry of its term")
        if self.confs.last_index > self.log.committed:
            raise ProposalDropped("another membership change is still pending")

    def _append_conf(self, change: ConfChange | Sequence[ConfChange] | None, new: ConfState) -> int:
        """Append the CONF entry for ``change`` resulting in ``new`` (removals noted)."""
        index = self.log.last_index() + 1
        new = note_removals(self.confs.current, new, index)
        return self._append(EntryType.CONF, [encode_conf(change, new)])

    def _append(self, etype: EntryType, datas: Sequence[bytes]) -> int:
        """Append entries of one type, in this term, after the last; returns the first's index.
        Built without a Python loop per entry: a leader makes one ``Entry`` per command."""
        term = self.term
        first = self.log.last_index() + 1
        indexes = range(first, first + len(datas))
        entries = list(map(Entry, repeat(term), indexes, repeat(etype), datas))
        self.log.append(entries)
        self._uncommitted_bytes += self.log.size_of(first, first + len(datas))
        if etype is EntryType.CONF:
            for e in entries:
                self._apply_conf(e.index, decode_conf(e.data)[1])
        # The leader's own copy counts towards a commit only once it is durable: advance()
        # moves our match when the driver reports these entries persisted (thesis §10.2.1).
        self._bcast_entries = True
        return first
