"""LockManager: locks expire by log time, the same on every member whatever its own clock;
fencing tokens only grow; state survives a snapshot."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from phalanx_aio import LocalError
from phalanx_aio.batteries import LockManager
from tests.commands.harness import ObjectHarness, start_all, started


class Clocks:
    """A fake clock per member (the readings their commands carry)."""

    def __init__(self) -> None:
        self.now = {"n1": 1000.0, "n2": 1000.0, "n3": 1000.0}

    def manager(self, nid: str) -> LockManager:
        return LockManager(clock=lambda: self.now[nid])


class LockCluster:
    def __init__(self, h: ObjectHarness, clocks: Clocks) -> None:
        self.h = h
        self.clocks = clocks
        self.managers: dict[str, LockManager] = h.objs

    async def settled(self) -> None:
        await self.h.until(lambda: len({n.status().applied for n in self.h.nodes.values()}) == 1)

    def views(self, name: str) -> set[tuple[int | None, float | None, float]]:
        """(holder, expiry, log time) as every member sees it."""
        return {(m.holder(name), m.expires_at(name), m.log_time) for m in self.managers.values()}


def lock_harness(clocks: Clocks, **kw: object) -> ObjectHarness:
    return ObjectHarness(clocks.manager, **kw)


@pytest.fixture
async def locks() -> AsyncIterator[LockCluster]:
    clocks = Clocks()
    async for h in started(lock_harness(clocks)):
        yield LockCluster(h, clocks)


async def test_locks_expire_by_log_time_on_every_member(locks: LockCluster) -> None:
    m1, m2, m3 = (locks.managers[n] for n in ("n1", "n2", "n3"))
    now = locks.clocks.now
    t1 = await m1.acquire("job", ttl=10)
    assert t1 is not None
    now["n2"] = 1009.5
    assert await m2.acquire("job", ttl=10) is None  # held until log time 1010
    await locks.settled()
    assert locks.views("job") == {(t1, 1010.0, 1009.5)}
    # A member whose clock is far behind cannot move log time back, nor stretch a lock.
    now["n3"] = 5.0
    t2 = await m3.acquire("other", ttl=1)
    assert t2 is not None and t2 > t1
    await locks.settled()
    assert locks.views("other") == {(t2, 1010.5, 1009.5)}
    # Expiry is decided when a command moves log time to the expiry, on every member alike.
    now["n2"] = 1010.0
    t3 = await m2.acquire("job", ttl=10)
    assert t3 is not None and t3 > t2
    await locks.settled()
    assert locks.views("job") == {(t3, 1020.0, 1010.0)}
    assert locks.views("other") == {(t2, 1010.5, 1010.0)}
    now["n1"] = 1010.5
    t4 = await m1.acquire("other", ttl=2)
    assert t4 is not None and t4 > t3
    await locks.settled()
    assert locks.views("other") == {(t4, 1012.5, 1010.5)}
    # The members' own clocks play no part in applying: skew them all and nothing changes.
    now.update(n1=0.0, n3=1e12)
    assert {(m.holder("job"), m.holder("other")) for m in (m1, m2, m3)} == {(t3, t4)}


async def test_release_and_renew_need_the_current_token(locks: LockCluster) -> None:
    m1, m2, _ = (locks.managers[n] for n in ("n1", "n2", "n3"))
    now = locks.clocks.now
    old = await m1.acquire("job", ttl=5)
    assert old is not None
    now["n1"] = now["n2"] = 1006.0  # old expired at 1005
    assert await m1.renew("job", old, ttl=5) is False
    new = await m2.acquire("job", ttl=5)
    assert new is not None and new > old
    assert await m1.release("job", old) is False  # the new holder keeps it
    assert m1.holder("job") == new
    now["n2"] = 1010.0  # 1 s before the end of the lock, renewed for 5 s more
    assert await m2.renew("job", new, ttl=5) is True
    await locks.settled()
    assert locks.views("job") == {(new, 1015.0, 1010.0)}
    assert await m2.release("job", new) is True
    assert await m2.release("job", new) is False
    await locks.settled()
    assert locks.views("job") == {(None, None, 1010.0)}
    again = await m1.acquire("job", ttl=1)
    assert again is not None and again > new


async def test_fencing_tokens_increase_across_names_and_members(locks: LockCluster) -> None:
    tokens = []
    for i in range(9):
        m = locks.managers[f"n{i % 3 + 1}"]
        tok = await m.acquire(f"lock{i % 4}", ttl=1)
        if tok is None:
            locks.clocks.now = dict.fromkeys(locks.clocks.now, locks.clocks.now["n1"] + 2)
            tok = await m.acquire(f"lock{i % 4}", ttl=1)
        assert tok is not None
        tokens.append(tok)
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)


async def test_bad_ttl_is_refused_before_proposing(locks: LockCluster) -> None:
    m = locks.managers["n1"]
    for ttl in (0, -1, float("inf"), float("nan")):
        with pytest.raises(LocalError, match="ttl"):
            await m.acquire("job", ttl=ttl)
    assert m.log_time == 0.0  # nothing was applied


async def test_lock_state_survives_a_snapshot_and_expired_locks_are_forgotten() -> None:
    clocks = Clocks()
    h = lock_harness(clocks, snapshot_every=8)
    await start_all(h)
    try:
        c = LockCluster(h, clocks)
        leader = await h.leader()
        lagging = next(n for n in h.ids if n != leader.id)
        await h.stop(lagging)
        m = c.managers[leader.id]
        for i in range(80):
            clocks.now[leader.id] = 1000.0 + i
            assert await m.acquire(f"short{i}", ttl=0.5) is not None
        held = await m.acquire("long", ttl=1000)
        assert len(m.snapshot_state()["locks"]) < 80  # the expired ones were dropped
        await h.start(lagging)
        await c.settled()
        assert h.nodes[lagging].status().first_index > 1
        restored = c.managers[lagging]
        assert restored.snapshot() == m.snapshot()
        assert restored.holder("long") == held and restored.log_time == 1079.0
        clocks.now[lagging] = 1080.0
        assert await restored.acquire("long", ttl=1) is None
        nxt = await restored.acquire("fresh", ttl=1)
        assert nxt is not None and held is not None and nxt == held + 1
    finally:
        await h.aclose()
