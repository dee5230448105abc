"""Randomized faults: safety holds and the cluster converges, with ReadIndex or lease reads.

Each test drives a small :class:`~tests.core.harness.Network` and checks the outcome, and where
the exchange itself is the point, the golden trace of messages (see ``harness.fmt``).
"""

from __future__ import annotations

import random

import pytest

from phalanx_aio.core import (
    ConfChange,
    Config,
    Message,
    MessageType,
    Raft,
)
from phalanx_aio.errors import NotLeader, ProposalDropped
from tests.core.harness import Network, ids
from tests.core.scenarios import ADD_LEARNER, ADD_VOTER, ET, LAN, LEASE, REMOVE


def _chaos(seed: int, config: Config, steps: int = 300) -> Network:
    """Random partitions, drops, reordering, crashes, proposals, reads, compactions, transfers
    and membership changes of node 6; the harness checks State Machine Safety and Election
    Safety throughout. Then heal everything and require convergence."""
    rng = random.Random(seed)
    net = Network.bootstrap(5, config, seed)
    net.reorder = random.Random(seed + 1000)
    lossy = random.Random(seed + 2000)
    net.drop_if = lambda m: lossy.random() < 0.1
    n = 0
    for _ in range(steps):
        live = [x for x in sorted(net.nodes) if x not in net.down]
        r = rng.random()
        if r < 0.04:
            nodes = sorted(net.nodes)
            rng.shuffle(nodes)
            cut = rng.randrange(1, len(nodes))
            net.cut.clear()
            net.partition(nodes[:cut], nodes[cut:])
        elif r < 0.08:
            net.cut.clear()
        elif r < 0.10 and len(net.down) < 2:
            net.crash(rng.choice(live))
        elif r < 0.14 and net.down:
            victim = sorted(net.down)[0]
            net.restart(victim, life=rng.randrange(1 << 30))
        elif r < 0.30:
            for lead in net.leaders():
                try:
                    net[lead].propose_many([b"%d" % (n + k) for k in range(rng.randrange(1, 4))])
                    n += 3
                except ProposalDropped:
                    pass
        elif r < 0.33:
            nid = rng.choice(live)
            if net.nodes[nid].applied_index > net[nid].log.snap_index:
                net.compact(nid, net.nodes[nid].applied_index)
        elif r < 0.36:
            try:
                net.read(rng.choice(live), b"r%d" % n)
                n += 1
            except NotLeader:
                pass
        elif r < 0.37:
            for lead in net.leaders():
                net[lead].transfer_leadership(rng.choice(ids(5)))
        elif r < 0.40:
            for lead in net.leaders():
                conf = net[lead].conf
                kind = REMOVE if "6" in conf.voters else ADD_VOTER if "6" in conf.learners else ADD_LEARNER
                try:
                    net[lead].propose_conf_change(ConfChange(kind, "6"))
                except ProposalDropped:
                    continue
                if "6" not in net.nodes:
                    net.add("6")
        if rng.random() < 0.2:  # reads are cheap: ask often, so stale answers would show
            try:
                net.read(rng.choice(live), b"q%d" % n)
                n += 1
            except NotLeader:
                pass
        for nid in live:
            net.tick(nid)
        net.pump()
    # Heal everything; a leader emerges and every member converges.
    net.heal()
    net.reorder = None
    for nid in sorted(net.down):
        net.restart(nid, life=99)
    net.stabilize()
    lead = None
    for _ in range(20 * ET):
        net.tick_all(1)
        leaders = net.leaders()
        if len(leaders) == 1 and net[leaders[0]].status().lead_transferee is None:
            lead = leaders[0]
            break
    assert lead is not None, "no leader after healing"
    net[lead].propose(b"final")
    members = sorted(net[lead].conf.members())
    # A lost snapshot (or its answer) is retried after two election timeouts: allow for that.
    for _ in range(4 * ET):
        net.tick_all(1)
        if all(net.applied(nid) == net.applied(lead) for nid in members):
            break
    for nid in members:
        assert net.applied(nid) == net.applied(lead), nid
    assert net.applied(lead)[-1] == b"final"
    return net


@pytest.mark.parametrize("seed", range(20))
def test_randomized_faults_preserve_safety_and_converge(seed: int) -> None:
    net = _chaos(seed, LAN.replace(max_msg_entries=4, max_inflight_msgs=3))
    assert len(net.leader_of_term) > 1  # the faults did cause elections


@pytest.mark.parametrize("seed", range(10))
def test_randomized_faults_with_lease_reads_and_no_pre_vote(seed: int) -> None:
    # Check quorum alone keeps a removed node 6 (which never learns of its removal) from
    # disrupting; with neither pre-vote nor check quorum it could, so that mix is not run.
    _chaos(100 + seed, LEASE.replace(pre_vote=False))


def test_transport_reports_move_the_leaders_progress() -> None:
    """report_unreachable drops a streaming follower to probing; a failed snapshot report
    makes the leader probe again; both are ignored off the leader."""
    import random as _random

    from phalanx_aio.core import Config
    from phalanx_aio.core.progress import ProgressState

    node = Raft.bootstrap("a", Config.lan(), _random.Random(1), ["a", "b", "c"])
    node.report_unreachable("b")  # a follower: ignored
    node.campaign(transfer=True)
    for voter in ("b", "c"):
        node.step(Message(MessageType.VOTE_RESP, "a", voter, node.term))
    assert node.is_leader
    pr = node.prs["b"]
    pr.become_replicate()
    node.report_unreachable("b")
    assert pr.state is ProgressState.PROBE
    pr.become_snapshot(5, 0)
    node.report_snapshot("b", True)
    assert pr.state is ProgressState.SNAPSHOT
    node.report_snapshot("b", False)
    assert pr.state is ProgressState.PROBE
