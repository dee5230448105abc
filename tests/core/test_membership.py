"""Membership changes: learners, promotion, adding and removing voters, one change at a time.

Each test drives a small :class:`~tests.core.harness.Network` and checks the outcome, and where
the exchange itself is the point, the golden trace of messages (see ``harness.fmt``).
"""

from __future__ import annotations

import random

import pytest

from phalanx_aio.core import (
    ConfChange,
    Entry,
    EntryType,
    Message,
    Raft,
    Role,
)
from phalanx_aio.errors import NotLeader, ProposalDropped
from tests.core.harness import Network, drain, ids, log_state
from tests.core.scenarios import (
    ADD_LEARNER,
    ADD_VOTER,
    APP,
    APP_RESP,
    ET,
    LAN,
    REMOVE,
    cluster,
)


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
