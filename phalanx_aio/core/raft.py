"""The Raft state machine: one object per node, driven by ``tick``, ``step`` and the proposal
calls, emitting :class:`~phalanx_aio.core.ready.Ready` batches. Sans-IO and deterministic.

Section numbers refer to the Raft paper (Ongaro and Ousterhout, 2014) and thesis (Ongaro, 2014).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from phalanx_aio.core._elections import Elections
from phalanx_aio.core._proposals import Proposals
from phalanx_aio.core._raft_base import (
    _APP,
    _APP_RESP,
    _HEARTBEAT,
    _HEARTBEAT_RESP,
    _MAX_APPLY_BYTES,
    _NOT_LEADER,
    _PRE_VOTE,
    _PRE_VOTE_RESP,
    _PROP,
    _PROP_RESP,
    _READ_INDEX,
    _READ_INDEX_RESP,
    _SNAP,
    _TIMEOUT_NOW,
    _UNCHECKED,
    _VOTE,
    Role,
)
from phalanx_aio.core._reads import Reads
from phalanx_aio.core._replication import Replication
from phalanx_aio.core.config import Config
from phalanx_aio.core.log import RaftLog
from phalanx_aio.core.membership import (
    ConfHistory,
    decode_conf,
    encode_conf,
)
from phalanx_aio.core.progress import Progress, ProgressState
from phalanx_aio.core.ready import Ready
from phalanx_aio.core.types import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    InitialState,
    Message,
    Placement,
    ReadState,
    Snapshot,
    SnapshotMeta,
)
from phalanx_aio.errors import LocalError, NotLeader, ProposalDropped, ProtocolError, StorageError

__all__ = ["InitialState", "ProgressInfo", "Raft", "Role", "Status", "bootstrap_state"]


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


class Raft(Elections, Proposals, Reads, Replication):
    """One Raft node's protocol state. Not thread-safe; one owner calls it.

    Inputs: :meth:`tick`, :meth:`step`, :meth:`propose`, :meth:`read_index`,
    :meth:`propose_conf_change`, :meth:`transfer_leadership`, :meth:`compact`.
    Outputs: :meth:`ready` then :meth:`advance` (see :class:`Ready` for the contract).

    What :meth:`step` and :meth:`tick` dispatch to is in the mixins this class is made of, one
    concern each: elections and time, proposals, reads, replication (``core/_*.py``).
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

    # ------------------------------------------------------------------ transfer, reports, compaction

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
