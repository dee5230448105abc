"""Snapshots: compaction, a follower caught up by a snapshot, restarts from a snapshot.

Each test drives a small :class:`~tests.core.harness.Network` and checks the outcome, and where
the exchange itself is the point, the golden trace of messages (see ``harness.fmt``).
"""

from __future__ import annotations

import pytest

from phalanx_aio.core import (
    ConfChange,
    Message,
)
from phalanx_aio.errors import LocalError
from tests.core.harness import Network, ids
from tests.core.scenarios import ADD_LEARNER, LAN, VOTE, cluster


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
