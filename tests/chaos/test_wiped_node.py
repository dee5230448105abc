"""A member whose data directory was wiped, restarted under its old id.

A member that lost its store has forgotten its votes and everything it acknowledged. Counted as
the same member again, it could vote twice in a term and help elect a leader that lacks
committed entries (the chaos harness found exactly that: acknowledged writes lost, states
diverged). So ``serve`` refuses to found a new log without ``--bootstrap``, and ``--join``
replaces the old membership: removed, added back as a learner (a node that knows no
configuration never votes), promoted once caught up.

The first test replays the harness's reproduction: with ``iso`` cut off, the leader commits
writes with ``wiped`` alone; the leader is killed and ``wiped`` wiped. Restarted with its
founding command line, ``wiped`` must be refused; restarted with ``--join`` it must not help
``iso`` (which lacks the writes) win, must be replaced once the old leader is back, and no
acknowledged write may be lost.
"""

from __future__ import annotations

import asyncio
import pathlib

from phalanx_aio.chaos.cluster import ChaosCluster
from phalanx_aio.kv.client import KVClient

from .conftest import serve_children

DEADLINE = 30.0


async def _refused(c: ChaosCluster, nid: str) -> int | None:
    """Start ``nid`` with its founding command line and return its exit status."""
    c.start_node(nid)
    return await c.wait_exit(nid, timeout=DEADLINE)


async def _voter_again(c: ChaosCluster, kv: KVClient, nid: str) -> bool:
    """Wait until ``nid`` (started empty with ``--join``) has had its old membership removed,
    joined again, caught up and been promoted (read from its log: the whole replacement can take
    milliseconds, too quick to watch through the member list), and is a caught-up voter."""
    for _ in range(int(DEADLINE / 0.3)):
        log = (c.workdir / f"{nid}.log").read_text()
        replaced = "removing its old membership" in log and "promoted to voter" in log
        me = next((m for m in await kv.members() if m.node_id == nid), None)
        st = await c.status(nid)
        caught_up = st is not None and st.applied_index >= (await kv.status()).commit_index
        if replaced and me is not None and not me.learner and caught_up:
            return True
        await asyncio.sleep(0.3)
    return False


async def test_a_wiped_member_is_refused_then_replaced_and_no_write_is_lost(
    tmp_path: pathlib.Path, no_orphans: None
) -> None:
    async with ChaosCluster(3, tmp_path) as c:
        found = await c.leader()
        assert found is not None
        leader = found[0]
        wiped, iso = (n for n in c.ids if n != leader)
        async with KVClient(c.endpoints, cluster_id=c.cluster_id, timeout=DEADLINE) as kv:
            await kv.put("before", "x")
            c.partition([leader, wiped], [iso])
            acked = {}
            for i in range(10):
                await kv.put(f"k{i}", f"v{i}")
                acked[f"k{i}"] = f"v{i}"
        c.kill(leader)
        c.kill(wiped)
        c.wipe(wiped)
        assert await _refused(c, wiped) == 2, f"logs in {tmp_path}"
        log = (tmp_path / f"{wiped}.log").read_text()
        assert "holds no store" in log and "--join" in log
        # Through --join it first asks for the members, which needs a leader: it waits (and,
        # knowing no configuration, would not vote; tests/node covers that rule directly).
        c.start_node(wiped, join=iso)
        c.heal_network()
        await asyncio.sleep(3.0)  # several election timeouts: iso alone cannot win
        st = await c.status(iso)
        assert st is not None and st.role != "leader", "iso won without the writes"
        c.start_node(leader)
        assert await c.wait_for_leader(DEADLINE) is not None
        async with KVClient(c.endpoints, cluster_id=c.cluster_id, timeout=DEADLINE) as kv:
            assert await _voter_again(c, kv, wiped), f"{wiped} was not replaced (logs in {tmp_path})"
            lost = [k for k, v in acked.items() if await kv.get(k) != v.encode()]
        assert lost == [], f"acknowledged writes lost: {lost} (logs in {tmp_path})"
    assert serve_children() == []


async def test_a_wiped_follower_rejoins_and_catches_up_with_the_same_leader(
    tmp_path: pathlib.Path, no_orphans: None
) -> None:
    async with ChaosCluster(3, tmp_path) as c:
        found = await c.leader()
        assert found is not None
        leader = found[0]
        wiped = next(n for n in c.ids if n != leader)
        async with KVClient(c.endpoints, cluster_id=c.cluster_id, timeout=DEADLINE) as kv:
            for i in range(20):
                await kv.put(f"k{i}", f"v{i}")
            c.kill(wiped)
            c.wipe(wiped)
            assert await _refused(c, wiped) == 2
            c.start_node(wiped, join=leader)
            replaced = await _voter_again(c, kv, wiped)
            assert replaced, (
                f"{wiped} was not replaced: {await c.status(wiped)}, members {await kv.members()}, "
                f"leader {await kv.status()} (logs in {tmp_path})"
            )
            await kv.put("after", "rejoin")
            target = (await kv.status()).commit_index
            applied = 0
            for _ in range(int(DEADLINE / 0.3)):
                st = await c.status(wiped)
                applied = st.applied_index if st is not None else 0
                if applied >= target:
                    break
                await asyncio.sleep(0.3)
        assert applied >= target, f"{wiped} applied {applied} of {target} (logs in {tmp_path})"
    assert serve_children() == []
