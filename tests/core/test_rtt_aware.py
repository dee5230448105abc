"""The RTT-aware election timeout (``Config.rtt_aware``, issue 8).

The leader times heartbeat round trips in ticks, derives the election timeout ``T`` from the
quorum's round trip, and advises it in heartbeats; followers adopt it, clamped to their
configured bounds, and use it for their randomized timeout, stickiness and check quorum. Lease
reads rest on the lower bound only. Everything here is ticks and messages: no clock.
"""

from __future__ import annotations

import math
import random
import re

import pytest

from phalanx_aio.core import Config, Message, MessageType, Raft, Role
from phalanx_aio.errors import ConfigError
from tests.core.harness import Network, by_type, drain, ids

HEARTBEAT = MessageType.HEARTBEAT
HEARTBEAT_RESP = MessageType.HEARTBEAT_RESP
PRE_VOTE = MessageType.PRE_VOTE
PRE_VOTE_RESP = MessageType.PRE_VOTE_RESP

ADAPTIVE = Config.global_mesh_adaptive()  # 50 ms ticks, heartbeat 2, T in [10, 80]
LONE = ADAPTIVE.replace(pre_vote=False)


def leader(n: int = 5, config: Config = LONE) -> Raft:
    """Node "1" of an ``n``-voter cluster, made leader of term 2 by hand (nothing sent)."""
    r = Raft.bootstrap("1", config, random.Random(0), ids(n))
    drain(r)
    r.campaign(transfer=True)
    for peer in ids(n)[1:]:
        if not r.is_leader:
            r.step(Message(MessageType.VOTE_RESP, "1", peer, r.term))
    assert r.is_leader
    drain(r)
    return r


def heartbeat_round(r: Raft, delays: dict[str, int]) -> list[Message]:
    """Tick ``r`` until it broadcasts heartbeats, then answer each follower's after
    ``delays[follower]`` more ticks (0: before the next tick). Returns the heartbeats."""
    hbs: list[Message] = []
    while not hbs:
        r.tick()
        hbs = by_type(drain(r), HEARTBEAT)
    seq = hbs[0].seq
    for d in range(max(delays.values(), default=0) + 1):
        if d:
            r.tick()
            drain(r)
        for f, fd in sorted(delays.items()):
            if fd == d:
                r.step(Message(HEARTBEAT_RESP, "1", f, r.term, seq=seq))
                drain(r)
    return hbs


def follower(config: Config = ADAPTIVE, seed: int = 0) -> Raft:
    """Node "2" of a three-voter cluster, following "1" in term 2."""
    r = Raft.bootstrap("2", config, random.Random(seed), ids(3))
    drain(r)
    r.step(Message(HEARTBEAT, "2", "1", 2))
    drain(r)
    assert (r.role, r.leader, r.term) == (Role.FOLLOWER, "1", 2)
    return r


def advise(r: Raft, ticks: int, *, frm: str = "1", term: int = 2) -> list[Message]:
    r.step(Message(HEARTBEAT, r.id, frm, term, election_timeout=ticks))
    out: list[Message] = drain(r)
    return out


def advise_delay(r: Raft, ticks: int, delay: int) -> None:
    r.step(Message(HEARTBEAT, r.id, "1", 2, election_timeout=ticks, election_delay=delay))
    drain(r)


# ------------------------------------------------------------------------------- config


def test_the_adaptive_preset_and_its_validation() -> None:
    c = Config.global_mesh_adaptive()
    assert (c.tick_interval, c.heartbeat_ticks, c.election_ticks) == (0.05, 2, 80)
    assert (c.rtt_aware, c.rtt_min_election_ticks, c.rtt_factor, c.rtt_percentile) == (True, 10, 3.0, 90.0)
    assert c.pre_vote and c.check_quorum
    assert c.rtt_succession == 2.0 and Config().rtt_succession == 0.0
    assert Config.global_mesh_adaptive(rtt_factor=5.0).rtt_factor == 5.0
    assert not Config.global_mesh().rtt_aware and not Config.lan().rtt_aware
    bad: dict[str, dict[str, object]] = {
        "rtt_min_election_ticks must be in (heartbeat_ticks, election_ticks]": {"rtt_min_election_ticks": 2},
        "(got 81;": {"rtt_min_election_ticks": 81},
        "lease_margin_ticks must be below rtt_min_election_ticks": {"lease_margin_ticks": 10},
        "rtt_factor must be a finite number > 0 (got 0.0)": {"rtt_factor": 0.0},
        "rtt_factor must be a finite number > 0 (got nan)": {"rtt_factor": math.nan},
        "rtt_percentile must be in (0, 100] (got 101": {"rtt_percentile": 101.0},
        "rtt_window must be >= 1 (got 0)": {"rtt_window": 0},
        "rtt_succession must be a finite number >= 0 (got -1.0)": {"rtt_succession": -1.0},
        "rtt_succession must be a finite number >= 0 (got inf)": {"rtt_succession": math.inf},
    }
    for msg, change in bad.items():
        with pytest.raises(ConfigError, match=re.escape(msg)):
            ADAPTIVE.replace(**change)
    # Without the mode, the RTT fields are not checked (they are not used).
    assert Config.lan(rtt_min_election_ticks=0, rtt_window=0).election_ticks == 10


# ---------------------------------------------------------------------- RTT estimation


def test_leader_times_each_follower_in_ticks_rounded_up() -> None:
    r = leader()
    heartbeat_round(r, {"2": 0, "3": 1, "4": 3, "5": 6})
    # Answered before the next tick: at most one tick; after d more ticks: d + 1.
    assert {nid: list(pr.rtt_samples) for nid, pr in r.prs.items() if nid != "1"} == {
        "2": [1],
        "3": [2],
        "4": [4],
        "5": [7],
    }


def test_quorum_rtt_is_the_round_trip_to_the_quorum_at_the_configured_percentile() -> None:
    r = leader()
    for _ in range(7):
        heartbeat_round(r, {"2": 1, "3": 2, "4": 3, "5": 5})
    assert r.quorum_rtt() is None  # 7 samples each: not enough yet
    heartbeat_round(r, {"2": 1, "3": 2, "4": 3, "5": 5})
    # Five voters: the leader and its two fastest followers make a quorum.
    assert r.quorum_rtt() == 3
    # One slow answer in ten is above the 90th percentile (nearest rank: the 9th of 10)...
    heartbeat_round(r, {"2": 1, "3": 9, "4": 3, "5": 5})
    heartbeat_round(r, {"2": 1, "3": 2, "4": 3, "5": 5})
    assert r.prs["3"].rtt_percentile(90) == 3 and r.quorum_rtt() == 3
    # ...two are not.
    heartbeat_round(r, {"2": 1, "3": 9, "4": 3, "5": 5})
    assert r.prs["3"].rtt_percentile(90) == 10 and r.quorum_rtt() == 4  # now "4" completes it


def test_the_window_forgets_old_samples() -> None:
    r = leader(config=LONE.replace(rtt_window=8))
    for _ in range(8):
        heartbeat_round(r, {"2": 9, "3": 9, "4": 9, "5": 9})
    assert r.quorum_rtt() == 10
    for _ in range(8):
        heartbeat_round(r, {"2": 1, "3": 1, "4": 1, "5": 1})
    assert r.quorum_rtt() == 2 and list(r.prs["2"].rtt_sorted) == [2] * 8


def test_duplicate_stale_and_unknown_answers_are_not_timed() -> None:
    r = leader()
    hbs = heartbeat_round(r, {"2": 1})
    seq = hbs[0].seq
    r.tick()
    r.step(Message(HEARTBEAT_RESP, "1", "2", r.term, seq=seq))  # a duplicate
    r.step(Message(HEARTBEAT_RESP, "1", "2", r.term, seq=seq - 1))  # older
    r.step(Message(HEARTBEAT_RESP, "1", "3", r.term, seq=seq + 100))  # never sent
    r.step(Message(HEARTBEAT_RESP, "1", "4", r.term, seq=0))  # no round
    assert list(r.prs["2"].rtt_samples) == [2]
    assert not r.prs["3"].rtt_samples and not r.prs["4"].rtt_samples


def test_not_timed_without_the_mode_and_no_advice_is_sent() -> None:
    r = leader(config=Config.global_mesh(pre_vote=False))
    for _ in range(10):
        hbs = heartbeat_round(r, {"2": 1, "3": 1, "4": 1, "5": 1})
        assert all(m.election_timeout == 0 for m in hbs)
    assert not r.prs["2"].rtt_samples and r.quorum_rtt() is None
    assert r.election_timeout == 20


# ----------------------------------------------------------------------- the advice


def test_advice_is_factor_times_quorum_rtt_plus_two_heartbeats_clamped() -> None:
    r = leader()
    for _ in range(7):
        hbs = heartbeat_round(r, {"2": 2, "3": 3, "4": 5, "5": 5})
        assert all(m.election_timeout == 0 for m in hbs), "no advice before enough samples"
    assert r.election_timeout == 80  # the leader's own T: still election_ticks
    heartbeat_round(r, {"2": 2, "3": 3, "4": 5, "5": 5})
    hbs = heartbeat_round(r, {"2": 2, "3": 3, "4": 5, "5": 5})
    assert r.quorum_rtt() == 4
    expected = math.ceil(3.0 * 4) + 2 * 2  # 16 ticks = 0.8 s
    assert [m.election_timeout for m in hbs] == [expected] * 4
    assert r.election_timeout == expected

    slow = leader(config=LONE.replace(rtt_window=1))
    heartbeat_round(slow, {"2": 40, "3": 40, "4": 40, "5": 40})
    hbs = heartbeat_round(slow, {})
    assert [m.election_timeout for m in hbs] == [80] * 4  # 3 * 41 + 4, clamped to election_ticks

    fast = leader(config=LONE.replace(rtt_window=1))
    heartbeat_round(fast, {"2": 0, "3": 0, "4": 0, "5": 0})
    hbs = heartbeat_round(fast, {})
    assert [m.election_timeout for m in hbs] == [10] * 4  # 3 * 1 + 4, raised to the floor


def test_followers_adopt_the_advice_and_randomize_over_t_to_2t() -> None:
    r = follower()
    assert r.election_timeout == 80  # no advice yet: election_ticks
    advise(r, 16)
    assert r.election_timeout == 16
    advise(r, 0)  # 0 is no advice: keep it
    assert r.election_timeout == 16
    fired = []
    for seed in range(40):
        f = follower(seed=seed)
        advise(f, 16)
        for t in range(1, 40):
            f.tick()
            if by_type(drain(f), PRE_VOTE):
                fired.append(t)
                break
    assert len(fired) == 40 and min(fired) >= 16 and max(fired) < 32
    assert len(set(fired)) > 5  # randomized


def test_absurd_advice_is_clamped_to_the_configured_bounds() -> None:
    r = follower()
    advise(r, 1)
    assert r.election_timeout == 10
    advise(r, 1 << 62)
    assert r.election_timeout == 80
    advise(r, 11)
    assert r.election_timeout == 11


def test_a_follower_without_the_mode_ignores_advice() -> None:
    r = follower(config=Config.global_mesh())
    advise(r, 5)
    assert r.election_timeout == 20


def test_advice_survives_a_term_change_until_a_new_leader_advises() -> None:
    r = follower()
    advise(r, 14)
    r.step(Message(MessageType.VOTE, "2", "3", 5, log_term=1, index=1, transfer=True))
    drain(r)
    assert (r.term, r.vote, r.election_timeout) == (5, "3", 14)
    advise(r, 0, frm="3", term=5)  # a new leader with no measurement yet
    assert r.election_timeout == 14
    advise(r, 25, frm="3", term=5)
    assert r.election_timeout == 25


def test_stickiness_uses_the_adopted_timeout() -> None:
    r = follower()
    advise(r, 12)
    for _ in range(11):
        r.tick()
    assert not by_type(drain(r), PRE_VOTE)
    r.step(Message(PRE_VOTE, "2", "3", 3, log_term=1, index=1))
    assert drain(r) == [], "heard from the leader 11 ticks ago: within T = 12"
    r.tick()  # 12 ticks: the window is over (the node may also stand itself now)
    drain(r)
    r.step(Message(PRE_VOTE, "2", "3", 3, log_term=2, index=5))
    (resp,) = by_type(drain(r), PRE_VOTE_RESP)
    assert not resp.reject


# ------------------------------------------------------------------ the succession


def test_succession_ranks_followers_by_rtt_and_advises_staggered_delays() -> None:
    r = leader()
    delays = {"2": 4, "3": 1, "4": 2, "5": 3}  # RTTs of 5, 2, 3 and 4 ticks
    for _ in range(8):
        hbs = heartbeat_round(r, delays)
        assert all(m.election_delay == 0 for m in hbs), "no ranking before the advice"
    hbs = heartbeat_round(r, delays)
    assert r.quorum_rtt() == 3
    step = math.ceil(2.0 * 3) + 2  # S = ceil(rtt_succession * q) + heartbeat_ticks = 8
    got = {m.to: m.election_delay for m in hbs}
    assert got == {"3": 1, "4": 1 + step, "5": 1 + 2 * step, "2": 1 + 3 * step}
    assert all(m.election_timeout == math.ceil(3.0 * 3) + 4 for m in hbs)

    off = leader(config=LONE.replace(rtt_succession=0.0))
    for _ in range(10):
        hbs = heartbeat_round(off, delays)
    assert all(m.election_delay == 0 for m in hbs) and hbs[0].election_timeout == 13


def test_succession_puts_a_follower_whose_log_is_behind_last() -> None:
    r = leader()
    noop = r.log.last_index()
    for f in ("2", "4", "5"):  # "3", the fastest, never acknowledges the no-op
        r.step(Message(MessageType.APP_RESP, "1", f, r.term, index=noop))
    drain(r)
    assert r.log.committed == noop and r.prs["3"].match < noop
    for _ in range(10):
        hbs = heartbeat_round(r, {"2": 4, "3": 1, "4": 2, "5": 3})
    got = {m.to: m.election_delay for m in hbs}
    assert sorted(got, key=got.__getitem__) == ["4", "5", "2", "3"]


def test_a_follower_with_a_delay_stands_at_t_plus_its_delay() -> None:
    fired = []
    for seed in range(20):
        f = follower(seed=seed)
        advise_delay(f, 16, 9)
        assert f.election_delay() == 9
        for t in range(1, 60):
            f.tick()
            if by_type(drain(f), PRE_VOTE):
                fired.append(t)
                break
    # [T + delay, T + delay + heartbeat_ticks): 25 or 26, where [T, 2T) would spread over 16-31.
    assert set(fired) == {25, 26}


def test_a_delay_changes_neither_stickiness_nor_the_check_quorum_period() -> None:
    r = follower()
    advise_delay(r, 12, 30)
    assert r.election_timeout == 12
    for _ in range(12):
        r.tick()
    drain(r)
    r.step(Message(PRE_VOTE, "2", "3", 3, log_term=2, index=5))
    (resp,) = by_type(drain(r), PRE_VOTE_RESP)
    assert not resp.reject, "stickiness ends at T = 12, not at T + delay"


def test_an_absurd_delay_is_clamped_and_ignored_without_succession() -> None:
    r = follower()
    advise_delay(r, 16, 1 << 62)
    assert r.election_delay() == 80  # at most election_ticks: T + delay <= 2 * election_ticks
    advise_delay(r, 16, 0)  # no delay advice: keep the last one
    assert r.election_delay() == 80
    plain = follower(config=ADAPTIVE.replace(rtt_succession=0.0))
    advise_delay(plain, 16, 9)
    assert plain.election_delay() == 0 and plain.election_timeout == 16


def test_the_fastest_follower_takes_over_in_one_term_on_every_seed() -> None:
    """Without the succession each follower draws from [T, 2T) and the winner is whoever
    draws lowest; with it, the leader's first-ranked follower ("2": all RTTs tie, so the
    lowest id) stands first, every time, and wins without a second term."""
    for seed in range(8):
        net = Network.bootstrap(5, ADAPTIVE, seed=seed)
        net.campaign("1")
        net.tick_all(2 * 10)
        assert {net[n].election_delay() for n in ids(5)[1:]} == {1, 1 + 4, 1 + 8, 1 + 12}
        term = net["1"].term
        net.isolate("1")
        for _ in range(100):
            net.tick_all(1)
            if [n for n in net.leaders() if n != "1"]:
                break
        assert [n for n in net.leaders() if n != "1"] == ["2"], seed
        assert net["2"].term == term + 1


# ------------------------------------------------------------------- whole cluster


def test_a_cluster_converges_on_one_advised_timeout_and_checks_quorum_with_it() -> None:
    net = Network.bootstrap(5, ADAPTIVE, seed=3)
    net.campaign("1")
    assert net.leaders() == ["1"]
    net.tick_all(2 * 9)  # nine heartbeat rounds, answered at once: RTT 1 tick
    assert net["1"].quorum_rtt() == 1
    assert {net[n].election_timeout for n in ids(5)} == {10}  # 3 * 1 + 4 = 7, raised to 10
    net.tick_all(200)
    assert net.leaders() == ["1"] and net["1"].term == 2  # no spurious election
    # Check quorum now runs every T = 10 ticks: an isolated leader steps down within 2T.
    net.isolate("1")
    for _ in range(20):
        net.tick("1")
    assert net["1"].role is Role.FOLLOWER
    # And the others elect a new leader within 2T plus the election, not 2 * 80 ticks.
    ticks = 0
    while not [n for n in net.leaders() if n != "1"] and ticks < 200:
        net.tick_all(1)
        ticks += 1
    assert ticks <= 2 * 10 + 4, ticks


def test_same_seed_same_run() -> None:
    def run() -> list[str]:
        net = Network.bootstrap(5, ADAPTIVE, seed=7)
        net.campaign("2")
        net.tick_all(40)
        net.crash("2")
        net.tick_all(60)
        trace: list[str] = net.trace
        return trace

    assert run() == run()


# ------------------------------------------------------------------------- lease reads


def test_lease_reads_last_the_floor_minus_the_margin_whatever_the_advice() -> None:
    cfg = ADAPTIVE.replace(read_mode="lease")  # lease = 10 - 2 = 8 ticks, while T may be 80
    net = Network.bootstrap(3, cfg, seed=1)
    net.campaign("1")
    net.tick_all(2)  # one heartbeat round acknowledged by everyone
    lead = net["1"]
    assert lead.election_timeout == 80, "no advice yet: T is still the upper bound"
    net.nodes["1"].read_states.clear()
    # The round was sent at most 2 ticks ago. Cut the followers off: no new acknowledgement.
    net.isolate("1")
    answered = []
    for t in range(12):
        net.read("1", b"r%d" % t)
        net.stabilize()
        answered.append(bool(net.nodes["1"].read_states))
        net.nodes["1"].read_states.clear()
        net.tick("1")
    # Served locally for under 8 ticks after the round's send tick, then never again.
    first_refused = answered.index(False)
    assert all(answered[:first_refused]) and not any(answered[first_refused:])
    assert 5 <= first_refused <= 8, answered
