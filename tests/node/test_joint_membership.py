"""``RaftNode.change_members``: several voters at once through a joint configuration, and
removals remembered across restarts from a snapshot (issue 21)."""

from __future__ import annotations

import pytest

from phalanx_aio.errors import LocalError, ProposalDropped
from phalanx_aio.node.events import MembershipChanged, RemovedFromCluster
from tests.node.harness import DEADLINE, Harness


async def _with_learners(cluster: Harness, *nids: str) -> None:
    leader = await cluster.leader()
    cluster.ids += list(nids)
    for nid in nids:
        await cluster.start(nid, join=True)
    await leader.change_members(add_learners={nid: f"mem://{nid}" for nid in nids})
    commit = leader.status().commit
    await cluster.until(lambda: all(cluster.nodes[n].status().applied >= commit for n in nids))


async def test_two_voters_replaced_in_one_call(cluster: Harness) -> None:
    leader = await cluster.leader()
    await leader.propose(b"incr 1")
    await _with_learners(cluster, "n4", "n5")
    events: list[MembershipChanged] = []
    leader.add_listener(lambda ev: events.append(ev) if isinstance(ev, MembershipChanged) else None)
    gone = [n for n in ("n1", "n2", "n3") if n != leader.id]
    await leader.change_members(promote=["n4", "n5"], remove=gone, timeout=DEADLINE)
    st = leader.status()
    assert st.voters == tuple(sorted([leader.id, "n4", "n5"])) and st.voters_outgoing == ()
    # Two entries: C_old,new (joint), then C_new appended by the leader by itself.
    joint, final = events[-2], events[-1]
    assert joint.voters_outgoing == ("n1", "n2", "n3") and len(joint.changes) == 4
    assert final.voters_outgoing == () and final.change is None and final.index > joint.index
    assert await leader.propose(b"incr 1") == 2
    # The removed voters are told (the removal is part of the configuration).
    for nid in gone:
        await cluster.until(lambda nid=nid: cluster.nodes[nid].status().removed_at == final.index)


async def test_the_leader_can_replace_itself(cluster: Harness) -> None:
    leader = await cluster.leader()
    await _with_learners(cluster, "n4")
    await leader.change_members(promote=["n4"], remove=[leader.id], timeout=DEADLINE)
    await cluster.until(lambda: not leader.is_leader)
    others = [cluster.nodes[n] for n in cluster.ids if n != leader.id]
    await cluster.until(lambda: any(n.is_leader for n in others))
    new = next(n for n in others if n.is_leader)
    assert leader.id not in new.status().voters and "n4" in new.status().voters
    assert await new.propose(b"incr 1", timeout=DEADLINE) == 1


async def test_invalid_changes_are_refused_and_change_nothing(cluster: Harness) -> None:
    leader = await cluster.leader()
    before = leader.status()
    with pytest.raises(LocalError):
        await leader.change_members()
    with pytest.raises(ProposalDropped, match="named twice"):
        await leader.change_members(promote=["n2"], remove=["n2"])
    with pytest.raises(ProposalDropped, match="no voter"):
        await leader.change_members(remove=["n1", "n2", "n3"])
    after = leader.status()
    assert (after.voters, after.learners) == (before.voters, before.learners)
    assert after.last_index == before.last_index


async def test_removals_are_remembered_after_a_restart_from_a_snapshot() -> None:
    """A member restarted from a snapshot taken after a removal still refuses the removed
    node and tells it why (the list used to live in memory only)."""
    h = Harness(["n1", "n2", "n3", "n4"], snapshot_every=10)
    try:
        for nid in h.ids:
            await h.start(nid)
        leader = await h.leader()
        victim = next(n for n in h.ids if n != leader.id)
        await h.stop(victim)
        await leader.remove_member(victim, timeout=DEADLINE)
        removal = leader.status().commit
        for _ in range(30):
            await leader.propose(b"incr 1", timeout=DEADLINE)
        survivors = [n for n in h.ids if n != victim]
        await h.until(lambda: all(h.stores[n]._snapshot.meta.index > removal for n in survivors))
        for nid in survivors:  # every member restarts from its snapshot
            await h.stop(nid)
        for nid in survivors:
            await h.start(nid)
        assert all(dict(h.stores[n]._snapshot.meta.conf.removed) == {victim: removal} for n in survivors)
        await h.leader()
        told: list[RemovedFromCluster] = []
        node = h.make(victim)
        node.add_listener(lambda ev: told.append(ev) if isinstance(ev, RemovedFromCluster) else None)
        await node.start()
        await h.until(lambda: node.status().removed_at == removal)
        assert told and told[0].index == removal
    finally:
        await h.aclose()
