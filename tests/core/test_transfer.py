"""Leadership transfer: to a caught-up or lagging follower, proposals refused meanwhile, and the
refusals.

Each test drives a small :class:`~tests.core.harness.Network` and checks the outcome, and where
the exchange itself is the point, the golden trace of messages (see ``harness.fmt``).
"""

from __future__ import annotations

import pytest

from phalanx_aio.core import (
    ConfChange,
)
from phalanx_aio.errors import NotLeader, ProposalDropped
from tests.core.scenarios import ET, REMOVE, cluster


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
