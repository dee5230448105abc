"""The Raft state machine: one object per node, driven by ``tick``, ``step`` and the proposal
calls, emitting :class:`~phalanx_aio.core.ready.Ready` batches. Sans-IO and deterministic.

Section numbers refer to the Raft paper (Ongaro and Ousterhout, 2014) and thesis (Ongaro, 2014).
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat

from phalanx_aio.core.config import Config
from phalanx_aio.core.log import RaftLog
from phalanx_aio.core.membership import (
    ConfChange,
    ConfHistory,
    apply_change,
    decode_conf,
    encode_conf,
    enter_joint,
    leave_joint,
    note_removals,
)
from phalanx_aio.core.progress import Progress, ProgressState
from phalanx_aio.core.quorum import VoteResult, joint_quorum_index, joint_vote_result, quorum_size
from phalanx_aio.core.ready import Ready
from phalanx_aio.core.types import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    InitialState,
    Message,
    MessageType,
    Placement,
    PlacementOutcome,
    ReadState,
    Snapshot,
    SnapshotMeta,
)
from phalanx_aio.errors import LocalError, NotLeader, ProposalDropped, ProtocolError, StorageError

__all__ = ["InitialState", "ProgressInfo", "Raft", "Role", "Status", "bootstrap_state"]

_MAX_APPLY_BYTES = 64 << 20

_APP = MessageType.APP
_APP_RESP = MessageType.APP_RESP
_VOTE = MessageType.VOTE
_VOTE_RESP = MessageType.VOTE_RESP
_PRE_VOTE = MessageType.PRE_VOTE
_PRE_VOTE_RESP = MessageType.PRE_VOTE_RESP
_HEARTBEAT = MessageType.HEARTBEAT
_HEARTBEAT_RESP = MessageType.HEARTBEAT_RESP
_SNAP = MessageType.SNAP
_PROP = MessageType.PROP
_READ_INDEX = MessageType.READ_INDEX
_READ_INDEX_RESP = MessageType.READ_INDEX_RESP
_TIMEOUT_NOW = MessageType.TIMEOUT_NOW
_PROP_RESP = MessageType.PROP_RESP
_PLACED = PlacementOutcome.PLACED
_NOT_LEADER = PlacementOutcome.NOT_LEADER
_DROPPED = PlacementOutcome.DROPPED
_UNKNOWN = PlacementOutcome.UNKNOWN

# Messages that are not term-checked: forwarded requests and their answers. Their safety does
# not depend on the receiver's term: a forward names the term of the leader it is meant for,
# and an answer is taken only from the node asked, for the term asked (see _on_forwarded,
# _on_placement and _follower_read_resp).
_UNCHECKED = frozenset({_PROP, _PROP_RESP, _READ_INDEX, _READ_INDEX_RESP})

# Forwarded proposals and reads waiting for their answer, remembered per context as the
# (leader, term) asked; past this many (answers lost with a broken connection) the oldest
# are forgotten: their answers will be ignored, and the driver times them out.
_MAX_ASKED = 1 << 16

# RTT-aware mode: heartbeat answers older than this many rounds are not timed, and a
# follower's RTT counts once it has this many samples (or rtt_window, if smaller).
_RTT_ROUNDS_KEPT = 64
_RTT_MIN_SAMPLES = 8


class Role(enum.Enum):
    """A node's role in its current term."""

    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


def bootstrap_state(voters: Mapping[str, bytes] | Iterable[str]) -> InitialState:
    """The persisted state every founding member of a new cluster starts from.

    The first log entry (term 1, index 1, committed) records the configuration ``voters``
    (ids, or ids mapped to contexts such as addresses), so all founders' logs agree. Write
    it to storage once, at creation, then start the core from it.
    """
    ctx = dict(voters) if isinstance(voters, Mapping) else dict.fromkeys(voters, b"")
    if not ctx:
        raise LocalError("bootstrap needs at least one voter")
    conf = ConfState(voters=frozenset(ctx), contexts=tuple(sorted(ctx.items())))
    entry = Entry(1, 1, EntryType.CONF, encode_conf(None, conf))
    return InitialState(hard_state=HardState(term=1, vote=None, commit=1), entries=(entry,))


@dataclass(frozen=True, slots=True)
class ProgressInfo:
    """A follower's replication progress as the leader sees it (for status reports)."""

    match: int
    next_index: int
    state: str
    recent_active: bool


@dataclass(frozen=True, slots=True)
class Status:
    """A snapshot of a core's state, for status pages and tests."""

    id: str
    role: Role
    term: int
    vote: str | None
    leader: str | None
    commit: int
    applied: int
    first_index: int
    last_index: int
    conf: ConfState
    progress: Mapping[str, ProgressInfo]
    lead_transferee: str | None


class Raft:
    """One Raft node's protocol state. Not thread-safe; one owner calls it.

    Inputs: :meth:`tick`, :meth:`step`, :meth:`propose`, :meth:`read_index`,
    :meth:`propose_conf_change`, :meth:`transfer_leadership`, :meth:`compact`.
    Outputs: :meth:`ready` then :meth:`advance` (see :class:`Ready` for the contract).
    """

    def __init__(
        self,
        node_id: str,
        config: Config,
        rng: random.Random,
        state: InitialState | None = None,
        *,
        clock: Callable[[], float] | None = None,
        founded_now: bool = False,
    ) -> None:
        if not node_id:
            raise LocalError("node id must be a non-empty string")
        state = state or InitialState()
        self.id = node_id
        self.cfg = config
        self._rng = rng
        # Lease reads are timed on this clock (in ticks, monotonic); the tick count without one.
        # A driver passes its monotonic clock, so that a loop that stalls (and misses ticks)
        # does not stretch its lease by the stall.
        self._clock = clock
        snap = state.snapshot
        hs = state.hard_state
        self.log = RaftLog(snap.meta.index, snap.meta.term, state.entries)
        if hs.commit > self.log.last_index():
            raise LocalError(
                f"hard state commit {hs.commit} is beyond the last log index {self.log.last_index()}"
            )
        self.log.commit_to(hs.commit)
        self._snapshot: Snapshot | None = snap if snap.meta.index > 0 else None
        self.confs = ConfHistory(snap.meta.index, snap.meta.conf)
        for e in state.entries:
            if e.type is EntryType.CONF:
                try:
                    self.confs.append(e.index, decode_conf(e.data)[1])
                except ProtocolError as exc:
                    raise StorageError(
                        f"stored configuration entry at index {e.index} is malformed: {exc}"
                    ) from exc
        self.term = hs.term
        self.vote: str | None = hs.vote
        self.leader: str | None = None
        self.role = Role.FOLLOWER
        self._prev_hs = hs
        self._msgs: list[Message] = []
        self._read_states: list[ReadState] = []
        self._dropped_reads: list[bytes] = []
        self._ticks = 0
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = config.election_ticks
        # RTT-aware mode (Config.rtt_aware): the election timeout T in force, the leader's
        # advised one or, without advice, election_ticks. It survives term changes (advice
        # is kept until a new leader advises otherwise) but not restarts.
        self._election_timeout = config.election_ticks
        # RTT-aware succession (Config.rtt_succession): the delay beyond T this node waits
        # before it stands, as its last leader advised (0: none, draw from [T, 2T)).
        self._election_delay = 0
        # A node that may have acknowledged a leader before it stopped (any term past the
        # founding one: the first leader is elected in term 2) refuses votes and pre-votes
        # for this many ticks after it starts, as if it had just heard that leader.
        self._quiet_ticks = config.election_ticks if hs.term > 1 else 0
        # A store founded in this run (``founded_now``) is a new founder or a member that lost
        # its data and was founded again. Until it learns of a commit past the founding entry,
        # it votes only for candidates whose log is still at that entry: one that forgot what
        # it acknowledged must not help a candidate that lacks it win.
        self._founded_now = founded_now
        self._hb_sent: dict[int, int] = {}
        self.lead_transferee: str | None = None
        self._votes: dict[str, bool] = {}
        self.prs: dict[str, Progress] = {}
        self._committed_in_term = False
        self._lease_void = False
        self._uncommitted_bytes = 0
        # ReadIndex: heartbeat rounds (thesis §6.4). A read registered at round r is confirmed
        # once a quorum acknowledged a heartbeat of round >= r.
        self._round = 0
        self._round_ticks: dict[int, float] = {}  # round -> time sent (see _now)
        self._read_acks: dict[str, int] = {}
        self._pending_reads: list[tuple[int, int, bytes, str]] = []
        self._reads_before_commit: list[tuple[bytes, str]] = []
        # Follower side: forwarded proposals and reads (context -> (leader, term) asked). An
        # answer counts only from that node for that term.
        self._forwards: dict[bytes, tuple[str, int]] = {}
        self._asked_reads: dict[bytes, tuple[str, int]] = {}
        self._placements: list[Placement] = []
        # Leader side: retried proposals waiting for the first commit of this term (data,
        # context, first index to search, requester), and the entries of earlier terms in
        # this leader's log, by data, from index _copies_from on (built at the first retry).
        self._retries_before_commit: list[tuple[bytes, bytes, int, str]] = []
        self._copies: dict[bytes, Entry] | None = None
        self._copies_from = 0
        self._term_start = 0  # the index of this leader's first entry of its term (its no-op)
        self._bcast_entries = False
        self._bcast_commit = False
        self._bcast_read = False
        self._become_follower(self.term, None)

    @classmethod
    def bootstrap(
        cls,
        node_id: str,
        config: Config,
        rng: random.Random,
        voters: Mapping[str, bytes] | Iterable[str],
        *,
        clock: Callable[[], float] | None = None,
    ) -> Raft:
        """A brand-new node of a brand-new cluster whose first configuration is ``voters``.

        Every founding member must be bootstrapped with the same ``voters``: the first log
        entry (term 1, index 1, committed) records that configuration, so all logs agree.
        ``voters`` may map ids to contexts (addresses). The first ``Ready`` persists it.
        """
        state = bootstrap_state(voters)
        node = cls(node_id, config, rng, clock=clock)
        node.log.append(state.entries)
        node.confs.append(1, decode_conf(state.entries[0].data)[1])
        node.log.commit_to(1)
        node.term = 1
        return node

    # ------------------------------------------------------------------ queries

    @property
    def conf(self) -> ConfState:
        """The configuration in force."""
        return self.confs.current

    @property
    def is_leader(self) -> bool:
        """True if this node is the leader of its current term."""
        return self.role is Role.LEADER

    @property
    def ready_for_conf_change(self) -> bool:
        """True if a leader would accept a membership change now: it has committed an entry
        of its term, no earlier change is still uncommitted, and it is not in a joint
        configuration (the entry leaving it is appended by itself)."""
        return (
            self.role is Role.LEADER
            and self._committed_in_term
            and self.confs.last_index <= self.log.committed
            and not self.confs.current.joint
        )

    def _promotable(self) -> bool:
        return self.confs.current.is_voter(self.id)

    def status(self) -> Status:
        """A read-only report of this node's state."""
        progress = {
            nid: ProgressInfo(pr.match, pr.next_index, pr.state.name.lower(), pr.recent_active)
            for nid, pr in sorted(self.prs.items())
        }
        return Status(
            id=self.id,
            role=self.role,
            term=self.term,
            vote=self.vote,
            leader=self.leader,
            commit=self.log.committed,
            applied=self.log.applied,
            first_index=self.log.first_index(),
            last_index=self.log.last_index(),
            conf=self.confs.current,
            progress=progress,
            lead_transferee=self.lead_transferee,
        )

    # ------------------------------------------------------------------ role changes

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

    def _drop_reads(self) -> None:
        for _, _, ctx, req in self._pending_reads:
            self._refuse_read(ctx, req)
        for ctx, req in self._reads_before_commit:
            self._refuse_read(ctx, req)
        self._pending_reads = []
        self._reads_before_commit = []
        self._read_acks = {}
        self._round_ticks = {}

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

    # ------------------------------------------------------------------ time

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

    # ------------------------------------------------------------------ RTT-aware timeout

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

    # ------------------------------------------------------------------ client requests

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

    def transfer_leadership(self, target: str) -> None:
        """Hand leadership to ``target`` (thesis §3.10): once its log is caught up it gets
        TimeoutNow and campaigns at once. Aborted after an election timeout; proposals are
        refused meanwhile."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if target == self.id:
            return
        if target not in self.confs.current.voters:
            raise ProposalDropped(f"cannot transfer leadership to {target!r}: not a voter")
        if self.lead_transferee == target:
            return
        self.lead_transferee = target
        self._election_elapsed = 0
        # TIMEOUT_NOW lets the target win without waiting out followers' stickiness, so from
        # now on (even if the transfer is aborted) our lease proves nothing this term.
        self._lease_void = True
        if self.prs[target].match == self.log.last_index():
            self._send(Message(_TIMEOUT_NOW, target, self.id, self.term, transfer=True))
        else:
            self._send_append(target)

    def report_unreachable(self, peer: str) -> None:
        """The transport could not reach ``peer``: stop streaming to it optimistically and
        probe again (a leader-only hint; ignored otherwise)."""
        pr = self.prs.get(peer) if self.role is Role.LEADER else None
        if pr is not None and pr.state is ProgressState.REPLICATE:
            pr.become_probe()

    def report_snapshot(self, peer: str, ok: bool) -> None:
        """The snapshot sent to ``peer`` was delivered (``ok``) or failed. On failure the leader
        probes again (and sends a snapshot again if still needed); on success it waits for the
        follower's answer, which moves it on."""
        pr = self.prs.get(peer) if self.role is Role.LEADER else None
        if pr is not None and pr.state is ProgressState.SNAPSHOT and not ok:
            pr.become_probe()

    def compact(
        self, index: int, data: bytes, *, release: Callable[[list[Entry]], None] | None = None
    ) -> Snapshot:
        """Record the application's snapshot ``data`` taken at applied ``index`` and drop the
        log up to it. Returns the :class:`Snapshot` for the driver to persist.

        With ``release``, the list that held the dropped entries is handed to it rather than
        dropped here (it also holds the kept ones, which stay in the log): freeing a million
        entries at once takes a while, and a driver may rather free them in steps."""
        if index <= self.log.snap_index:
            raise LocalError(f"index {index} is already compacted (snapshot at {self.log.snap_index})")
        if index > self.log.applied:
            raise LocalError(f"cannot snapshot at {index}: only {self.log.applied} is applied")
        if index >= self.log.unstable:
            raise LocalError(f"cannot snapshot at {index}: entries up to it are not persisted here yet")
        term = self.log.term(index)
        assert term is not None
        snap = Snapshot(self._snapshot_meta(index, term), bytes(data))
        dropped = self.log.compact_to(index)
        if release is not None:
            release(dropped)
        del dropped
        self.confs.compact_to(index)
        self._snapshot = snap
        return snap

    def _snapshot_meta(self, index: int, term: int) -> SnapshotMeta:
        return SnapshotMeta(index, term, self.confs.at(index))

    # ------------------------------------------------------------------ messages in

    def step(self, m: Message) -> None:
        """Feed one message from a peer."""
        if m.type not in _UNCHECKED:
            if m.term > self.term:
                if m.type is _VOTE or m.type is _PRE_VOTE:
                    # A node restarted less than an election timeout ago counts as having
                    # heard a leader: it may have acknowledged one just before it stopped,
                    # and that leader's lease relies on it (thesis §6.4.1).
                    in_lease = (
                        self.cfg.check_quorum
                        and (self.leader is not None or self._ticks < self._quiet_ticks)
                        and self._election_elapsed < self._election_timeout
                    )
                    if in_lease and not m.transfer:
                        return  # leader stickiness: a live leader was heard recently
                if m.type is _PRE_VOTE or (m.type is _PRE_VOTE_RESP and not m.reject):
                    pass  # pre-votes never raise terms
                elif m.type is _APP or m.type is _HEARTBEAT or m.type is _SNAP:
                    self._become_follower(m.term, m.frm)
                else:
                    self._become_follower(m.term, None)
            elif m.term < self.term:
                if m.type is _APP or m.type is _HEARTBEAT:
                    # Tell a stale leader about the new term so it steps down.
                    self._send(Message(_APP_RESP, m.frm, self.id, self.term))
                elif m.type is _PRE_VOTE:
                    self._send(Message(_PRE_VOTE_RESP, m.frm, self.id, self.term, reject=True))
                return
        if m.type is _VOTE or m.type is _PRE_VOTE:
            self._handle_vote(m)
        elif m.type is _PROP_RESP:
            self._on_placement(m)
        elif self.role is Role.LEADER:
            self._step_leader(m)
        elif self.role is Role.FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

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

    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t is _PROP:
            self._on_forwarded(m)
            return
        if t is _READ_INDEX:
            self._leader_read(m.context, m.frm)
            return
        pr = self.prs.get(m.frm)
        if pr is None:
            return
        if t is _APP_RESP:
            pr.recent_active = True
            if m.reject:
                hint = m.reject_hint
                if m.log_term > 0:
                    hint = self.log.find_conflict_by_term(hint, m.log_term)
                if pr.maybe_decrease(m.index, hint):
                    if pr.state is ProgressState.REPLICATE:
                        pr.become_probe()
                    self._send_append(m.frm)
                return
            was_paused = pr.is_paused(self.cfg.max_inflight_msgs, self.cfg.max_inflight_bytes)
            if not pr.maybe_update(m.index):
                return
            if pr.state is ProgressState.PROBE:
                pr.become_replicate()
            elif pr.state is ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
                pr.become_probe()
                pr.become_replicate()
            if self._maybe_commit():
                if self.role is not Role.LEADER:
                    return  # our own removal committed: we stepped down
                if m.frm not in self.prs:
                    return  # the commit left a joint configuration that no longer has it
            elif was_paused and not self._bcast_commit:  # else the pending broadcast reaches it
                self._send_append(m.frm)
            while self._send_append(m.frm, send_if_empty=False):
                pass
            if m.frm == self.lead_transferee and pr.match == self.log.last_index():
                self._send(Message(_TIMEOUT_NOW, m.frm, self.id, self.term, transfer=True))
        elif t is _HEARTBEAT_RESP:
            pr.recent_active = True
            pr.probe_sent = False
            if m.seq > pr.rtt_seq and self.cfg.rtt_aware:
                sent = self._hb_sent.get(m.seq)
                if sent is not None:
                    # Sent at tick `sent`, answered before tick `_ticks + 1`: rounded up.
                    pr.add_rtt(self._ticks - sent + 1, self.cfg.rtt_window)
                    pr.rtt_seq = m.seq
            if pr.state is ProgressState.REPLICATE and pr.is_paused(
                self.cfg.max_inflight_msgs, self.cfg.max_inflight_bytes
            ):
                pr.free_one()
            elif (
                pr.state is ProgressState.SNAPSHOT
                and self._ticks - pr.snapshot_sent_tick >= 2 * self.cfg.election_ticks
            ):
                pr.become_probe()  # the snapshot was probably lost: decide again
            if pr.match < self.log.last_index():
                self._send_append(m.frm)
            if m.seq > self._read_acks.get(m.frm, 0):
                self._read_acks[m.frm] = m.seq
                self._release_reads()  # also forgets the send ticks of acknowledged rounds

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

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t is _APP:
            self._election_elapsed = 0
            self.leader = m.frm
            self._handle_append(m)
        elif t is _HEARTBEAT:
            self._election_elapsed = 0
            self.leader = m.frm
            self._handle_heartbeat(m)
        elif t is _SNAP:
            self._election_elapsed = 0
            self.leader = m.frm
            self._handle_snapshot(m)
        elif t is _TIMEOUT_NOW:
            self.campaign(transfer=True)
        elif t is _PROP:
            if m.term:
                self._answer_forward(m.frm, m.context, m.term, _NOT_LEADER)
            elif self.leader is not None and self.cfg.forward_proposals:
                # From an earlier release (unanswered forwards): passed on, as it did.
                self._send(Message(_PROP, self.leader, self.id, 0, entries=m.entries))
        elif t is _READ_INDEX:
            self._refuse_read(m.context, m.frm)
        elif t is _READ_INDEX_RESP:
            self._follower_read_resp(m)

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

    def _handle_append(self, m: Message) -> None:
        log = self.log
        if m.index < log.committed:
            self._send(Message(_APP_RESP, m.frm, self.id, self.term, index=log.committed))
            return
        if log.match_term(m.index, m.log_term):
            ents = m.entries
            pos = log.find_conflict(ents) if ents else 0
            if pos < len(ents):
                new = ents[pos:]
                confs = [(e.index, decode_conf(e.data)[1]) for e in new if e.type is EntryType.CONF]
                self.confs.truncate_from(new[0].index)
                log.truncate_and_append(new)
                for idx, conf in confs:
                    self.confs.append(idx, conf)
            last_new = m.index + len(ents)
            log.commit_to(min(m.commit, last_new))
            self._send(Message(_APP_RESP, m.frm, self.id, self.term, index=last_new))
        else:
            hint = log.find_conflict_by_term(min(m.index, log.last_index()), m.log_term)
            self._send(
                Message(
                    _APP_RESP,
                    m.frm,
                    self.id,
                    self.term,
                    index=m.index,
                    reject=True,
                    reject_hint=hint,
                    log_term=log.term(hint) or 0,
                )
            )

    def _handle_heartbeat(self, m: Message) -> None:
        if m.election_timeout and self.cfg.rtt_aware:
            self._adopt_timeout(m.election_timeout, m.election_delay)
        self.log.commit_to(min(m.commit, self.log.last_index()))
        self._send(Message(_HEARTBEAT_RESP, m.frm, self.id, self.term, seq=m.seq))

    def _handle_snapshot(self, m: Message) -> None:
        snap = m.snapshot
        log = self.log
        if snap is None or snap.meta.index <= log.committed:
            self._send(Message(_APP_RESP, m.frm, self.id, self.term, index=log.committed))
            return
        meta = snap.meta
        if log.match_term(meta.index, meta.term):
            # We already hold the snapshot's last entry: just learn that it is committed.
            log.commit_to(meta.index)
        else:
            log.restore(snap)
            self.confs = ConfHistory(meta.index, meta.conf)
            self._snapshot = snap
        self._send(Message(_APP_RESP, m.frm, self.id, self.term, index=log.committed))

    # ------------------------------------------------------------------ replication out

    def _send(self, m: Message) -> None:
        self._msgs.append(m)

    def _send_append(self, to: str, send_if_empty: bool = True) -> bool:
        pr = self.prs[to]
        cfg = self.cfg
        if pr.is_paused(cfg.max_inflight_msgs, cfg.max_inflight_bytes):
            return False
        log = self.log
        prev = pr.next_index - 1
        prev_term = log.term(prev)
        if prev_term is None:
            if prev > log.last_index():  # cannot happen: next_index <= last + 1
                pr.become_probe()
                return False
            snap = self._snapshot
            assert snap is not None, "log compacted without a snapshot"
            self._send(Message(_SNAP, to, self.id, self.term, snapshot=snap))
            pr.become_snapshot(snap.meta.index, self._ticks)
            return True
        last = log.last_index()
        if pr.next_index <= last:
            ents = log.slice(pr.next_index, last + 1, cfg.max_msg_bytes, cfg.max_msg_entries)
        else:
            if not send_if_empty:
                return False
            ents = []
        nbytes = 0
        for e in ents:
            nbytes += len(e.data) + 16
        self._send(
            Message(
                _APP,
                to,
                self.id,
                self.term,
                log_term=prev_term,
                index=prev,
                entries=tuple(ents),
                commit=log.committed,
            )
        )
        pr.sent(prev + len(ents), nbytes)
        return True

    def _bcast_heartbeat(self) -> None:
        self._round += 1
        if self.cfg.read_mode == "lease":
            self._round_ticks[self._round] = self._now()
        self._bcast_read = False
        committed = self.log.committed
        advice = 0
        delays: dict[str, int] = {}
        if self.cfg.rtt_aware:
            self._hb_sent[self._round] = self._ticks
            self._hb_sent.pop(self._round - _RTT_ROUNDS_KEPT, None)
            q = self.quorum_rtt()
            advice = self._advised_timeout(q)
            if advice:
                self._election_timeout = advice
                if self.cfg.rtt_succession > 0 and q is not None:
                    delays = self._succession(q)
        for nid, pr in self.prs.items():
            if nid != self.id:
                self._send(
                    Message(
                        _HEARTBEAT,
                        nid,
                        self.id,
                        self.term,
                        commit=min(pr.match, committed),
                        seq=self._round,
                        election_timeout=advice,
                        election_delay=delays.get(nid, 0),
                    )
                )
        if self._pending_reads:
            self._release_reads()  # a single-voter quorum needs no answers

    def _maybe_commit(self) -> bool:
        conf = self.confs.current
        voters = conf.voters
        prs = self.prs
        idx = joint_quorum_index(
            voters, conf.voters_outgoing, {nid: pr.match for nid, pr in prs.items() if conf.is_voter(nid)}
        )
        # §5.4.2: only entries of the current term are committed by counting replicas.
        if idx <= self.log.committed or self.log.term(idx) != self.term:
            return False
        self._uncommitted_bytes -= self.log.size_of(self.log.committed + 1, idx + 1)
        self._uncommitted_bytes = max(self._uncommitted_bytes, 0)
        self.log.commit_to(idx)
        if self.cfg.eager_commit:
            self._bcast_commit = True
        if not self._committed_in_term:
            self._committed_in_term = True
            waiting, self._reads_before_commit = self._reads_before_commit, []
            for ctx, req in waiting:
                self._leader_read(ctx, req)
            retries, self._retries_before_commit = self._retries_before_commit, []
            for data, ctx, since, req in retries:
                self._retry(data, ctx, since, req)
        if idx >= self.confs.last_index:
            if conf.joint:
                # C_old,new is committed: append C_new, which needs only the new majority.
                self._append_conf(None, leave_joint(conf))
            elif self.id not in voters:
                # Our removal is committed: tell the others, then step down (thesis §4.2.2).
                self._bcast_commit = True
                self._flush()
                self._become_follower(self.term, None)
        return True

    def _apply_conf(self, index: int, conf: ConfState) -> None:
        self.confs.append(index, conf)
        if self.role is not Role.LEADER:
            return
        last = self.log.last_index()
        for nid in sorted(conf.members()):
            if nid not in self.prs:
                self.prs[nid] = Progress(last)
        for nid in [n for n in self.prs if not conf.is_member(n) and n != self.id]:
            del self.prs[nid]
            self._read_acks.pop(nid, None)
        if self.lead_transferee is not None and self.lead_transferee not in conf.voters:
            self.lead_transferee = None

    def _flush(self) -> None:
        if self.role is not Role.LEADER:
            return
        if self._bcast_entries or self._bcast_commit:
            commit = self._bcast_commit
            for nid in self.prs:
                if nid != self.id:
                    self._send_append(nid, send_if_empty=commit)
                    while self._send_append(nid, send_if_empty=False):
                        pass
            self._bcast_entries = self._bcast_commit = False
        if self._bcast_read:
            self._bcast_heartbeat()

    # ------------------------------------------------------------------ output

    def has_ready(self) -> bool:
        """True if :meth:`ready` would return something to do."""
        log = self.log
        return bool(
            self._msgs
            or self._bcast_entries
            or self._bcast_commit
            or self._bcast_read
            or log.in_progress <= log.last_index()
            or log.pending_snapshot is not None
            or log.committed > max(log.applied, log.snap_index)
            or self._read_states
            or self._dropped_reads
            or self._placements
            or self._hard_state() != self._prev_hs
        )

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def ready(self) -> Ready:
        """Collect the pending outputs. Handle them as :class:`Ready` says, then :meth:`advance`."""
        self._flush()
        hs = self._hard_state()
        log = self.log
        prev = self._prev_hs  # its term and vote are durable (saved before advance())
        rd = Ready(
            hard_state=hs if hs != prev else None,
            entries=tuple(log.entries_to_persist()),
            snapshot=log.pending_snapshot,
            messages=tuple(self._msgs),
            committed_entries=tuple(log.next_committed(_MAX_APPLY_BYTES)),
            read_states=tuple(self._read_states),
            dropped_reads=tuple(self._dropped_reads),
            placements=tuple(self._placements),
            # A leader in a durable term (and vote) only sends its own log and commit index:
            # nothing it sends depends on this Ready's writes (see Ready.send_before_persist).
            send_before_persist=self.role is Role.LEADER
            and hs.term == prev.term
            and hs.vote == prev.vote
            and log.pending_snapshot is None,
        )
        self._msgs = []
        self._read_states = []
        self._dropped_reads = []
        self._placements = []
        return rd

    def advance(self, rd: Ready, *, entries_durable: bool = True) -> None:
        """The driver finished ``rd``: its writes are durable and its entries applied.

        ``entries_durable=False`` lets a leader write ``rd.entries`` in the background (thesis
        §10.2.1, etcd's asynchronous storage writes): everything else in ``rd`` is done, its
        entries are handed to storage but not durable yet. They count for the leader only
        once the driver reports them with :meth:`persisted`; meanwhile the core may be stepped
        and ticked, and later ``Ready`` values carry only newer entries. Allowed only for a
        ``Ready`` with :attr:`~phalanx_aio.core.ready.Ready.send_before_persist` (no term or
        vote to save, no snapshot); storage must make writes durable in the order given.
        """
        log = self.log
        if not entries_durable and not rd.send_before_persist:
            raise LocalError("only a Ready with send_before_persist may leave its entries in flight")
        if rd.hard_state is not None:
            self._prev_hs = rd.hard_state
        if rd.snapshot is not None:
            if log.pending_snapshot is rd.snapshot:
                log.pending_snapshot = None
            log.applied = max(log.applied, rd.snapshot.meta.index)
        if rd.entries:
            last = rd.entries[-1]
            if entries_durable:
                self.persisted(last.index, last.term)
            else:
                log.accept_to(last.index, last.term)
        if rd.committed_entries:
            log.applied = max(log.applied, rd.committed_entries[-1].index)

    def persisted(self, index: int, term: int) -> None:
        """Storage made the entries up to ``(term, index)`` durable (after an :meth:`advance`
        with ``entries_durable=False``). Ignored if the log no longer holds that entry
        (overwritten since) or already counts it. A leader counts its own copy from now on,
        which may commit entries: check :meth:`has_ready` afterwards."""
        log = self.log
        log.stable_to(index, term)
        me = self.prs.get(self.id) if self.role is Role.LEADER else None
        if me is not None and me.maybe_update(log.unstable - 1):
            self._maybe_commit()  # our own durable copy may complete a quorum


def _remember(asked: dict[bytes, tuple[str, int]], context: bytes, value: tuple[str, int]) -> None:
    """Record what was asked of whom for ``context``, forgetting the oldest past _MAX_ASKED."""
    asked.pop(context, None)
    if len(asked) >= _MAX_ASKED:
        del asked[next(iter(asked))]
    asked[context] = value
