"""Linearizable reads in :class:`~phalanx_aio.core.raft.Raft` (private): ReadIndex (thesis §6.4) by
heartbeat rounds, lease reads, reads forwarded from followers, and the read states released once
their index is confirmed.

A mixin, like :mod:`~phalanx_aio.core._elections`.
"""

from __future__ import annotations

from phalanx_aio.core._raft_base import (
    _READ_INDEX,
    _READ_INDEX_RESP,
    RaftState,
    Role,
    _remember,
)
from phalanx_aio.core.quorum import joint_quorum_index
from phalanx_aio.core.types import (
    Message,
    ReadState,
)
from phalanx_aio.errors import NotLeader

__all__ = ["Reads"]


class Reads(RaftState):
    """ReadIndex and lease reads, on the leader and through it."""

    def _drop_reads(self) -> None:
        for _, _, ctx, req in self._pending_reads:
            self._refuse_read(ctx, req)
        for ctx, req in self._reads_before_commit:
            self._refuse_read(ctx, req)
        self._pending_reads = []
        self._reads_before_commit = []
        self._read_acks = {}
        self._round_ticks = {}

    def read_index(self, context: bytes) -> None:
        """Ask for a linearizable read point (ReadIndex, thesis §6.4).

        The answer arrives as a :class:`ReadState` with this ``context`` in a later ``Ready``
        (or in ``dropped_reads`` if leadership is lost). Raises
        :class:`~phalanx_aio.errors.NotLeader` unless this node leads or is a follower that
        knows its leader and may forward (``forward_proposals``); candidates always refuse.
        A read forwarded to a leader that dies is never answered: drivers time reads out.
        """
        if self.role is Role.LEADER:
            self._leader_read(bytes(context), self.id)
        elif self.role is Role.FOLLOWER and self.leader is not None and self.cfg.forward_proposals:
            ctx = bytes(context)
            self._send(Message(_READ_INDEX, self.leader, self.id, 0, context=ctx))
            _remember(self._asked_reads, ctx, (self.leader, self.term))
        else:
            raise NotLeader(self.leader)

    def _leader_read(self, ctx: bytes, requester: str) -> None:
        if not self._committed_in_term:
            self._reads_before_commit.append((ctx, requester))
            return
        conf = self.confs.current
        if conf.voters == {self.id} and not conf.joint:
            self._answer_read(self.log.committed, ctx, requester)
            return
        if self.cfg.read_mode == "lease" and self._lease_valid():
            self._answer_read(self.log.committed, ctx, requester)
            return
        self._pending_reads.append((self._round + 1, self.log.committed, ctx, requester))
        self._bcast_read = True

    def _answer_read(self, index: int, ctx: bytes, requester: str) -> None:
        if requester == self.id:
            self._read_states.append(ReadState(index, ctx))
        else:
            self._send(Message(_READ_INDEX_RESP, requester, self.id, self.term, index=index, context=ctx))

    def _refuse_read(self, ctx: bytes, requester: str) -> None:
        if requester == self.id:
            self._dropped_reads.append(ctx)
        else:
            self._send(Message(_READ_INDEX_RESP, requester, self.id, self.term, reject=True, context=ctx))

    def _acked_round(self) -> int:
        acks = self._read_acks
        acks[self.id] = self._round
        conf = self.confs.current
        return joint_quorum_index(conf.voters, conf.voters_outgoing, acks)

    def _lease_valid(self) -> bool:
        if self._lease_void:
            return False
        acked = self._acked_round()
        sent = self._round_ticks.get(acked)
        if sent is None:
            return False
        cfg = self.cfg
        # RTT-aware mode: followers may adopt any timeout down to rtt_min_election_ticks, so
        # the lease is based on that floor, never on the advised timeout.
        timeout = cfg.rtt_min_election_ticks if cfg.rtt_aware else cfg.election_ticks
        return self._now() - sent < timeout - cfg.lease_margin_ticks

    def _now(self) -> float:
        """The time lease reads are measured on, in ticks."""
        return self._clock() if self._clock is not None else self._ticks

    def _release_reads(self) -> None:
        acked = self._acked_round()
        pending = self._pending_reads
        n = 0
        while n < len(pending) and pending[n][0] <= acked:
            _, index, ctx, req = pending[n]
            self._answer_read(index, ctx, req)
            n += 1
        if n:
            del pending[:n]
        for r in [r for r in self._round_ticks if r < acked]:
            del self._round_ticks[r]

    def _follower_read_resp(self, m: Message) -> None:
        # Only the leader asked may answer, for the term asked: an answer meant for a read of
        # another term (or of this node's previous run) must not serve a read asked now.
        ctx = m.context
        asked = self._asked_reads.get(ctx)
        if asked is None or asked[0] != m.frm or (asked[1] != m.term and not m.reject):
            return
        del self._asked_reads[ctx]
        if m.reject:
            self._dropped_reads.append(ctx)
        else:
            self._read_states.append(ReadState(m.index, ctx))
