"""Log replication in :class:`~phalanx_aio.core.raft.Raft` (private): the follower's side (append,
heartbeat and snapshot messages received) and the leader's (appends and heartbeats sent, the
commit index advanced, configurations applied, broadcasts flushed).

A mixin, like :mod:`~phalanx_aio.core._elections`. The hot paths (appends, their answers,
heartbeats) are these methods as they were in ``raft.py``.
"""

from __future__ import annotations

from phalanx_aio.core._raft_base import (
    _APP,
    _APP_RESP,
    _HEARTBEAT,
    _HEARTBEAT_RESP,
    _RTT_ROUNDS_KEPT,
    _SNAP,
    RaftState,
    Role,
)
from phalanx_aio.core.membership import (
    ConfHistory,
    decode_conf,
    leave_joint,
)
from phalanx_aio.core.progress import Progress
from phalanx_aio.core.quorum import joint_quorum_index
from phalanx_aio.core.types import (
    ConfState,
    EntryType,
    Message,
)

__all__ = ["Replication"]


class Replication(RaftState):
    """Appending, sending and committing entries."""

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
