"""Tests organised by the sections of the Raft paper (Ongaro and Ousterhout, 2014).

In the spirit of etcd-raft's raft_paper_test.go: each test checks one rule of the paper on a
core driven by hand (``new_raft``/``elect``/``drain``) or on a small network. The paper's model
is used throughout: no pre-vote and no check quorum (``PAPER``); those extensions are covered by
test_scenarios.py.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from phalanx_aio.core import Config, Entry, EntryType, Message, MessageType, Raft, Role
from tests.core.harness import (
    PAPER,
    Network,
    by_type,
    drain,
    elect,
    fmt,
    ids,
    log_state,
    new_raft,
)

APP = MessageType.APP
APP_RESP = MessageType.APP_RESP
VOTE = MessageType.VOTE
VOTE_RESP = MessageType.VOTE_RESP
HEARTBEAT = MessageType.HEARTBEAT

ET = PAPER.election_ticks


def raft_from(terms: list[int], n: int = 3, nid: str = "1", **hs: object) -> Raft:
    """A core whose log holds entries of ``terms`` (see ``log_state``)."""
    r = Raft(nid, PAPER, random.Random(0), log_state(ids(n), terms, **hs))  # type: ignore[arg-type]
    drain(r)
    return r


def ack_all(r: Raft, index: int | None = None) -> list[Message]:
    """Every follower of leader ``r`` acknowledges its log up to ``index`` (default: all)."""
    index = r.log.last_index() if index is None else index
    for peer in sorted(r.conf.voters - {r.id}):
        r.step(Message(APP_RESP, r.id, peer, r.term, index=index))
    return drain(r)


# ---------------------------------------------------------------------------------- §5.1


@pytest.mark.parametrize("role", ["follower", "candidate", "leader"])
@pytest.mark.parametrize(
    ("mtype", "learns_leader"),
    [(APP, True), (HEARTBEAT, True), (VOTE_RESP, False), (APP_RESP, False)],
)
def test_higher_term_message_updates_term_and_reverts_to_follower(
    role: str, mtype: MessageType, learns_leader: bool
) -> None:
    # mirrors etcd-raft TestFollowerUpdateTermFromMessage / TestCandidate... / TestLeader...
    r = new_raft()
    if role == "candidate":
        r.campaign()
        drain(r)
        assert r.role is Role.CANDIDATE
    elif role == "leader":
        elect(r)
    term = r.term
    r.step(Message(mtype, "1", "2", term + 1, index=1, log_term=1))
    assert r.term == term + 1
    assert r.role is Role.FOLLOWER
    assert r.vote is None
    assert r.leader == ("2" if learns_leader else None)


def test_stale_term_messages_are_rejected() -> None:
    # mirrors etcd-raft TestRejectStaleTermMessage
    r = raft_from([1, 2], term=3)
    before = (r.term, r.vote, [*r.log.entries])
    r.step(Message(APP, "1", "2", 2, log_term=2, index=2, entries=(Entry(2, 3),), commit=3))
    r.step(Message(VOTE, "1", "3", 2, log_term=9, index=9))
    r.step(Message(HEARTBEAT, "1", "2", 1, commit=2))
    assert (r.term, r.vote, r.log.entries) == before
    assert r.log.committed == 0
    # The stale leader is told about the newer term; the stale candidate gets no vote.
    assert [fmt(m) for m in drain(r)] == ["1->2 APP_RESP t3 index=0", "1->2 APP_RESP t3 index=0"]


def test_stale_leader_steps_down_when_it_hears_of_a_newer_term() -> None:
    net = Network.bootstrap(3)
    net.campaign("1")
    net.isolate("1")
    net.campaign("2")
    assert net["2"].is_leader and net["2"].term == 3
    assert net["1"].is_leader and net["1"].term == 2  # does not know yet
    net.heal()
    net.tick("1")  # heartbeat; the answer carries term 3
    net.stabilize()
    assert net["1"].role is Role.FOLLOWER
    assert net["1"].term == 3
    assert net.leaders() == ["2"]


# ---------------------------------------------------------------------------------- §5.2


def test_nodes_start_as_followers() -> None:
    # mirrors etcd-raft TestStartAsFollower
    r = new_raft()
    assert (r.role, r.term, r.leader, r.vote) == (Role.FOLLOWER, 1, None, None)
    r2 = raft_from([1, 1, 2], term=5, vote="3")
    assert (r2.role, r2.term, r2.leader, r2.vote) == (Role.FOLLOWER, 5, None, "3")


def test_leader_broadcasts_heartbeats() -> None:
    # mirrors etcd-raft TestLeaderBcastBeat
    r = new_raft()
    elect(r)
    for _ in range(PAPER.heartbeat_ticks):
        r.tick()
    msgs = sorted(fmt(m) for m in drain(r))
    assert msgs == ["1->2 HEARTBEAT t2 commit=0 seq=1", "1->3 HEARTBEAT t2 commit=0 seq=1"]


def test_heartbeat_interval_follows_config() -> None:
    cfg = Config.global_mesh(pre_vote=False, check_quorum=False)
    r = Raft.bootstrap("1", cfg, random.Random(0), ids(3))
    elect(r)
    r.tick()
    assert by_type(drain(r), HEARTBEAT) == []
    r.tick()
    assert len(by_type(drain(r), HEARTBEAT)) == 2


@pytest.mark.parametrize("start", ["follower", "candidate"])
def test_election_starts_after_timeout(start: str) -> None:
    # mirrors etcd-raft TestFollowerStartElection and TestCandidateStartNewElection
    r = new_raft()
    if start == "candidate":
        r.campaign()
        drain(r)
    term = r.term
    for _ in range(2 * ET):
        r.tick()
    assert r.role is Role.CANDIDATE
    assert r.term == term + 1
    assert r.vote == "1"
    msgs = sorted(fmt(m) for m in drain(r))
    assert msgs == [f"1->2 VOTE t{term + 1} last=1/1", f"1->3 VOTE t{term + 1} last=1/1"]


@pytest.mark.parametrize(
    ("size", "votes", "role"),
    [
        (1, {}, Role.LEADER),
        (3, {"2": True, "3": True}, Role.LEADER),
        (3, {"2": True}, Role.LEADER),
        (5, {"2": True, "3": True, "4": True, "5": True}, Role.LEADER),
        (5, {"2": True, "3": True}, Role.LEADER),
        (5, {"2": False, "3": True, "4": True}, Role.LEADER),
        (3, {}, Role.CANDIDATE),
        (3, {"2": False}, Role.CANDIDATE),
        (5, {"2": True}, Role.CANDIDATE),
        (5, {"2": False, "3": False}, Role.CANDIDATE),
        (5, {"2": True, "3": False, "4": False}, Role.CANDIDATE),
        (3, {"2": False, "3": False}, Role.FOLLOWER),
        (5, {"2": False, "3": False, "4": False}, Role.FOLLOWER),
        (5, {"2": True, "3": False, "4": False, "5": False}, Role.FOLLOWER),
    ],
)
def test_election_is_decided_in_one_round(size: int, votes: dict[str, bool], role: Role) -> None:
    # mirrors etcd-raft TestLeaderElectionInOneRoundRPC
    r = new_raft(n=size)
    r.campaign()
    for peer, granted in votes.items():
        r.step(Message(VOTE_RESP, "1", peer, 2, reject=not granted))
    assert r.role is role
    assert r.term == 2


@pytest.mark.parametrize(
    ("vote", "candidate", "granted"),
    [
        (None, "2", True),
        (None, "3", True),
        ("2", "2", True),
        ("3", "3", True),
        ("2", "3", False),
        ("3", "2", False),
    ],
)
def test_follower_votes_at_most_once_per_term(vote: str | None, candidate: str, granted: bool) -> None:
    # mirrors etcd-raft TestFollowerVote
    r = raft_from([1], term=1, vote=vote)
    r.step(Message(VOTE, "1", candidate, 1, log_term=1, index=1))
    (resp,) = drain(r)
    assert (resp.type, resp.to, resp.reject) == (VOTE_RESP, candidate, not granted)
    assert r.vote == (candidate if granted else vote)


def test_simultaneous_candidates_never_make_two_leaders_in_one_term() -> None:
    for seed in range(10):
        net = Network.bootstrap(3, seed=seed)
        for _ in range(4):
            for n in ids(3):
                net[n].campaign()  # everyone at once: split votes
            net.stabilize()
            per_term = Counter(net[n].term for n in ids(3) if net[n].is_leader)
            assert all(c == 1 for c in per_term.values())
        net.tick_all(4 * ET)  # randomized timeouts break the tie
        assert len(net.leaders()) == 1


@pytest.mark.parametrize("leader_term_delta", [0, 1])
def test_candidate_falls_back_on_append_from_leader(leader_term_delta: int) -> None:
    # mirrors etcd-raft TestCandidateFallback
    r = new_raft()
    r.campaign()
    drain(r)
    term = r.term + leader_term_delta
    r.step(Message(APP, "1", "2", term, log_term=1, index=1))
    assert r.role is Role.FOLLOWER
    assert (r.term, r.leader) == (term, "2")


def _ticks_to_campaign(seed: int, config: Config = PAPER) -> int:
    r = Raft.bootstrap("1", config, random.Random(seed), ids(3))
    for n in range(1, 10 * config.election_ticks):
        r.tick()
        if r.role is not Role.FOLLOWER:
            return n
    raise AssertionError("never campaigned")


def test_election_timeouts_are_randomized_in_et_to_2et() -> None:
    # mirrors etcd-raft TestFollowerElectionTimeoutRandomized
    for cfg in (PAPER, Config.global_mesh(pre_vote=False)):
        et = cfg.election_ticks
        seen = {_ticks_to_campaign(seed, cfg) for seed in range(200)}
        assert seen <= set(range(et, 2 * et))
        assert len(seen) >= et // 2  # many distinct values, not a constant


def test_the_naive_preset_is_the_papers_timing_in_seconds() -> None:
    """Config.naive(): the textbook timing the global-mesh study compares against."""
    cfg = Config.naive()
    assert cfg.election_seconds() == pytest.approx((0.1, 0.2))
    assert cfg.heartbeat_ticks * cfg.tick_interval == pytest.approx(0.05)
    assert (cfg.pre_vote, cfg.check_quorum, cfg.rtt_aware) == (False, False, False)
    seen = {_ticks_to_campaign(seed, cfg) for seed in range(100)}
    assert seen <= set(range(10, 20)) and len(seen) >= 5


def test_election_timeouts_differ_across_nodes() -> None:
    # mirrors etcd-raft TestFollowerElectionTimeoutNonconflict: with distinct seeds, five
    # nodes rarely time out at the very same tick as the first of them.
    ties = 0
    trials = 200
    for t in range(trials):
        times = sorted(_ticks_to_campaign(t * 5 + k) for k in range(5))
        ties += times[0] == times[1]
    assert ties / trials < 0.5


def test_candidate_draws_a_new_timeout_each_election() -> None:
    r = new_raft(seed=3)
    timeouts = []
    for _ in range(20):
        n = 0
        term = r.term
        while r.term == term:
            r.tick()
            n += 1
        drain(r)
        timeouts.append(n)
    assert all(ET <= t < 2 * ET for t in timeouts)
    assert len(set(timeouts)) > 3


# ---------------------------------------------------------------------------------- §5.3


def test_leader_starts_replication() -> None:
    # mirrors etcd-raft TestLeaderStartReplication
    r = new_raft()
    elect(r)
    ack_all(r)  # followers acknowledge the no-op: they are now replicating
    assert r.propose(b"x") == (2, 3)
    rd = r.ready()
    assert rd.entries == (Entry(2, 3, EntryType.NORMAL, b"x"),)
    assert sorted(fmt(m) for m in rd.messages) == [
        "1->2 APP t2 prev=2/2 [2/3] commit=2",
        "1->3 APP t2 prev=2/2 [2/3] commit=2",
    ]
    r.advance(rd)


def test_leader_commits_and_applies_an_entry_a_majority_holds() -> None:
    # mirrors etcd-raft TestLeaderCommitEntry
    r = new_raft()
    elect(r)
    ack_all(r)
    r.propose(b"x")
    drain(r)
    r.step(Message(APP_RESP, "1", "2", 2, index=3))
    assert r.log.committed == 3
    rd = r.ready()
    assert [e.data for e in rd.committed_entries] == [b"x"]
    # Followers learn the new commit index in the next append.
    assert sorted(fmt(m) for m in rd.messages) == [
        "1->2 APP t2 prev=2/3 [] commit=3",
        "1->3 APP t2 prev=2/3 [] commit=3",
    ]
    r.advance(rd)


@pytest.mark.parametrize(
    ("size", "acks", "committed"),
    [
        (1, set(), True),
        (3, set(), False),
        (3, {"2"}, True),
        (3, {"2", "3"}, True),
        (4, {"2"}, False),
        (4, {"2", "3"}, True),
        (5, set(), False),
        (5, {"2"}, False),
        (5, {"2", "3"}, True),
        (5, {"2", "3", "4", "5"}, True),
    ],
)
def test_leader_commits_once_a_majority_acknowledges(size: int, acks: set[str], committed: bool) -> None:
    # mirrors etcd-raft TestLeaderAcknowledgeCommit
    r = new_raft(n=size)
    elect(r)
    drain(r)
    _, index = r.propose(b"x") or (0, 0)
    drain(r)
    for peer in sorted(acks):
        r.step(Message(APP_RESP, "1", peer, r.term, index=index))
    assert (r.log.committed >= index) is committed


@pytest.mark.parametrize("earlier", [[], [1], [1, 1], [1, 2], [2, 2, 2]])
def test_leader_commits_preceding_entries_with_its_own(earlier: list[int]) -> None:
    # mirrors etcd-raft TestLeaderCommitPrecedingEntries
    r = raft_from(earlier, term=2)
    elect(r)
    r.propose(b"x")
    drain(r)
    committed = [e.index for e in ack_all_and_collect(r)]
    assert committed == list(range(1, len(earlier) + 3))


def ack_all_and_collect(r: Raft) -> list[Entry]:
    for peer in sorted(r.conf.voters - {r.id}):
        r.step(Message(APP_RESP, r.id, peer, r.term, index=r.log.last_index()))
    out: list[Entry] = []
    while r.has_ready():
        rd = r.ready()
        out.extend(rd.committed_entries)
        r.advance(rd)
    return out


@pytest.mark.parametrize("leader_commit", [0, 1, 2, 3, 9])
def test_follower_applies_what_the_leader_says_is_committed(leader_commit: int) -> None:
    # mirrors etcd-raft TestFollowerCommitEntry
    r = new_raft()
    ents = (Entry(2, 2, EntryType.NORMAL, b"a"), Entry(2, 3, EntryType.NORMAL, b"b"))
    r.step(Message(APP, "1", "2", 2, log_term=1, index=1, entries=ents, commit=leader_commit))
    assert r.log.committed == max(1, min(leader_commit, 3))
    rd = r.ready()
    assert [e.index for e in rd.committed_entries] == list(range(2, r.log.committed + 1))
    r.advance(rd)


@pytest.mark.parametrize(
    ("prev_term", "prev_index", "expect"),
    [
        (0, 0, "1->2 APP_RESP t2 index=1"),  # before the commit index: answer with it
        (1, 1, "1->2 APP_RESP t2 index=1"),
        (2, 2, "1->2 APP_RESP t2 index=2"),
        (1, 2, "1->2 APP_RESP t2 index=2 REJECT hint=1/1"),  # term mismatch at 2
        (3, 3, "1->2 APP_RESP t2 index=3 REJECT hint=2/2"),  # beyond our log
    ],
)
def test_follower_consistency_check(prev_term: int, prev_index: int, expect: str) -> None:
    # mirrors etcd-raft TestFollowerCheckMsgApp
    r = raft_from([1, 2], term=2, commit=1)
    r.step(Message(APP, "1", "2", 2, log_term=prev_term, index=prev_index, commit=1))
    assert [fmt(m) for m in drain(r)] == [expect]
    assert [e.term for e in r.log.entries] == [1, 2]


@pytest.mark.parametrize(
    ("prev", "ents", "log", "unstable"),
    [
        ((2, 2), [(3, 3)], [(1, 1), (2, 2), (3, 3)], [(3, 3)]),
        ((1, 1), [(3, 2), (4, 3)], [(1, 1), (3, 2), (4, 3)], [(3, 2), (4, 3)]),
        ((0, 0), [(1, 1)], [(1, 1), (2, 2)], []),
        ((0, 0), [(3, 1)], [(3, 1)], [(3, 1)]),
        ((1, 1), [(2, 2)], [(1, 1), (2, 2)], []),  # a stale duplicate changes nothing
    ],
)
def test_follower_appends_from_the_first_conflict(
    prev: tuple[int, int],
    ents: list[tuple[int, int]],
    log: list[tuple[int, int]],
    unstable: list[tuple[int, int]],
) -> None:
    # mirrors etcd-raft TestFollowerAppendEntries
    r = raft_from([1, 2], term=2)
    msg_ents = tuple(Entry(t, i, EntryType.NORMAL, b"new") for t, i in ents)
    r.step(Message(APP, "1", "2", 4, log_term=prev[0], index=prev[1], entries=msg_ents))
    assert [(e.term, e.index) for e in r.log.entries] == log
    rd = r.ready()
    assert [(e.term, e.index) for e in rd.entries] == unstable
    assert all(e.data == b"new" for e in rd.entries)
    r.advance(rd)


def test_follower_never_truncates_on_a_reordered_shorter_append() -> None:
    # A delayed append carrying a prefix of what the follower holds must not cut its log.
    r = raft_from([1, 2, 2, 2], term=2)
    r.step(Message(APP, "1", "2", 2, log_term=1, index=1, entries=(Entry(2, 2),)))
    assert [e.term for e in r.log.entries] == [1, 2, 2, 2]
    assert [fmt(m) for m in drain(r)] == ["1->2 APP_RESP t2 index=2"]


FIG7_LEADER = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
FIG7_FOLLOWERS = {
    "a": [1, 1, 1, 4, 4, 5, 5, 6, 6],
    "b": [1, 1, 1, 4],
    "c": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
    "d": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    "e": [1, 1, 1, 4, 4, 4, 4],
    "f": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
}


@pytest.mark.parametrize("case", sorted(FIG7_FOLLOWERS))
def test_leader_brings_follower_logs_in_line(case: str) -> None:
    # mirrors etcd-raft TestLeaderSyncFollowerLog (the follower logs of the paper's Figure 7)
    follower = FIG7_FOLLOWERS[case]
    net = Network.from_states(
        {
            "1": log_state(ids(3), FIG7_LEADER, term=7),
            "2": log_state(ids(3), follower),
            "3": log_state(ids(3), [], term=7),
        }
    )
    net.campaign("1")
    assert net.leaders() == ["1"]
    assert net["1"].term == 8
    expected = [*FIG7_LEADER, 8]
    assert net.log_terms("1") == expected
    assert net.log_terms("2") == expected
    assert net["2"].log.committed == len(expected)
    # Fast backtracking: a handful of rejections at most, not one per divergent entry.
    rejects = [t for t in net.trace if t.startswith("2->1 APP_RESP") and "REJECT" in t]
    assert len(rejects) <= 2


# -------------------------------------------------------------------------------- §5.4.1


@pytest.mark.parametrize("terms", [[1], [1, 2], [1, 2, 2, 3]])
def test_vote_request_carries_last_log_entry(terms: list[int]) -> None:
    # mirrors etcd-raft TestVoteRequest
    r = raft_from(terms)
    for _ in range(2 * ET):
        r.tick()
    votes = by_type(drain(r), VOTE)
    assert sorted(m.to for m in votes) == ["2", "3"]
    assert {(m.term, m.log_term, m.index) for m in votes} == {(terms[-1] + 1, terms[-1], len(terms))}


@pytest.mark.parametrize(
    ("voter_log", "cand_last_term", "cand_last_index", "granted"),
    [
        ([1], 1, 1, True),
        ([1], 1, 2, True),
        ([1, 1], 1, 1, False),  # same last term, shorter log
        ([1], 2, 1, True),  # higher last term wins even if shorter
        ([1, 1], 2, 1, True),
        ([2], 1, 1, False),  # lower last term loses
        ([2], 1, 5, False),  # ... even if longer
        ([1, 2], 1, 3, False),
        ([], 0, 0, True),
    ],
)
def test_voter_grants_only_to_an_up_to_date_candidate(
    voter_log: list[int], cand_last_term: int, cand_last_index: int, granted: bool
) -> None:
    # mirrors etcd-raft TestVoter
    r = raft_from(voter_log, term=2)
    r.step(Message(VOTE, "1", "2", 3, log_term=cand_last_term, index=cand_last_index))
    (resp,) = drain(r)
    assert resp.type is VOTE_RESP
    assert resp.reject is not granted
    assert r.vote == ("2" if granted else None)


# -------------------------------------------------------------------------------- §5.4.2


@pytest.mark.parametrize(("acked", "committed"), [(1, 0), (2, 0), (3, 3)])
def test_leader_commits_by_counting_only_entries_of_its_term(acked: int, committed: int) -> None:
    # mirrors etcd-raft TestLeaderOnlyCommitsLogFromCurrentTerm
    r = raft_from([1, 2], term=2)
    elect(r)  # term 3, no-op at index 3
    r.step(Message(APP_RESP, "1", "2", 3, index=acked))
    assert r.log.committed == committed


def test_figure_8_an_old_term_entry_on_a_majority_is_not_committed() -> None:
    """Figure 8: S1 (term 4) gets its term-2 entry onto a majority but must not count it as
    committed; S5 may still win and overwrite it. Once S1's own-term entry reaches a majority
    both commit (variant (e))."""
    five = ids(5)
    states = {
        "1": log_state(five, [1, 2], term=3),
        "2": log_state(five, [1, 2], term=3),
        "3": log_state(five, [1], term=3),
        "4": log_state(five, [1], term=3),
        "5": log_state(five, [1, 3], term=3),
    }
    cfg = PAPER.replace(max_msg_entries=1)  # one entry per append, so index 3 can be held back
    for variant in ("d", "e"):
        net = Network.from_states(states, cfg)
        net.isolate("5")
        # Lose every append of S1's own entry (index 3) that its receiver would accept.
        net.drop_if = lambda m, net=net: (
            m.type is APP and any(e.index == 3 for e in m.entries) and net[m.to].log.last_index() >= 2
        )
        net.campaign("1")
        assert net.leaders() == ["1"] and net["1"].term == 4
        holders = [n for n in five if net.log_terms(n)[:2] == [1, 2]]
        assert holders == ["1", "2", "3", "4"]  # a majority holds (term 2, index 2) ...
        assert net["1"].log.committed == 0  # ... yet it is not committed
        if variant == "d":
            net.crash("1")
            net.heal()
            net.campaign("5")  # term 4: everyone already voted in term 4
            net.campaign("5")  # term 5: S5's last term 3 beats their 2
            assert net.leaders() == ["5"] and net["5"].term == 5
            for n in ["2", "3", "4", "5"]:
                assert net.log_terms(n) == [1, 3, 5]  # the term-2 entry is gone everywhere
        else:
            net.heal()
            net.tick("1")
            net.stabilize()
            assert net["1"].log.committed == 3
            for n in five:
                assert net.log_terms(n) == [1, 2, 4]


# ----------------------------------------------------------------------------------- §8


def test_new_leader_appends_a_noop_of_its_term() -> None:
    net = Network.bootstrap(3)
    net.campaign("2")
    leader = net["2"]
    last = leader.log.entry(leader.log.last_index())
    assert (last.term, last.index, last.type, last.data) == (2, 2, EntryType.NOOP, b"")
    # It commits (without reaching the state machines) and with it everything before.
    assert all(net[n].log.committed == 2 for n in ids(3))
    assert all(net.applied(n) == [] for n in ids(3))
    applied = [e for rd in net.nodes["3"].readies for e in rd.committed_entries]
    assert [(e.index, e.type) for e in applied] == [(1, EntryType.CONF), (2, EntryType.NOOP)]


def test_noop_commits_entries_left_by_an_earlier_leader() -> None:
    states = {n: log_state(ids(3), [1, 1, 1], term=1, commit=1) for n in ids(3)}
    net = Network.from_states(states)
    net.campaign("3")
    assert all(net[n].log.committed == 4 for n in ids(3))
    assert all(net.nodes[n].applied_index == 4 for n in ids(3))
