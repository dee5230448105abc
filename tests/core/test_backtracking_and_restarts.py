"""Fast log backtracking, and what survives a restart (term, vote, commit, log).

Each test drives a small :class:`~tests.core.harness.Network` and checks the outcome, and where
the exchange itself is the point, the golden trace of messages (see ``harness.fmt``).
"""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from phalanx_aio.core import (
    Entry,
    EntryType,
    HardState,
    InitialState,
    Raft,
    ReadState,
    Role,
)
from phalanx_aio.errors import LocalError
from tests.core.harness import Network, ids, log_state
from tests.core.scenarios import ET, LAN, LEASE, cluster


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
