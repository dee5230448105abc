"""Forwarded proposals get a definite answer, retries are never applied twice, answers count
only from the node asked, and leases survive restarts and stalls (issue 15)."""

from __future__ import annotations

import random

from phalanx_aio.core import (
    Config,
    Entry,
    EntryType,
    Message,
    MessageType,
    Placement,
    PlacementOutcome,
    Raft,
    Ready,
)
from tests.core.harness import Network, by_type, drain, elect, new_raft

CFG = Config.lan(eager_commit=True)
LEASE = Config.lan(eager_commit=True, read_mode="lease")
ALONE = CFG.replace(pre_vote=False)  # lone cores are elected by hand (harness.elect)
PLACED, NOT_LEADER, DROPPED, UNKNOWN = PlacementOutcome


def cluster(config: Config = CFG) -> Network:
    net = Network.bootstrap(3, config)
    net.campaign("1")
    assert net.leaders() == ["1"]
    return net


def next_leader(net: Network) -> str:
    """Let time pass until a live node leads; its id."""
    for _ in range(10 * CFG.election_ticks):
        net.tick_all()
        if net.leaders():
            return net.leader()
    raise AssertionError("no leader")


def copies(net: Network, nid: str, data: bytes) -> list[tuple[int, int]]:
    """(term, index) of every entry of ``nid``'s log holding ``data``."""
    return [(e.term, e.index) for e in net[nid].log.entries if e.data == data]


def prop(frm: str, to: str, term: int, data: bytes, ctx: bytes, since: int = 0) -> Message:
    entries = (Entry(0, 0, EntryType.NORMAL, data),)
    return Message(MessageType.PROP, to, frm, term, index=since, entries=entries, context=ctx)


# ------------------------------------------------------------------------------ answers


def test_a_forward_with_a_context_is_answered_with_where_it_was_placed() -> None:
    net = cluster()
    net["2"].propose_batch([b"a", b"b"], context=b"c1")
    net.stabilize()
    (placement,) = net.nodes["2"].placements
    assert placement.outcome is PLACED and placement.context == b"c1"
    assert copies(net, "2", b"a") == [(placement.term, placement.index)]
    assert copies(net, "2", b"b") == [(placement.term, placement.index + 1)]


def test_a_forward_meant_for_the_leader_of_another_term_is_refused_unappended() -> None:
    r = new_raft(config=ALONE)
    elect(r)
    last = r.log.last_index()
    r.step(prop("2", "1", r.term - 1, b"x", b"old"))
    (resp,) = by_type(drain(r), MessageType.PROP_RESP)
    assert (resp.reject, resp.reject_hint, resp.term, resp.context) == (True, NOT_LEADER, r.term - 1, b"old")
    assert r.log.last_index() == last


def test_a_follower_refuses_a_forward_instead_of_passing_it_on() -> None:
    net = cluster()
    net["3"].step(prop("2", "3", net["3"].term, b"x", b"c"))
    (resp,) = by_type(net.collect("3"), MessageType.PROP_RESP)
    assert resp.reject and resp.reject_hint == NOT_LEADER


def test_a_forward_during_a_leadership_transfer_is_answered_dropped() -> None:
    net = cluster()
    net.dropped_types.add(MessageType.TIMEOUT_NOW)
    net["1"].transfer_leadership("3")
    net.stabilize()
    net["2"].propose_batch([b"x"], context=b"c")
    net.stabilize()
    assert [p.outcome for p in net.nodes["2"].placements] == [DROPPED]
    assert copies(net, "1", b"x") == []


def test_an_answer_counts_only_from_the_node_asked_for_the_term_asked() -> None:
    net = cluster()
    f = net["2"]
    term = f.term
    f.propose_batch([b"x"], context=b"c")
    net.collect("2")  # the forward is lost
    resp = dict(log_term=term, index=9, context=b"c")
    for wrong in (
        Message(MessageType.PROP_RESP, "2", "3", term, **resp),  # not the node asked
        Message(MessageType.PROP_RESP, "2", "1", term + 1, **resp),  # not the term asked
        Message(MessageType.PROP_RESP, "2", "1", term, log_term=term, index=9, context=b"other"),
    ):
        f.step(wrong)
    assert net.collect("2") == [] and net.nodes["2"].placements == []
    f.step(Message(MessageType.PROP_RESP, "2", "1", term, **resp))
    net.collect("2")
    assert net.nodes["2"].placements == [Placement(b"c", PLACED, term, 9)]


def test_a_read_answer_counts_only_from_the_leader_asked_for_the_term_asked() -> None:
    net = cluster()
    f = net["2"]
    term = f.term
    f.read_index(b"r")
    net.collect("2")  # the request is lost
    for wrong in (
        Message(MessageType.READ_INDEX_RESP, "2", "3", term, index=1, context=b"r"),
        Message(MessageType.READ_INDEX_RESP, "2", "1", term - 1, index=1, context=b"r"),
        Message(MessageType.READ_INDEX_RESP, "2", "1", term, index=1, context=b"never asked"),
    ):
        f.step(wrong)
    net.collect("2")
    assert net.nodes["2"].read_states == []
    f.step(Message(MessageType.READ_INDEX_RESP, "2", "1", term, index=1, context=b"r"))
    net.collect("2")
    assert [rs.context for rs in net.nodes["2"].read_states] == [b"r"]


# ------------------------------------------------------------------------------ retries


def test_a_retry_finds_the_copy_a_crashed_leader_replicated_and_appends_nothing() -> None:
    net = cluster()
    since = net["3"].log.committed + 1
    net.cut_one_way("1", "3")  # 3 never hears the answer
    net["3"].propose_batch([b"x"], context=b"first")
    net.stabilize()
    assert copies(net, "2", b"x") != []  # 1 appended it and replicated it to 2
    net.crash("1")
    net.heal()
    assert next_leader(net) == "2"  # 3's log lacks x: it cannot win
    net["3"].repropose(b"x", b"again", since)
    net.stabilize()
    (placement,) = net.nodes["3"].placements
    assert placement.outcome is PLACED
    assert copies(net, "2", b"x") == [(placement.term, placement.index)]  # the old copy, once
    assert placement.term < net["2"].term
    assert net.applied("2").count(b"x") == 1


def test_a_retry_is_appended_once_when_no_copy_can_commit() -> None:
    net = cluster()
    since = net["3"].log.committed + 1
    net.cut_one_way("1", "2")
    net.cut_one_way("1", "3")
    net["3"].propose_batch([b"x"], context=b"first")
    net.stabilize()
    assert copies(net, "1", b"x") != [] and copies(net, "2", b"x") == []  # only the leader has it
    net.crash("1")
    net.heal()
    leader = next_leader(net)
    net["3"].repropose(b"x", b"again", since)
    net.stabilize()
    (placement,) = net.nodes["3"].placements
    assert (placement.outcome, placement.term) == (PLACED, net[leader].term)
    net.restart("1")
    net.tick_all(4 * CFG.election_ticks)
    for nid in ("1", "2", "3"):  # the old leader's copy is overwritten: applied once everywhere
        assert copies(net, nid, b"x") == [(placement.term, placement.index)]
        assert net.applied(nid).count(b"x") == 1


def test_a_retry_waits_for_the_new_leaders_first_commit() -> None:
    net = cluster()
    since = net["3"].log.committed + 1
    net.crash("1")
    net.dropped_types.add(MessageType.APP_RESP)  # the next leader cannot commit in its term yet
    leader = next_leader(net)
    net[leader].repropose(b"x", b"c", since)
    net.stabilize()
    assert net.nodes[leader].placements == [] and copies(net, leader, b"x") == []
    net.dropped_types.clear()
    net.tick_all(2)
    (placement,) = net.nodes[leader].placements  # on the leader itself, once it commits
    assert placement.outcome is PLACED
    assert copies(net, leader, b"x") == [(placement.term, placement.index)]


def test_a_retry_that_cannot_be_checked_against_a_compacted_log_is_unknown() -> None:
    net = cluster()
    since = net["3"].log.committed + 1
    net.propose("1", b"a", b"b")
    net.compact("1", net["1"].log.applied)
    net["3"].repropose(b"x", b"c", since)
    net.stabilize()
    assert [p.outcome for p in net.nodes["3"].placements] == [UNKNOWN]
    assert copies(net, "1", b"x") == []


def test_a_retry_unanswered_when_leadership_is_lost_is_refused_as_not_leader() -> None:
    r = new_raft(config=ALONE)
    elect(r)  # its no-op is not committed: retries wait
    r.step(prop("2", "1", r.term, b"x", b"c", since=1))
    assert by_type(drain(r), MessageType.PROP_RESP) == []
    r.step(Message(MessageType.APP, "1", "3", r.term + 1))  # a newer leader
    (resp,) = by_type(drain(r), MessageType.PROP_RESP)
    assert resp.reject and resp.reject_hint == NOT_LEADER and resp.term == r.term - 1


# ------------------------------------------------------------------------------ leases


def test_a_restarted_follower_does_not_elect_a_rival_during_the_leaders_lease() -> None:
    # n1 leads with a lease; n3 is cut from n1; n2 acknowledges n1's heartbeat, then restarts.
    # n2 must not help n3 win while n1's lease lasts, or n1 would serve a stale lease read
    # (the network's read check asserts every read sees what was applied anywhere before).
    net = cluster(LEASE)
    net.propose("1", b"a")
    net.partition(["1", "2"], ["2", "3"])
    net.tick("1", LEASE.heartbeat_ticks)
    net.stabilize()  # n2 acknowledged the heartbeat round: n1 holds a lease
    net.crash("2")
    net.restart("2")
    net.campaign("3")
    assert net.leaders() == ["1"]
    net.read("1", b"lease")
    net.stabilize()
    assert [rs.context for rs in net.nodes["1"].read_states] == [b"lease"]
    net.tick_all(2 * LEASE.election_ticks)  # the window passes: n3 may now be elected
    assert "3" in net.leaders() or net.leaders() == ["1"]


def test_a_restarted_follower_still_grants_a_leadership_transfer() -> None:
    net = cluster(LEASE)
    net.crash("2")
    net.restart("2")
    net["1"].transfer_leadership("3")
    net.stabilize()
    assert net.leaders() == ["3"]


def test_a_lease_is_measured_on_the_drivers_clock_so_a_stall_ends_it() -> None:
    now = [0.0]
    cfg = LEASE.replace(pre_vote=False)
    r = Raft.bootstrap("1", cfg, random.Random(0), ["1", "2", "3"], clock=lambda: now[0])
    drain(r)
    elect(r)
    for peer in ("2", "3"):
        r.step(Message(MessageType.APP_RESP, "1", peer, r.term, index=r.log.last_index()))
    drain(r)
    r.tick()  # a heartbeat round, acknowledged by both
    for m in by_type(drain(r), MessageType.HEARTBEAT):
        r.step(Message(MessageType.HEARTBEAT_RESP, "1", m.to, r.term, seq=m.seq))
    drain(r)
    r.read_index(b"fresh")
    assert [rs.context for rd in readies(r) for rs in rd.read_states] == [b"fresh"]  # in the lease
    now[0] += LEASE.election_ticks  # the loop stalled for an election timeout: no tick came
    r.read_index(b"stalled")
    rds = readies(r)
    assert [rs for rd in rds for rs in rd.read_states] == []  # no lease: a heartbeat round instead
    assert by_type([m for rd in rds for m in rd.messages], MessageType.HEARTBEAT)


def readies(r: Raft) -> list[Ready]:
    """Handle a lone core's pending Ready values (nothing persisted); return them."""
    out = []
    while r.has_ready():
        rd = r.ready()
        r.advance(rd)
        out.append(rd)
    return out


def test_an_empty_forward_is_a_probe_the_leader_answers() -> None:
    net = cluster()
    net["2"].propose_batch([], context=b"probe")
    net.stabilize()
    assert [(p.context, p.outcome) for p in net.nodes["2"].placements] == [(b"probe", DROPPED)]
    assert net["1"].log.last_index() == net["2"].log.last_index()
