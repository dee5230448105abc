"""Pre-vote and check quorum: a partitioned or lagging node cannot disrupt a healthy leader, and
a leader that lost its quorum steps down.

Each test drives a small :class:`~tests.core.harness.Network` and checks the outcome, and where
the exchange itself is the point, the golden trace of messages (see ``harness.fmt``).
"""

from __future__ import annotations

from phalanx_aio.core import (
    Message,
    Role,
)
from tests.core.harness import Network, by_type, fmt, ids
from tests.core.scenarios import ET, LAN, VOTE, cluster


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
