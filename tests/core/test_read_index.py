"""Linearizable reads: ReadIndex (a heartbeat round per batch of reads) and lease reads.

Each test drives a small :class:`~tests.core.harness.Network` and checks the outcome, and where
the exchange itself is the point, the golden trace of messages (see ``harness.fmt``).
"""

from __future__ import annotations

import pytest

from phalanx_aio.core import (
    ConfChange,
    Message,
    MessageType,
    ReadState,
    Role,
)
from phalanx_aio.errors import NotLeader
from tests.core.harness import Network, by_type, fmt
from tests.core.scenarios import (
    ADD_VOTER,
    APP_RESP,
    ET,
    HEARTBEAT,
    HEARTBEAT_RESP,
    LAN,
    LEASE,
    TIMEOUT_NOW,
    cluster,
    quiet,
)


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
