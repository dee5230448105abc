"""Proposals the core refuses or forwards, and flow control of appends (windows, sizes,
batching).

Each test drives a small :class:`~tests.core.harness.Network` and checks the outcome, and where
the exchange itself is the point, the golden trace of messages (see ``harness.fmt``).
"""

from __future__ import annotations

import pytest

from phalanx_aio.core import (
    Role,
)
from phalanx_aio.errors import NotLeader, ProposalDropped
from tests.core.harness import Network, by_type, ids
from tests.core.scenarios import APP, APP_RESP, LAN, cluster


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
