"""The leader's own copy of an entry counts towards a commit only once it is durable.

Thesis §10.2.1 lets a leader send its entries to followers before (or while) it writes them
to its own disk. That is safe only if the leader counts itself in the quorum once its write
is durable; the core learns that from ``advance()``. ``Ready.send_before_persist`` says when
a driver may send first. These tests check the rule directly, then drive networks whose
leaders send first and sometimes crash between sending and persisting.
"""

from __future__ import annotations

import random

import pytest

from phalanx_aio.core import Entry, Message, MessageType, Raft, Ready
from phalanx_aio.core.membership import ConfChange, ConfChangeType
from phalanx_aio.errors import LocalError
from tests.core.harness import PAPER, Network, by_type, drain, elect, new_raft

LAN = PAPER.replace(pre_vote=True, check_quorum=True)


def leader_with_acked_noop() -> Raft:
    """A leader of three whose followers both acknowledged its no-op (so they left probing)."""
    r = new_raft("1", 3)
    elect(r)
    for peer in ("2", "3"):
        r.step(Message(MessageType.APP_RESP, "1", peer, r.term, index=r.log.last_index()))
    drain(r)
    return r


def test_three_voters_a_follower_ack_alone_does_not_commit_an_unpersisted_entry() -> None:
    r = leader_with_acked_noop()
    r.propose(b"x")
    rd = r.ready()
    (entry,) = rd.entries
    assert rd.send_before_persist
    assert len(by_type(rd.messages, MessageType.APP)) == 2
    # A pipelining driver steps a follower's acknowledgement before its own write is done:
    # one durable copy out of three is not a quorum.
    r.step(Message(MessageType.APP_RESP, "1", "2", r.term, index=entry.index))
    assert r.log.committed < entry.index
    r.advance(rd)  # the leader's write is durable now: 2 of 3
    assert r.log.committed == entry.index


def test_single_voter_commits_only_after_advance_and_tells_learners_nothing_early() -> None:
    net = Network.bootstrap(1, LAN)
    net.campaign("1")
    net["1"].propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, "2", b"a2"))
    net.add("2")
    net.stabilize()
    r = net["1"]
    r.propose(b"x")
    rd = r.ready()
    (entry,) = rd.entries
    assert rd.send_before_persist
    assert entry.index not in [e.index for e in rd.committed_entries]
    apps = by_type(rd.messages, MessageType.APP)
    assert apps and all(m.commit < entry.index for m in apps)
    net.nodes["1"].store.persist(rd)
    r.advance(rd)
    assert r.log.committed == entry.index
    net.stabilize()
    assert net.applied("2")[-1] == b"x"


def test_only_a_leader_in_a_durable_term_may_send_first() -> None:
    r = new_raft("1", 3)
    r.campaign(transfer=True)  # no pre-vote: term 2, vote for itself
    rd = r.ready()
    assert rd.hard_state is not None and by_type(rd.messages, MessageType.VOTE)
    assert not rd.send_before_persist  # the vote must be durable before it is asked for
    r.advance(rd)
    for peer in ("2", "3"):
        if not r.is_leader:
            r.step(Message(MessageType.VOTE_RESP, "1", peer, r.term))
    assert r.is_leader
    rd = r.ready()
    assert rd.send_before_persist  # term and vote already durable: the no-op may go first
    r.advance(rd)

    f = new_raft("2", 3)
    f.step(Message(MessageType.APP, "2", "1", 2, index=1, log_term=1, commit=1))
    rd = f.ready()
    assert by_type(rd.messages, MessageType.APP_RESP)
    assert not rd.send_before_persist  # a follower's acknowledgement promises a durable log
    f.advance(rd)
    f.step(Message(MessageType.HEARTBEAT, "2", "1", 2, commit=1))
    assert not f.ready().send_before_persist


class SendFirstNetwork(Network):
    """A network whose nodes send first when ``Ready.send_before_persist`` allows it, and whose
    leaders sometimes crash right after sending, before their write is durable."""

    def __init__(self, *args: object, crash_p: float, rng: random.Random, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.crash_p = crash_p
        self.crash_rng = rng
        self.crashes = 0
        self.early = 0

    def collect(self, nid: str) -> list[Message]:
        out: list[Message] = []
        while nid not in self.down and self.nodes[nid].raft.has_ready():
            raft = self.nodes[nid].raft
            rd = raft.ready()
            if not rd.send_before_persist:
                out.extend(self._finish(nid, rd))
                continue
            self.early += 1
            self.send(rd.messages)
            if rd.entries and self.crash_rng.random() < self.crash_p:
                self.crashes += 1
                self.crash(nid)  # the entries never reached this node's disk
                break
            self._finish(nid, rd)
        return out

    def _finish(self, nid: str, rd: Ready) -> list[Message]:
        """The rest of the Ready contract for an already collected ``rd``."""
        raft = self.nodes[nid].raft
        raft.ready = lambda: rd  # type: ignore[method-assign]  # hand handle_ready this Ready
        try:
            return self.handle_ready(nid)
        finally:
            del raft.ready


def _run(net: SendFirstNetwork, voters: list[str], rng: random.Random, steps: int) -> None:
    lives = dict.fromkeys(net.nodes, 0)
    proposed = 0
    for _ in range(steps):
        for nid in sorted(net.down):
            lives[nid] += 1
            net.restart(nid, lives[nid])
        leaders = net.leaders()
        if leaders and rng.random() < 0.6:
            proposed += 1
            net.nodes[leaders[0]].raft.propose_many([b"c%d" % proposed] * rng.randint(1, 3))
        net.pump()
        if not leaders or rng.random() < 0.1:
            for nid in sorted(net.nodes):
                if nid not in net.down:
                    net.tick(nid)
        # Every committed entry of the current term is durable on a majority of voters.
        for lead in net.leaders():
            r = net[lead]
            c = r.log.committed
            if c and r.log.term(c) == r.term:
                holders = sum(
                    1
                    for v in voters
                    if any(e.index == c and e.term == r.term for e in net.nodes[v].store.entries)
                )
                assert holders >= len(voters) // 2 + 1, f"index {c} committed on {holders} disks"


def send_first_network(voters: int, seed: int) -> SendFirstNetwork:
    """A bootstrapped network of ``voters`` whose leaders send first; node 1 has won, and no
    crashes yet."""
    net = SendFirstNetwork(LAN, seed, crash_p=0.0, rng=random.Random(seed + 100))
    net.nodes.update(Network.bootstrap(voters, LAN, seed).nodes)
    net.campaign("1")
    return net


def test_single_voter_with_learner_crashing_between_send_and_persist_stays_safe() -> None:
    for seed in range(6):
        rng = random.Random(seed)
        net = send_first_network(1, seed)
        net["1"].propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, "2", b"a2"))
        net.add("2")
        net.stabilize()
        assert net.nodes["2"].raft.log.last_index() == net["1"].log.last_index()
        net.crash_p = 0.3
        _run(net, ["1"], rng, 300)
        assert net.crashes > 5 and net.early > 20
        assert net.applied("2"), "the learner applied nothing: the test exercised nothing"


def test_three_voters_crashing_between_send_and_persist_stay_safe() -> None:
    for seed in range(6):
        rng = random.Random(seed)
        net = send_first_network(3, seed)
        net.crash_p = 0.15
        _run(net, ["1", "2", "3"], rng, 400)
        assert net.crashes > 3 and net.early > 20
        assert max(len(net.applied(n)) for n in net.nodes) > 10


# ---------------------------------------------------------------- writes left in the background


def leader_writing_x() -> tuple[Raft, Entry]:
    """A leader that proposed ``x`` and left its entry to a background write."""
    r = leader_with_acked_noop()
    r.propose(b"x")
    rd = r.ready()
    (entry,) = rd.entries
    r.advance(rd, entries_durable=False)  # the driver writes it in the background
    return r, entry


def test_background_write_counts_only_once_persisted_and_is_not_handed_out_again() -> None:
    r, entry = leader_writing_x()
    assert r.prs["1"].match < entry.index and r.log.unstable == entry.index
    r.propose(b"y")
    rd2 = r.ready()
    assert [e.data for e in rd2.entries] == [b"y"]  # only what was not handed out yet
    r.advance(rd2, entries_durable=False)
    assert not r.has_ready()
    # One follower's ack: 2 durable copies of 3 are needed, the leader's does not count yet.
    r.step(Message(MessageType.APP_RESP, "1", "2", r.term, index=entry.index + 1))
    assert r.log.committed < entry.index
    r.persisted(entry.index, entry.term)  # the first background write is durable
    assert r.prs["1"].match == entry.index and r.log.committed == entry.index
    r.persisted(entry.index, entry.term)  # a repeated report changes nothing
    assert r.log.unstable == entry.index + 1
    r.persisted(entry.index + 1, entry.term)
    assert r.log.committed == entry.index + 1
    assert [e.data for e in r.ready().committed_entries] == [b"x", b"y"]


def test_a_follower_quorum_commits_while_the_leaders_write_is_in_flight() -> None:
    r, entry = leader_writing_x()
    for peer in ("2", "3"):
        r.step(Message(MessageType.APP_RESP, "1", peer, r.term, index=entry.index))
    assert r.log.committed == entry.index  # two durable copies, neither the leader's
    applied = r.ready()
    assert [e.data for e in applied.committed_entries] == [b"x"] and not applied.entries
    r.advance(applied)
    with pytest.raises(LocalError, match="not persisted"):
        r.compact(entry.index, b"state")  # its own copy is not durable: no snapshot over it


def test_a_stale_persisted_report_for_an_overwritten_entry_is_ignored() -> None:
    r, entry = leader_writing_x()
    # A new leader (term + 1) overwrites the entry before the old write reports.
    new = Entry(r.term + 1, entry.index, data=b"z")
    r.step(
        Message(
            MessageType.APP,
            "1",
            "2",
            r.term + 1,
            log_term=r.log.term(entry.index - 1) or 0,
            index=entry.index - 1,
            entries=(new,),
            commit=entry.index - 1,
        )
    )
    rd2 = r.ready()
    assert not rd2.send_before_persist and rd2.entries == (new,)
    r.advance(rd2)
    r.persisted(entry.index, entry.term)  # the old write's late report
    assert r.log.term(entry.index) == new.term and r.log.unstable == entry.index + 1


def test_only_a_send_first_ready_may_leave_its_entries_in_flight() -> None:
    r = new_raft("1", 3)
    r.campaign()
    rd = r.ready()  # a candidate's: its term and vote must be durable first
    assert not rd.send_before_persist
    with pytest.raises(LocalError, match="send_before_persist"):
        r.advance(rd, entries_durable=False)
