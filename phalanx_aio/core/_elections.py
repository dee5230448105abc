"""Elections and time in :class:`~phalanx_aio.core.raft.Raft` (private): role changes, campaigns
(pre-vote and vote) and their tally, votes granted, ticks (election timeouts, the leader's
heartbeats and quorum check), and the RTT-aware election timeout and succession.

A mixin: ``Raft`` holds the state (declared in :mod:`~phalanx_aio.core._raft_base`).
"""

from __future__ import annotations

import math

from phalanx_aio.core._raft_base import (
    _APP,
    _HEARTBEAT,
    _NOT_LEADER,
    _PRE_VOTE,
    _PRE_VOTE_RESP,
    _PROP,
    _READ_INDEX,
    _READ_INDEX_RESP,
    _RTT_MIN_SAMPLES,
    _SNAP,
    _VOTE,
    _VOTE_RESP,
    RaftState,
    Role,
)
from phalanx_aio.core.progress import Progress
from phalanx_aio.core.quorum import VoteResult, joint_vote_result, quorum_size
from phalanx_aio.core.types import (
    EntryType,
    Message,
)

__all__ = ["Elections"]


class Elections(RaftState):
    """Becoming follower, candidate or leader, and when."""

    def _promotable(self) -> bool:
        return self.confs.current.is_voter(self.id)

    def _reset(self, term: int) -> None:
        # Retries this leader had not checked yet: refused for the term they were sent in.
        for _, ctx, _, requester in self._retries_before_commit:
            self._answer_forward(requester, ctx, self.term, _NOT_LEADER)
        self._retries_before_commit = []
        if term != self.term:
            self.term = term
            self.vote = None
            # Answers are taken for the term asked only (a new leader is asked again).
            self._forwards.clear()
            self._asked_reads.clear()
        self.leader = None
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._draw_timeout()
        self._hb_sent = {}
        self.lead_transferee = None
        self._votes = {}
        self.prs = {}
        self._committed_in_term = False
        self._lease_void = False
        self._uncommitted_bytes = 0
        self._drop_reads()
        self._copies = None
        self._bcast_entries = self._bcast_commit = self._bcast_read = False

    def _become_follower(self, term: int, leader: str | None) -> None:
        self._reset(term)
        self.leader = leader
        self.role = Role.FOLLOWER

    def _become_pre_candidate(self) -> None:
        # Pre-vote changes neither term nor vote (thesis §9.6).
        self._votes = {}
        self.leader = None
        self.role = Role.PRE_CANDIDATE

    def _become_candidate(self) -> None:
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.leader = self.id
        self.role = Role.LEADER
        last = self.log.last_index()
        for nid in sorted(self.confs.current.members()):  # sorted: no hash-seed-dependent order
            self.prs[nid] = Progress(last + 1)
        if self.id in self.prs:
            # Only what storage holds counts for us (thesis §10.2.1): entries still unstable
            # count once advance() reports them persisted.
            self.prs[self.id].match = self.log.unstable - 1
            self.prs[self.id].become_replicate()
        # Uncommitted entries of earlier terms count towards the limit too (conservative).
        self._uncommitted_bytes += self.log.size_of(self.log.committed + 1, last + 1)
        self._term_start = last + 1
        # §8: a no-op entry of this term lets earlier entries commit and starts ReadIndex.
        self._append(EntryType.NOOP, [b""])

    def campaign(self, transfer: bool = False) -> None:
        """Start an election now (pre-vote first, unless ``transfer`` or pre-vote is off).

        Does nothing on a node that is not a voter or is already leader.
        """
        self._campaign(pre_vote=self.cfg.pre_vote and not transfer, transfer=transfer)

    def _campaign(self, pre_vote: bool, transfer: bool) -> None:
        if not self._promotable() or self.role is Role.LEADER:
            return
        if pre_vote:
            self._become_pre_candidate()
            vote_type, vote_term = _PRE_VOTE, self.term + 1
        else:
            self._become_candidate()
            vote_type, vote_term = _VOTE, self.term
        self._votes[self.id] = True
        if self._tally() is not VoteResult.PENDING:
            return
        last_index, last_term = self.log.last_index(), self.log.last_term()
        for nid in sorted(self.confs.current.all_voters()):
            if nid != self.id:
                self._send(
                    Message(
                        vote_type,
                        nid,
                        self.id,
                        vote_term,
                        log_term=last_term,
                        index=last_index,
                        transfer=transfer,
                    )
                )

    def _tally(self) -> VoteResult:
        conf = self.confs.current
        result = joint_vote_result(conf.voters, conf.voters_outgoing, self._votes)
        if result is VoteResult.WON:
            if self.role is Role.PRE_CANDIDATE:
                # The real election, without a second pre-vote. It is not a transfer: voters
                # that heard from a leader since granting the pre-vote must still refuse.
                self._campaign(pre_vote=False, transfer=False)
            else:
                self._become_leader()
        elif result is VoteResult.LOST:
            self._become_follower(self.term, None)
        return result

    def tick(self) -> None:
        """Advance logical time by one tick."""
        self._ticks += 1
        if self.role is Role.LEADER:
            self._tick_leader()
        else:
            self._election_elapsed += 1
            if self._election_elapsed >= self._randomized_timeout and self._promotable():
                self._election_elapsed = 0
                self.campaign()

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self._election_timeout:
            self._election_elapsed = 0
            if self.cfg.check_quorum and not self._quorum_active():
                self._become_follower(self.term, None)
                return
            self.lead_transferee = None  # a transfer that took an election timeout is aborted
        if self._heartbeat_elapsed >= self.cfg.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            self._bcast_heartbeat()

    def _quorum_active(self) -> bool:
        active = {self.id}
        for nid, pr in self.prs.items():
            if pr.recent_active:
                active.add(nid)
            if nid != self.id:
                pr.recent_active = False
        conf = self.confs.current
        return all(
            len(half & active) >= quorum_size(half) for half in (conf.voters, conf.voters_outgoing) if half
        )

    @property
    def election_timeout(self) -> int:
        """The election timeout ``T`` in force, in ticks: each timeout is drawn from
        ``[T, 2T)``, and ``T`` is the check-quorum period and the stickiness window. It is
        ``election_ticks`` unless RTT-aware mode adopted a leader's advice."""
        return self._election_timeout

    def quorum_rtt(self) -> int | None:
        """Leader, RTT-aware mode: the round trip (ticks, rounded up) within which it hears
        from a quorum of voters, itself included, each voter's RTT being the configured
        percentile of its recent heartbeat round trips. ``None`` until every voter of some
        quorum has enough samples, and on non-leaders."""
        if self.role is not Role.LEADER or not self.cfg.rtt_aware:
            return None
        conf = self.confs.current
        rtts = [self._quorum_rtt_of(half) for half in (conf.voters, conf.voters_outgoing) if half]
        return None if None in rtts else max(r for r in rtts if r is not None)

    def _quorum_rtt_of(self, voters: frozenset[str]) -> int | None:
        cfg = self.cfg
        need = min(_RTT_MIN_SAMPLES, cfg.rtt_window)
        known: list[int] = []
        for nid in voters:
            if nid == self.id:
                known.append(0)
                continue
            pr = self.prs.get(nid)
            rtt = None if pr is None else pr.rtt_percentile(cfg.rtt_percentile, need)
            if rtt is not None:
                known.append(rtt)
        quorum = quorum_size(voters)
        if len(known) < quorum:
            return None
        known.sort()
        return known[quorum - 1]

    def _advised_timeout(self, q: int | None) -> int:
        """The timeout this leader advises for quorum RTT ``q``: ``ceil(rtt_factor * q) + 2 *
        heartbeat_ticks``, clamped to ``[rtt_min_election_ticks, election_ticks]``; 0 (no
        advice) while the quorum RTT is unknown."""
        if q is None:
            return 0
        cfg = self.cfg
        t = math.ceil(cfg.rtt_factor * q) + 2 * cfg.heartbeat_ticks
        return min(max(t, cfg.rtt_min_election_ticks), cfg.election_ticks)

    def _adopt_timeout(self, advised: int, delay: int = 0) -> None:
        # Clamped: a buggy or hostile leader cannot set a timeout outside the configured
        # bounds (the lease relies on the lower one), nor a delay that takes the timeout past
        # 2 * election_ticks, the longest a node without succession advice can draw.
        cfg = self.cfg
        t = min(max(advised, cfg.rtt_min_election_ticks), cfg.election_ticks)
        d = min(max(delay, 0), cfg.election_ticks) if cfg.rtt_succession > 0 else 0
        if t != self._election_timeout or (d and d != self._election_delay):
            self._election_timeout = t
            if d:
                self._election_delay = d
            self._draw_timeout()

    def _draw_timeout(self) -> None:
        """Draw this node's next election timeout: ``[T, 2T)``, or with succession advice
        ``[T + delay, T + delay + heartbeat_ticks)``."""
        t = self._election_timeout
        if self._election_delay:
            jitter = self._rng.randrange(self.cfg.heartbeat_ticks)
            self._randomized_timeout = t + self._election_delay + jitter
        else:
            self._randomized_timeout = t + self._rng.randrange(t)

    def election_delay(self) -> int:
        """RTT-aware succession: the delay beyond ``T`` (ticks) this node waits before it
        stands, as its last leader advised; 0 without such advice."""
        return self._election_delay

    def _succession(self, q: int) -> dict[str, int]:
        """Leader, RTT-aware succession: the delay advised to each voting follower. Ranked by
        log first (a follower whose match is below the commit index goes last: voters whose
        logs are ahead would refuse it), then by the measured RTT to this leader (unknown
        last), then by id; rank ``r`` gets ``1 + r * S`` with ``S = ceil(rtt_succession * q) +
        heartbeat_ticks``: the first one's election, a pre-vote and a vote round, should have
        reached the next one before it stands."""
        cfg = self.cfg
        need = min(_RTT_MIN_SAMPLES, cfg.rtt_window)
        committed = self.log.committed
        ranked = []
        for nid in self.confs.current.voters:
            pr = self.prs.get(nid)
            if nid == self.id or pr is None:
                continue
            rtt = pr.rtt_percentile(cfg.rtt_percentile, need)
            ranked.append((pr.match < committed, rtt is None, rtt or 0, nid))
        ranked.sort()
        step = math.ceil(cfg.rtt_succession * q) + cfg.heartbeat_ticks
        return {key[3]: 1 + r * step for r, key in enumerate(ranked)}

    def _handle_vote(self, m: Message) -> None:
        # A node that knows no configuration at all (one joining with an empty store) never
        # votes: it may be a member that lost its data, which must not vote again as that member.
        can_vote = bool(self.conf.members()) and (
            self.vote == m.frm
            or (self.vote is None and self.leader is None)
            or (m.type is _PRE_VOTE and m.term > self.term)
        )
        if self._founded_now:
            if self.log.committed > 1:
                self._founded_now = False  # it holds what a leader committed: a member again
            elif m.index > 1:
                can_vote = False  # the cluster is past its founding: this node may have lost data
        resp = _VOTE_RESP if m.type is _VOTE else _PRE_VOTE_RESP
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            self._send(Message(resp, m.frm, self.id, m.term))
            if m.type is _VOTE:
                self._election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(Message(resp, m.frm, self.id, self.term, reject=True))

    def _step_candidate(self, m: Message) -> None:
        t = m.type
        if t is _APP:
            self._become_follower(m.term, m.frm)
            self._handle_append(m)
        elif t is _HEARTBEAT:
            self._become_follower(m.term, m.frm)
            self._handle_heartbeat(m)
        elif t is _SNAP:
            self._become_follower(m.term, m.frm)
            self._handle_snapshot(m)
        elif (t is _PRE_VOTE_RESP and self.role is Role.PRE_CANDIDATE) or (
            t is _VOTE_RESP and self.role is Role.CANDIDATE
        ):
            self._votes.setdefault(m.frm, not m.reject)
            self._tally()
        elif t is _READ_INDEX:
            self._refuse_read(m.context, m.frm)
        elif t is _READ_INDEX_RESP:
            self._follower_read_resp(m)
        elif t is _PROP and m.term:
            self._answer_forward(m.frm, m.context, m.term, _NOT_LEADER)
