"""Scenario tests of the extensions beyond the paper: pre-vote, check quorum, leadership
transfer, ReadIndex and lease reads, snapshots, membership changes, dropped proposals, flow
control and fast log backtracking.

Each test drives a small :class:`~harness.Network` and checks the outcome, and where the
exchange itself is the point, the golden trace of messages (see ``harness.fmt``).
"""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from harness import Network, by_type, drain, fmt, ids, log_state

from phalanx_aio.core import (
    ConfChange,
    ConfChangeType,
    Config,
    Entry,
    EntryType,
    HardState,
    InitialState,
    Message,
    MessageType,
    Raft,
    ReadState,
    Role,
)
from phalanx_aio.errors import LocalError, NotLeader, ProposalDropped

APP = MessageType.APP
APP_RESP = MessageType.APP_RESP
HEARTBEAT = MessageType.HEARTBEAT
HEARTBEAT_RESP = MessageType.HEARTBEAT_RESP
SNAP = MessageType.SNAP
VOTE = MessageType.VOTE
PRE_VOTE = MessageType.PRE_VOTE
TIMEOUT_NOW = MessageType.TIMEOUT_NOW

# Pre-vote and check quorum on; commit broadcast at once, as in etcd (the golden traces show it;
# test_lazy_commit covers the presets' lazy mode).
LAN = Config.lan(eager_commit=True)
ET = LAN.election_ticks

ADD_LEARNER = ConfChangeType.ADD_LEARNER
ADD_VOTER = ConfChangeType.ADD_VOTER
REMOVE = ConfChangeType.REMOVE


def cluster(n: int = 3, config: Config = LAN, leader: str = "1", seed: int = 0) -> Network:
    """A bootstrapped ``n``-node network where ``leader`` won term 2 and committed its no-op."""
    net = Network.bootstrap(n, config, seed)
    net.campaign(leader)
    assert net.leaders() == [leader]
    net.take_trace()
    return net


def quiet(net: Network, nid: str) -> list[str]:
    """Handle ``nid``'s pending Ready and return its messages (formatted), without sending."""
    return [fmt(m) for m in net.collect(nid)]


# ------------------------------------------------------------------------------ pre-vote


def test_election_with_pre_vote_golden_trace() -> None:
    net = Network.bootstrap(3, LAN)
    net.campaign("1")
    assert net.take_trace() == [
        "1->2 PRE_VOTE t2 last=1/1",
        "1->3 PRE_VOTE t2 last=1/1",
        "2->1 PRE_VOTE_RESP t2 granted",
        "3->1 PRE_VOTE_RESP t2 granted",
        # The real election after a won pre-vote is *not* a transfer: stickiness applies.
        "1->2 VOTE t2 last=1/1",
        "1->3 VOTE t2 last=1/1",
        "2->1 VOTE_RESP t2 granted",
        "3->1 VOTE_RESP t2 granted",
        "1->2 APP t2 prev=1/1 [2/2] commit=1",
        "1->3 APP t2 prev=1/1 [2/2] commit=1",
        "2->1 APP_RESP t2 index=2",
        "3->1 APP_RESP t2 index=2",
        "1->2 APP t2 prev=2/2 [] commit=2",
        "1->3 APP t2 prev=2/2 [] commit=2",
        "2->1 APP_RESP t2 index=2",
        "3->1 APP_RESP t2 index=2",
    ]


def test_partitioned_node_does_not_raise_its_term_and_rejoins_quietly() -> None:
    net = cluster()
    net.isolate("3")
    net.tick_all(5 * ET)
    assert net["3"].term == 2  # pre-votes never raise the term
    assert net["3"].role is Role.PRE_CANDIDATE
    net.heal()
    net.tick_all(3 * ET)
    assert net.leaders() == ["1"]
    assert [net[n].term for n in ids(3)] == [2, 2, 2]
    assert net["3"].role is Role.FOLLOWER and net["3"].leader == "1"


def test_without_pre_vote_a_rejoining_node_disrupts_the_leader() -> None:
    # The contrast that shows why pre-vote exists (and that the test above has teeth).
    net = cluster(config=LAN.replace(pre_vote=False))
    net.isolate("3")
    net.tick_all(5 * ET)
    assert net["3"].term > 2
    net.heal()
    net.tick_all(3 * ET)
    assert all(net[n].term > 2 for n in ids(3))


def test_node_behind_on_log_cannot_win_pre_votes() -> None:
    net = cluster(config=LAN.replace(check_quorum=False))
    net.isolate("3")
    net.propose("1", b"a", b"b")
    net.heal()
    net.isolate("1")
    net["3"].campaign()
    net.stabilize()
    assert "2->3 PRE_VOTE_RESP t2 REJECT" in net.take_trace()
    assert net["3"].role is Role.PRE_CANDIDATE
    assert (net["2"].term, net["3"].term) == (2, 2)  # nobody raised a term
    net.campaign("2")  # the up-to-date node wins
    assert "2" in net.leaders() and net["2"].term == 3
    assert net.applied("3") == [b"a", b"b"]


def test_pre_vote_winner_campaigns_without_bypassing_stickiness() -> None:
    """A node wins a pre-vote from node 2, which then hears from the live leader again; the
    real VOTE that follows must not be treated as a leadership transfer by node 2."""
    net = cluster()
    net.cut.update({("1", "2"), ("2", "1"), ("1", "3"), ("3", "1")})
    for _ in range(ET):
        net["2"].tick()
    net.collect("2")  # whatever 2 sent while cut off is lost
    net["3"].campaign()
    for m in net.collect("3"):
        net.deliver(m)  # PRE_VOTE: 2 grants, 1 is unreachable
    for m in net.collect("2"):
        net.deliver(m)
    assert net["3"].role is Role.CANDIDATE
    votes = by_type(net.collect("3"), VOTE)
    assert [m.transfer for m in votes] == [False, False]
    net.cut -= {("1", "2"), ("2", "1")}
    net.tick("1")  # the leader's heartbeat reaches 2 before 3's vote request does
    net.stabilize()
    assert net["2"].leader == "1"
    for m in votes:
        net.deliver(m)
    assert net.collect("2") == []  # ignored: 2 heard from its leader within the timeout
    net.stabilize()
    assert (net["2"].leader, net["2"].term, net["2"].vote) == ("1", 2, "1")
    assert net.leaders() == ["1"] and net["3"].role is Role.CANDIDATE


# -------------------------------------------------------------------------- check quorum


def test_isolated_leader_steps_down_within_two_election_timeouts() -> None:
    net = cluster()
    net.isolate("1")
    for _ in range(ET - 1):
        net["1"].tick()
    assert net["1"].is_leader
    for _ in range(ET + 1):
        net["1"].tick()
    assert net["1"].role is Role.FOLLOWER
    assert net["1"].term == 2


def test_leader_with_a_quorum_keeps_leading() -> None:
    net = cluster(5)
    net.isolate("4")
    net.isolate("5")
    net.tick_all(10 * ET)
    assert net.leaders() == ["1"] and net["1"].term == 2


def test_followers_ignore_vote_requests_while_their_leader_is_alive() -> None:
    net = cluster(config=LAN.replace(pre_vote=False))
    net["3"].campaign()
    votes = by_type(net.collect("3"), VOTE)
    assert len(votes) == 2 and net["3"].term == 3
    for m in votes:
        net.deliver(m)
    assert net.collect("2") == [] and net.collect("1") == []  # no answer at all
    assert (net["2"].term, net["2"].vote, net["2"].leader) == (2, "1", "1")
    assert net["1"].is_leader


def test_transfer_vote_bypasses_stickiness() -> None:
    net = cluster(config=LAN.replace(pre_vote=False))
    net["2"].step(Message(VOTE, "2", "3", 3, log_term=2, index=2, transfer=True))
    assert [fmt(m) for m in net.collect("2")] == ["2->3 VOTE_RESP t3 granted"]
    assert (net["2"].term, net["2"].vote) == (3, "3")


def test_follower_votes_again_once_the_leader_is_silent_for_an_election_timeout() -> None:
    net = cluster(config=LAN.replace(pre_vote=False))
    net.isolate("1")
    for _ in range(ET):
        net["2"].tick()
    net.collect("2")
    net["2"].step(Message(VOTE, "2", "3", 3, log_term=2, index=2))
    assert [fmt(m) for m in net.collect("2")] == ["2->3 VOTE_RESP t3 granted"]


# -------------------------------------------------------------------- leadership transfer


def test_transfer_to_a_caught_up_follower_golden_trace() -> None:
    net = cluster()
    net["1"].transfer_leadership("2")
    net.stabilize()
    assert net.leaders() == ["2"] and net["2"].term == 3
    assert net.take_trace()[:5] == [
        "1->2 TIMEOUT_NOW t2",
        "2->1 VOTE t3 last=2/2 transfer",
        "2->3 VOTE t3 last=2/2 transfer",
        "1->2 VOTE_RESP t3 granted",
        "3->2 VOTE_RESP t3 granted",
    ]


def test_transfer_to_a_lagging_follower_catches_it_up_first() -> None:
    net = cluster()
    net.isolate("3")
    net.propose("1", *[b"x%d" % i for i in range(10)])
    net.heal()
    net["1"].transfer_leadership("3")
    net.stabilize()
    trace = net.take_trace()
    assert net.leaders() == ["3"]
    caught_up = trace.index("3->1 APP_RESP t2 index=12")
    assert trace.index("1->3 TIMEOUT_NOW t2") > caught_up
    assert net.applied("3") == [b"x%d" % i for i in range(10)]


def test_proposals_are_refused_during_a_transfer_until_it_times_out() -> None:
    net = cluster()
    net.isolate("3")
    leader = net["1"]
    leader.transfer_leadership("3")
    net.stabilize()
    assert leader.status().lead_transferee == "3"
    with pytest.raises(ProposalDropped, match="transfer"):
        leader.propose(b"x")
    with pytest.raises(ProposalDropped, match="transfer"):
        leader.propose_conf_change(ConfChange(REMOVE, "2"))
    last = leader.log.last_index()
    net.propose("2", b"forwarded")  # a follower's forwarded proposal is dropped too
    assert leader.log.last_index() == last
    net.tick_all(ET)  # aborted after an election timeout
    assert leader.is_leader and leader.status().lead_transferee is None
    assert leader.propose(b"y") == (2, last + 1)


def test_transfer_is_refused_to_non_voters_and_by_followers() -> None:
    net = cluster()
    with pytest.raises(ProposalDropped):
        net["1"].transfer_leadership("9")
    with pytest.raises(NotLeader) as err:
        net["2"].transfer_leadership("3")
    assert err.value.leader_id == "1"
    net["1"].transfer_leadership("1")  # to itself: nothing to do
    assert net["1"].status().lead_transferee is None and net.collect("1") == []


# ------------------------------------------------------------------------------ ReadIndex


def test_read_waits_for_the_leader_to_commit_in_its_term() -> None:
    net = Network.bootstrap(3, LAN)
    net.dropped_types.add(APP_RESP)  # the no-op cannot commit
    net.campaign("1")
    leader = net["1"]
    assert leader.is_leader and leader.log.committed == 1
    leader.read_index(b"r")
    net.tick_all(3)  # heartbeats are acknowledged, but the read must still wait
    assert net.nodes["1"].read_states == []
    net.heal()
    net.tick_all(2)
    assert net.nodes["1"].read_states == [ReadState(2, b"r")]


def test_reads_waiting_for_the_first_commit_are_dropped_if_leadership_is_lost() -> None:
    net = Network.bootstrap(3, LAN)
    net.dropped_types.add(APP_RESP)
    net.campaign("1")
    net["1"].read_index(b"early")
    net["1"].step(Message(HEARTBEAT, "1", "2", 7, commit=1))  # a leader of a later term
    net.collect("1")
    assert net["1"].role is Role.FOLLOWER
    assert net.nodes["1"].dropped_reads == [b"early"] and net.nodes["1"].read_states == []


def test_single_voter_grows_to_two_and_then_needs_both() -> None:
    net = Network.bootstrap(1, LAN)
    net.campaign("1")
    net.propose("1", b"alone")
    assert net.applied("1") == [b"alone"]
    net["1"].propose_conf_change(ConfChange(ADD_VOTER, "2"))
    net.add("2")
    net.stabilize()
    net.tick_all(1)
    assert net["2"].conf.voters == {"1", "2"} and net.applied("2") == [b"alone"]
    net.isolate("2")
    net.propose("1", b"together")
    assert net.applied("1") == [b"alone"]  # one of two voters is not a majority
    net.heal()
    net.tick_all(1)
    assert net.applied("1") == net.applied("2") == [b"alone", b"together"]


def test_read_needs_a_quorum_of_heartbeat_acknowledgements() -> None:
    net = cluster()
    net.propose("1", b"a")
    net.take_trace()
    net["1"].read_index(b"r")
    hbs = by_type(net.collect("1"), HEARTBEAT)
    assert sorted(fmt(m) for m in hbs) == [
        "1->2 HEARTBEAT t2 commit=3 seq=1",
        "1->3 HEARTBEAT t2 commit=3 seq=1",
    ]
    assert net.nodes["1"].read_states == []
    net.deliver(hbs[0])
    (resp,) = net.collect(hbs[0].to)
    assert resp.type is HEARTBEAT_RESP
    net.deliver(resp)  # leader + one follower: a quorum of three
    net.collect("1")
    assert net.nodes["1"].read_states == [ReadState(3, b"r")]


def test_read_registered_before_a_heartbeat_round_needs_a_later_round() -> None:
    net = cluster()
    net.tick("1")
    old = by_type(net.collect("1"), HEARTBEAT)  # round 1 is in flight
    net["1"].read_index(b"r")
    for m in old:
        net.deliver(m)
    for nid in ("2", "3"):
        for m in net.collect(nid):
            net.deliver(m)
    net.send(net.collect("1"))  # round 2 goes out
    # The acknowledgements of round 1 left before the read: they prove nothing about it.
    assert net.nodes["1"].read_states == []
    net.stabilize()
    assert net.nodes["1"].read_states == [ReadState(2, b"r")]


def test_follower_read_is_forwarded_to_the_leader() -> None:
    net = cluster()
    net.propose("1", b"a")
    net.take_trace()
    net["2"].read_index(b"f")
    net.stabilize()
    assert net.nodes["2"].read_states == [ReadState(3, b"f")]
    trace = net.take_trace()
    assert trace[0] == "2->1 READ_INDEX t0 ctx=f"
    assert trace[-1] == "1->2 READ_INDEX_RESP t2 ctx=f index=3"


def test_partitioned_leader_never_answers_and_drops_reads_when_it_steps_down() -> None:
    net = cluster()
    net.isolate("1")
    net["1"].read_index(b"r")
    net.collect("1")
    for _ in range(2 * ET):
        assert net.nodes["1"].read_states == []
        net["1"].tick()
        net.collect("1")
    assert net["1"].role is Role.FOLLOWER
    assert net.nodes["1"].dropped_reads == [b"r"]


def test_reads_are_dropped_when_the_leader_learns_of_a_newer_term() -> None:
    net = cluster()
    net.isolate("1")
    net["1"].read_index(b"mine")
    net.nodes["2"].raft.read_index(b"forwarded")
    net.collect("2")  # lost in the partition
    net.collect("1")
    net["1"].step(Message(MessageType.READ_INDEX, "1", "3", 0, context=b"fwd"))
    net["1"].step(Message(APP_RESP, "1", "2", 5))
    assert net["1"].role is Role.FOLLOWER
    out = net.collect("1")
    assert net.nodes["1"].dropped_reads == [b"mine"]
    assert [fmt(m) for m in out] == ["1->3 READ_INDEX_RESP t5 ctx=fwd REJECT"]


def test_follower_reads_fail_fast_without_a_leader() -> None:
    net = Network.bootstrap(3, LAN)
    with pytest.raises(NotLeader):
        net["2"].read_index(b"r")
    net = cluster(config=LAN.replace(forward_proposals=False))
    with pytest.raises(NotLeader):
        net["2"].read_index(b"r")


def test_single_voter_reads_are_answered_at_once() -> None:
    net = Network.bootstrap(1, LAN)
    net.campaign("1")
    net["1"].read_index(b"r")
    assert quiet(net, "1") == []
    assert net.nodes["1"].read_states == [ReadState(2, b"r")]


LEASE = LAN.replace(read_mode="lease")


def test_lease_read_is_answered_without_a_round_while_the_lease_holds() -> None:
    net = cluster(config=LEASE)
    net.tick_all(1)  # a heartbeat round acknowledged by a quorum: the lease starts
    net["1"].read_index(b"r")
    assert quiet(net, "1") == []  # no heartbeat needed
    assert net.nodes["1"].read_states == [ReadState(2, b"r")]
    # Cut off, the lease runs out after election_ticks - lease_margin_ticks.
    net.isolate("1")
    lease = LEASE.election_ticks - LEASE.lease_margin_ticks
    for _ in range(lease - 1):
        net["1"].tick()
    net.collect("1")
    net["1"].read_index(b"in")
    net.collect("1")
    assert net.nodes["1"].read_states[-1] == ReadState(2, b"in")
    net["1"].tick()
    net.collect("1")
    net["1"].read_index(b"out")
    net.collect("1")
    assert net.nodes["1"].read_states[-1].context == b"in"  # "out" waits for a round


def test_lease_is_void_once_leadership_transfer_began() -> None:
    """TIMEOUT_NOW lets the target win without waiting for followers' stickiness, so the
    old leader's lease no longer guarantees that nobody else leads."""
    net = cluster(config=LEASE)
    net.tick_all(1)
    net["1"].transfer_leadership("2")
    (timeout_now,) = net.collect("1")
    assert timeout_now.type is TIMEOUT_NOW
    net.isolate("1")
    net["2"].step(timeout_now)
    net.stabilize()
    assert net["2"].is_leader and net["2"].term == 3
    net.propose("2", b"new")
    assert net.applied("3") == [b"new"]
    # Old leader, still believing it leads term 2 with a fresh lease:
    assert net["1"].is_leader
    net["1"].read_index(b"stale?")
    net.collect("1")
    assert net.nodes["1"].read_states == []


# ------------------------------------------------------------------------------ snapshots


def test_compact_moves_the_first_index_and_checks_its_argument() -> None:
    net = cluster()
    net.propose("1", b"a", b"b", b"c")
    snap = net.compact("1", 4)
    assert (snap.meta.index, snap.meta.term) == (4, 2)
    assert snap.meta.conf.voters == frozenset(ids(3))
    st = net["1"].status()
    assert (st.first_index, st.last_index) == (5, 5)
    with pytest.raises(LocalError):
        net["1"].compact(4, b"")  # already compacted
    with pytest.raises(LocalError):
        net["1"].compact(6, b"")  # not applied


def test_follower_behind_the_first_index_gets_a_snapshot_then_appends() -> None:
    net = cluster()
    net.isolate("3")
    net.propose("1", *[b"a%d" % i for i in range(5)])
    net.compact("1", net["1"].log.applied)
    net.compact("2", net["2"].log.applied)
    net.heal()
    net.take_trace()
    net.tick_all(1)
    snaps = [t for t in net.take_trace() if " SNAP " in t]
    assert snaps == ["1->3 SNAP t2 snap=2/7"]
    assert net.applied("3") == net.applied("1")
    assert net["3"].status().first_index == 8
    net.propose("1", b"after")
    assert net.applied("3")[-1] == b"after"
    assert [t for t in net.take_trace() if " SNAP " in t] == []


def test_restart_from_snapshot_and_log() -> None:
    net = cluster()
    net.propose("1", b"a", b"b")
    net.compact("2", 3)
    net.propose("1", b"c")
    net.crash("2")
    node = net.restart("2")
    assert node.raft.status().first_index == 4
    assert node.applied() == [b"a"]  # from the snapshot; the rest is applied again below
    assert node.raft.log.committed == 5  # the persisted hard state
    net.stabilize()
    assert net.applied("2") == [b"a", b"b", b"c"]
    net.propose("1", b"d")
    assert net.applied("2") == [b"a", b"b", b"c", b"d"]


def test_crashed_node_keeps_its_vote() -> None:
    net = Network.bootstrap(3, LAN.replace(pre_vote=False))
    net["2"].step(Message(VOTE, "2", "3", 2, log_term=1, index=1))
    net.collect("2")
    net.crash("2")
    net.restart("2")
    net["2"].step(Message(VOTE, "2", "1", 2, log_term=1, index=1))
    (resp,) = net.collect("2")
    assert resp.reject and net["2"].vote == "3"


def test_snapshot_install_carries_the_configuration() -> None:
    net = cluster()
    net.propose("1", b"a")
    net["1"].propose_conf_change(ConfChange(ADD_LEARNER, "4", b"addr4"))
    net.stabilize()
    net.propose("1", b"b")
    net.compact("1", net["1"].log.applied)
    net.add("4")
    net.stabilize()
    net.tick_all(1)
    conf = net["4"].conf
    assert conf.learners == {"4"} and conf.context("4") == b"addr4"
    assert net.applied("4") == [b"a", b"b"]


# ----------------------------------------------------------------------------- membership


def test_learner_receives_the_log_but_never_votes_or_counts() -> None:
    net = Network.bootstrap(2, LAN)
    net.campaign("1")
    net.propose("1", b"a")
    net["1"].propose_conf_change(ConfChange(ADD_LEARNER, "3"))
    net.add("3")
    net.stabilize()
    net.tick_all(1)
    assert net.applied("3") == [b"a"]
    assert net["3"].conf.learners == {"3"} and net["1"].conf.voters == {"1", "2"}
    # Its acknowledgements do not count: with voter 2 away nothing commits.
    net.isolate("2")
    committed = net["1"].log.committed
    net.propose("1", b"b")
    assert net["3"].log.last_index() == committed + 1
    assert net["1"].log.committed == committed
    # It never campaigns, and nobody asks it for a vote.
    net.heal()
    net.isolate("1")
    net.take_trace()
    net.tick_all(5 * ET)
    assert net["3"].role is Role.FOLLOWER and net["3"].term == 2
    assert not any("->3 PRE_VOTE" in t or "->3 VOTE" in t for t in net.trace)


def test_promote_learner_to_voter() -> None:
    net = cluster()
    net["1"].propose_conf_change(ConfChange(ADD_LEARNER, "4", b"ctx"))
    net.add("4")
    net.stabilize()
    net.tick_all(1)
    net["1"].propose_conf_change(ConfChange(ADD_VOTER, "4"))
    net.stabilize()
    conf = net["4"].conf
    assert conf.voters == {"1", "2", "3", "4"} and not conf.learners
    assert conf.context("4") == b"ctx"  # kept across the promotion
    # Now it counts: with 2 and 3 away, 1 and 4 are not a majority of four.
    net.isolate("2")
    net.isolate("3")
    before = net["1"].log.committed
    net.propose("1", b"x")
    assert net["1"].log.committed == before
    net.heal()
    net.tick_all(1)
    assert net.applied("4") == [b"x"]


def test_add_voter_directly() -> None:
    net = cluster()
    net["1"].propose_conf_change(ConfChange(ADD_VOTER, "4"))
    net.add("4")
    net.stabilize()
    net.tick_all(1)
    assert all(net[n].conf.voters == set(ids(4)) for n in ids(4))
    net.propose("1", b"x")
    assert all(net.applied(n) == [b"x"] for n in ids(4))
    net.isolate("1")
    net.tick_all(4 * ET)
    (leader,) = net.leaders()  # elected by three of 2, 3, 4; 1 stepped down (check quorum)
    assert leader != "1" and net[leader].term > 2


def test_remove_follower() -> None:
    net = cluster()
    net["1"].propose_conf_change(ConfChange(REMOVE, "3"))
    net.stabilize()
    assert net["1"].conf.voters == {"1", "2"}
    assert set(net["1"].status().progress) == {"1", "2"}
    net.isolate("3")
    net.propose("1", b"x")
    assert net.applied("2") == [b"x"]


def test_removed_leader_steps_down_once_the_change_commits() -> None:
    net = cluster()
    net.propose("1", b"a")
    net["1"].propose_conf_change(ConfChange(REMOVE, "1"))
    assert net["1"].is_leader
    with pytest.raises(ProposalDropped, match="removed"):
        net["1"].propose(b"refused")
    net.stabilize()
    assert net["1"].role is Role.FOLLOWER
    assert all(net[n].conf.voters == {"2", "3"} for n in ids(3))
    assert all(net[n].log.committed == 4 for n in ids(3))
    net.tick_all(4 * ET)
    (leader,) = net.leaders()
    assert leader in ("2", "3")
    net.propose(leader, b"b")
    assert net.applied("2") == net.applied("3") == [b"a", b"b"]
    assert net["1"].role is Role.FOLLOWER  # it never campaigns again


def test_only_one_membership_change_may_be_pending() -> None:
    net = cluster()
    net.isolate("2")
    net.isolate("3")
    net["1"].propose_conf_change(ConfChange(ADD_LEARNER, "4"))
    with pytest.raises(ProposalDropped, match="pending"):
        net["1"].propose_conf_change(ConfChange(ADD_LEARNER, "5"))
    net.heal()
    net.tick_all(1)
    net["1"].propose_conf_change(ConfChange(ADD_LEARNER, "5"))
    net.stabilize()
    assert net["1"].conf.learners == {"4", "5"}


def test_membership_change_refused_before_the_leader_commits_in_its_term() -> None:
    net = Network.bootstrap(3, LAN)
    net.dropped_types.add(APP_RESP)
    net.campaign("1")
    with pytest.raises(ProposalDropped, match="committed"):
        net["1"].propose_conf_change(ConfChange(ADD_LEARNER, "4"))
    net.heal()
    net.tick_all(1)
    net["1"].propose_conf_change(ConfChange(ADD_LEARNER, "4"))


@pytest.mark.parametrize(
    "change",
    [
        ConfChange(ADD_VOTER, "2"),
        ConfChange(ADD_LEARNER, "2"),
        ConfChange(REMOVE, "9"),
        ConfChange(ADD_LEARNER, ""),
    ],
)
def test_invalid_membership_changes_are_refused(change: ConfChange) -> None:
    net = cluster()
    last = net["1"].log.last_index()
    with pytest.raises(ProposalDropped):
        net["1"].propose_conf_change(change)
    assert net["1"].log.last_index() == last
    with pytest.raises(NotLeader):
        net["2"].propose_conf_change(ConfChange(ADD_LEARNER, "4"))


def test_configuration_takes_effect_when_appended_and_reverts_if_truncated() -> None:
    r = Raft("2", LAN, random.Random(0), log_state(ids(3), [1], term=2))
    drain(r)
    net = cluster()
    net["1"].propose_conf_change(ConfChange(ADD_LEARNER, "4"))
    conf_entry = net["1"].log.entry(3)
    assert conf_entry.type is EntryType.CONF
    r.step(Message(APP, "2", "1", 2, log_term=1, index=1, entries=(Entry(2, 2), conf_entry)))
    assert r.conf.learners == {"4"}  # uncommitted, already in force
    r.step(Message(APP, "2", "3", 3, log_term=2, index=2, entries=(Entry(3, 3),)))
    assert r.conf.learners == frozenset() and r.conf.voters == set(ids(3))


# ---------------------------------------------------------------------- dropped proposals


def test_proposals_without_a_leader_raise_not_leader() -> None:
    net = Network.bootstrap(3, LAN)
    with pytest.raises(NotLeader) as err:
        net["1"].propose(b"x")
    assert err.value.leader_id is None
    net["1"].campaign()
    assert net["1"].role is Role.PRE_CANDIDATE
    with pytest.raises(NotLeader):
        net["1"].propose(b"x")


def test_follower_forwards_proposals_unless_told_not_to() -> None:
    net = cluster()
    assert net["2"].propose(b"x") is None
    net.stabilize()
    assert net.applied("1") == [b"x"]
    net = cluster(config=LAN.replace(forward_proposals=False))
    with pytest.raises(NotLeader) as err:
        net["2"].propose(b"x")
    assert err.value.leader_id == "1"


def test_propose_batch_answers_with_the_first_index_of_consecutive_entries() -> None:
    net = cluster()
    last = net["1"].log.last_index()
    term = net["1"].term
    assert net["1"].propose_batch([b"a", bytearray(b"b"), b"c"]) == (term, last + 1)
    assert net["1"].propose_many([b"d", b"e"]) == [(term, last + 4), (term, last + 5)]
    assert [e.data for e in net["1"].log.entries[-5:]] == [b"a", b"b", b"c", b"d", b"e"]
    assert type(net["1"].log.entries[-4].data) is bytes  # a bytearray is copied
    assert net["2"].propose_batch([b"f"]) is None  # forwarded to the leader
    net.stabilize()
    assert net.applied("3")[-6:] == [b"a", b"b", b"c", b"d", b"e", b"f"]


def test_max_uncommitted_bytes_refuses_proposals_until_entries_commit() -> None:
    net = cluster(config=LAN.replace(max_uncommitted_bytes=200))
    net.isolate("2")
    net.isolate("3")
    accepted = 0
    with pytest.raises(ProposalDropped, match="uncommitted"):
        for _ in range(10):
            net["1"].propose(b"x" * 40)  # 56 bytes each with the entry header
            accepted += 1
    assert accepted == 3
    net.heal()
    net.tick_all(1)
    assert net.applied("2") == [b"x" * 40] * 3
    net["1"].propose(b"y" * 40)  # room again


def test_a_single_oversized_proposal_is_allowed_when_nothing_is_pending() -> None:
    net = cluster(config=LAN.replace(max_uncommitted_bytes=100))
    net["1"].propose(b"z" * 1000)
    net.stabilize()
    assert net.applied("3") == [b"z" * 1000]


# --------------------------------------------------------------------------- flow control


def test_inflight_window_pauses_appends_until_acknowledged() -> None:
    net = cluster(config=LAN.replace(max_inflight_msgs=2))
    net.dropped_types.add(APP_RESP)
    sent_to_2 = 0
    for i in range(5):
        net["1"].propose(b"%d" % i)
        msgs = net.collect("1")
        sent_to_2 += sum(1 for m in msgs if m.type is APP and m.to == "2")
        net.send(msgs)
        net.stabilize()
    assert sent_to_2 == 2  # the window is full
    net.heal()
    net.tick_all(1)  # a heartbeat answer frees a slot, acknowledgements the rest
    assert net.applied("2") == [b"%d" % i for i in range(5)]


def test_inflight_bytes_window() -> None:
    net = cluster(config=LAN.replace(max_inflight_bytes=100))
    net.dropped_types.add(APP_RESP)
    sent = []
    for _ in range(4):
        net["1"].propose(b"x" * 60)
        msgs = net.collect("1")
        sent += [m for m in msgs if m.type is APP and m.to == "2"]
        net.send(msgs)
        net.stabilize()
    assert len(sent) == 2  # 76 bytes in flight: not full; 152: full
    net.heal()
    net.tick_all(1)
    assert len(net.applied("2")) == 4


def test_append_size_limits() -> None:
    net = cluster(config=LAN.replace(max_msg_entries=3, max_msg_bytes=100))
    net["1"].propose_many([b"a"] * 7)
    msgs = net.collect("1")
    apps = [m for m in msgs if m.type is APP and m.to == "2"]
    assert [len(m.entries) for m in apps] == [3, 3, 1]
    net.send(msgs)
    net.stabilize()
    net["1"].propose_many([b"b" * 30] * 3 + [b"c" * 500])
    msgs = net.collect("1")
    apps = [m for m in msgs if m.type is APP and m.to == "2"]
    assert [len(m.entries) for m in apps] == [2, 1, 1]  # 46 + 46 <= 100 < 3 * 46; a big one alone
    net.send(msgs)
    net.stabilize()
    assert len(net.applied("2")) == 11


def test_many_proposals_go_out_as_one_append_per_follower() -> None:
    net = cluster(5)
    net["1"].propose_many([b"p%d" % i for i in range(50)])
    for i in range(50, 60):
        net["1"].propose(b"p%d" % i)
    msgs = net.collect("1")
    apps = by_type(msgs, APP)
    assert sorted(m.to for m in apps) == ["2", "3", "4", "5"]
    assert all(len(m.entries) == 60 for m in apps)
    net.take_trace()
    net.send(msgs)
    net.stabilize()
    # After the acknowledgements: one commit notice per follower, no duplicates.
    notices = [t for t in net.take_trace() if t.startswith("1->") and " APP " in t][4:]
    assert sorted(t.split()[0] for t in notices) == ["1->2", "1->3", "1->4", "1->5"]
    assert all(net.applied(n) == net.applied("1") for n in ids(5))


def test_duplicate_commit_notices_are_not_sent_to_a_probing_follower() -> None:
    net = Network.bootstrap(3, LAN)
    net.campaign("1")
    # Both followers were probing; the first answer commits the no-op, and the broadcast of
    # the new commit index reaches the second one: nothing more is needed for it.
    apps = [t for t in net.take_trace() if t.startswith("1->") and " APP " in t]
    assert sorted(apps) == [
        "1->2 APP t2 prev=1/1 [2/2] commit=1",
        "1->2 APP t2 prev=2/2 [] commit=2",
        "1->3 APP t2 prev=1/1 [2/2] commit=1",
        "1->3 APP t2 prev=2/2 [] commit=2",
    ]


# ------------------------------------------------------------------------ fast backtracking


def test_long_conflicting_suffix_converges_in_few_round_trips() -> None:
    voters = ids(3)
    states = {
        "1": log_state(voters, [1] * 5 + [3] * 100, term=3),
        "2": log_state(voters, [1] * 5 + [2] * 200, term=2),
        "3": log_state(voters, [1] * 5 + [3] * 100, term=3),
    }
    net = Network.from_states(states, LAN)
    # Just restarted, the others refuse ordinary elections for an election timeout (leases
    # rely on it); a transfer campaign is not refused.
    net.campaign("1", transfer=True)
    assert net.leaders() == ["1"]
    assert net.log_terms("2") == [1] * 5 + [3] * 100 + [4]
    rejects = [t for t in net.trace if t.startswith("2->1 APP_RESP") and "REJECT" in t]
    assert 1 <= len(rejects) <= 2


def test_follower_with_a_long_stale_log_in_many_terms_converges_quickly() -> None:
    voters = ids(3)
    leader_log = [1] * 3 + [5] * 40
    follower_log = [1] * 3 + [t for t in (2, 3, 4) for _ in range(30)]
    states = {
        "1": log_state(voters, leader_log, term=5),
        "2": log_state(voters, follower_log, term=4),
        "3": log_state(voters, leader_log, term=5),
    }
    net = Network.from_states(states, LAN)
    # Just restarted, the others refuse ordinary elections for an election timeout (leases
    # rely on it); a transfer campaign is not refused.
    net.campaign("1", transfer=True)
    assert net.log_terms("2") == [*leader_log, 6]
    rejects = [t for t in net.trace if t.startswith("2->1 APP_RESP") and "REJECT" in t]
    assert len(rejects) <= 3


# ---------------------------------------------------------------------- restarts and state


def test_restart_preserves_term_vote_commit_and_log() -> None:
    net = cluster()
    net.propose("1", b"a")
    for nid in ids(3):
        net.crash(nid)
        node = net.restart(nid)
        st = node.raft.status()
        assert (st.term, st.commit, st.last_index) == (2, 3, 3)
        assert st.role is Role.FOLLOWER
    net.tick_all(4 * ET)
    (leader,) = net.leaders()
    net.propose(leader, b"b")
    assert all(net.applied(n) == [b"a", b"b"] for n in ids(3))


def test_commit_beyond_the_log_is_refused_at_start() -> None:
    state = InitialState(HardState(term=1, commit=5), entries=(Entry(1, 1),))
    with pytest.raises(LocalError):
        Raft("1", LAN, random.Random(0), state)
    with pytest.raises(LocalError):
        Raft("", LAN, random.Random(0))
    with pytest.raises(LocalError):
        Raft.bootstrap("1", LAN, random.Random(0), [])


def test_bootstrap_contexts_are_recorded() -> None:
    r = Raft.bootstrap("a", LAN, random.Random(0), {"a": b"host-a:1", "b": b"host-b:1"})
    assert r.conf.voters == {"a", "b"}
    assert r.conf.context("b") == b"host-b:1"
    rd = r.ready()
    assert rd.hard_state == HardState(term=1, vote=None, commit=1)
    assert [e.type for e in rd.entries] == [EntryType.CONF]
    assert [e.index for e in rd.committed_entries] == [1]


def test_heartbeat_round_bookkeeping_stays_bounded() -> None:
    # White-box: the leader remembers when each heartbeat round was sent (for leases and
    # reads); rounds that a quorum acknowledged must be forgotten even when no read is pending.
    for cfg in (LAN, LEASE):
        net = cluster(config=cfg)
        net.tick_all(200)
        assert len(net["1"]._round_ticks) <= 2
        net["1"].read_index(b"r")
        net.stabilize()
        assert net.nodes["1"].read_states[-1] == ReadState(2, b"r")


def test_ready_is_empty_when_nothing_happens() -> None:
    net = cluster()
    for nid in ids(3):
        assert not net[nid].has_ready()
    net["2"].tick()
    assert not net["2"].has_ready()  # a follower's tick alone produces nothing


def test_core_output_does_not_depend_on_the_hash_seed() -> None:
    """Message order must be a function of the inputs and the rng only (no set iteration)."""
    code = textwrap.dedent(
        """
        from harness import Network
        from phalanx_aio.core import Config, ConfChange, ConfChangeType
        net = Network.bootstrap(7, Config.lan(), seed=1)
        net.campaign("3")
        net["3"].propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, "x"))
        net.add("x")
        net.tick_all(3)
        net["3"].propose_many([b"a", b"b"])
        net.tick_all(2)
        print("\\n".join(net.trace))
        """
    )
    here = Path(__file__).parent
    outs = set()
    for seed in ("1", "2", "3"):
        env = {"PYTHONHASHSEED": seed, "PATH": ""}
        res = subprocess.run(
            [sys.executable, "-c", code], cwd=here, env=env, capture_output=True, text=True, check=True
        )
        assert res.stdout.count("\n") > 50
        outs.add(res.stdout)
    assert len(outs) == 1


# ------------------------------------------------------------------------ randomized faults


def _chaos(seed: int, config: Config, steps: int = 300) -> Network:
    """Random partitions, drops, reordering, crashes, proposals, reads, compactions, transfers
    and membership changes of node 6; the harness checks State Machine Safety and Election
    Safety throughout. Then heal everything and require convergence."""
    rng = random.Random(seed)
    net = Network.bootstrap(5, config, seed)
    net.reorder = random.Random(seed + 1000)
    lossy = random.Random(seed + 2000)
    net.drop_if = lambda m: lossy.random() < 0.1
    n = 0
    for _ in range(steps):
        live = [x for x in sorted(net.nodes) if x not in net.down]
        r = rng.random()
        if r < 0.04:
            nodes = sorted(net.nodes)
            rng.shuffle(nodes)
            cut = rng.randrange(1, len(nodes))
            net.cut.clear()
            net.partition(nodes[:cut], nodes[cut:])
        elif r < 0.08:
            net.cut.clear()
        elif r < 0.10 and len(net.down) < 2:
            net.crash(rng.choice(live))
        elif r < 0.14 and net.down:
            victim = sorted(net.down)[0]
            net.restart(victim, life=rng.randrange(1 << 30))
        elif r < 0.30:
            for lead in net.leaders():
                try:
                    net[lead].propose_many([b"%d" % (n + k) for k in range(rng.randrange(1, 4))])
                    n += 3
                except ProposalDropped:
                    pass
        elif r < 0.33:
            nid = rng.choice(live)
            if net.nodes[nid].applied_index > net[nid].log.snap_index:
                net.compact(nid, net.nodes[nid].applied_index)
        elif r < 0.36:
            try:
                net.read(rng.choice(live), b"r%d" % n)
                n += 1
            except NotLeader:
                pass
        elif r < 0.37:
            for lead in net.leaders():
                net[lead].transfer_leadership(rng.choice(ids(5)))
        elif r < 0.40:
            for lead in net.leaders():
                conf = net[lead].conf
                kind = REMOVE if "6" in conf.voters else ADD_VOTER if "6" in conf.learners else ADD_LEARNER
                try:
                    net[lead].propose_conf_change(ConfChange(kind, "6"))
                except ProposalDropped:
                    continue
                if "6" not in net.nodes:
                    net.add("6")
        if rng.random() < 0.2:  # reads are cheap: ask often, so stale answers would show
            try:
                net.read(rng.choice(live), b"q%d" % n)
                n += 1
            except NotLeader:
                pass
        for nid in live:
            net.tick(nid)
        net.pump()
    # Heal everything; a leader emerges and every member converges.
    net.heal()
    net.reorder = None
    for nid in sorted(net.down):
        net.restart(nid, life=99)
    net.stabilize()
    lead = None
    for _ in range(20 * ET):
        net.tick_all(1)
        leaders = net.leaders()
        if len(leaders) == 1 and net[leaders[0]].status().lead_transferee is None:
            lead = leaders[0]
            break
    assert lead is not None, "no leader after healing"
    net[lead].propose(b"final")
    members = sorted(net[lead].conf.members())
    # A lost snapshot (or its answer) is retried after two election timeouts: allow for that.
    for _ in range(4 * ET):
        net.tick_all(1)
        if all(net.applied(nid) == net.applied(lead) for nid in members):
            break
    for nid in members:
        assert net.applied(nid) == net.applied(lead), nid
    assert net.applied(lead)[-1] == b"final"
    return net


@pytest.mark.parametrize("seed", range(20))
def test_randomized_faults_preserve_safety_and_converge(seed: int) -> None:
    net = _chaos(seed, LAN.replace(max_msg_entries=4, max_inflight_msgs=3))
    assert len(net.leader_of_term) > 1  # the faults did cause elections


@pytest.mark.parametrize("seed", range(10))
def test_randomized_faults_with_lease_reads_and_no_pre_vote(seed: int) -> None:
    # Check quorum alone keeps a removed node 6 (which never learns of its removal) from
    # disrupting; with neither pre-vote nor check quorum it could, so that mix is not run.
    _chaos(100 + seed, LEASE.replace(pre_vote=False))


def test_transport_reports_move_the_leaders_progress() -> None:
    """report_unreachable drops a streaming follower to probing; a failed snapshot report
    makes the leader probe again; both are ignored off the leader."""
    import random as _random

    from phalanx_aio.core import Config, Message, MessageType, Raft
    from phalanx_aio.core.progress import ProgressState

    node = Raft.bootstrap("a", Config.lan(), _random.Random(1), ["a", "b", "c"])
    node.report_unreachable("b")  # a follower: ignored
    node.campaign(transfer=True)
    for voter in ("b", "c"):
        node.step(Message(MessageType.VOTE_RESP, "a", voter, node.term))
    assert node.is_leader
    pr = node.prs["b"]
    pr.become_replicate()
    node.report_unreachable("b")
    assert pr.state is ProgressState.PROBE
    pr.become_snapshot(5, 0)
    node.report_snapshot("b", True)
    assert pr.state is ProgressState.SNAPSHOT
    node.report_snapshot("b", False)
    assert pr.state is ProgressState.PROBE
