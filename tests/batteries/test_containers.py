"""The replicated counter, containers and queues on a three-node cluster: results as the
Python types give them, equal state on every member, and a lagging member brought up to date
by a snapshot that behaves exactly like the replicas that applied every command."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from phalanx_aio import LocalError, UnsupportedValue
from phalanx_aio.batteries import (
    ReplicatedCounter,
    ReplicatedDict,
    ReplicatedList,
    ReplicatedPriorityQueue,
    ReplicatedQueue,
    ReplicatedSet,
)
from tests.commands.harness import ObjectHarness, start_all, started


def objects(_: str) -> list[Any]:
    return [
        ReplicatedCounter(name="counter"),
        ReplicatedDict[str, Any](name="dict"),
        ReplicatedList[Any](name="list"),
        ReplicatedSet[Any](name="set"),
        ReplicatedQueue[str](maxsize=3, name="queue"),
        ReplicatedPriorityQueue[tuple[int, str]](name="pq"),
    ]


class Cluster:
    def __init__(self, h: ObjectHarness) -> None:
        self.h = h

    async def on_follower(self) -> dict[str, Any]:
        """The objects of a follower (whose calls are forwarded: the longer path)."""
        leader = await self.h.leader()
        nid = next(n for n in self.h.ids if n != leader.id)
        return {o.replicated_id: o for o in self.h.objs[nid]}

    async def converged(self) -> None:
        """Every member applied the same commands: equal snapshots everywhere."""
        await self.h.until(
            lambda: len({n.status().applied for n in self.h.nodes.values()}) == 1
            and len({n.state_machine.snapshot() for n in self.h.nodes.values()}) == 1
        )

    def everywhere(self, ident: str) -> list[Any]:
        return [next(o for o in objs if o.replicated_id == ident) for objs in self.h.objs.values()]


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async for h in started(ObjectHarness(objects)):
        yield Cluster(h)


async def test_counter(cluster: Cluster) -> None:
    c: ReplicatedCounter = (await cluster.on_follower())["counter"]
    assert await c.inc() == 1
    assert await c.add(10) == 11
    assert await c.sub(4) == 7
    assert await c.dec() == 6
    assert c.get() == c.value == 6
    assert await c.set(-3) == -3
    await cluster.converged()
    assert [o.value for o in cluster.everywhere("counter")] == [-3, -3, -3]


async def test_dict(cluster: Cluster) -> None:
    d: ReplicatedDict[str, Any] = (await cluster.on_follower())["dict"]
    await d.set("a", 1)
    assert d.get("a") == d["a"] == 1
    assert await d.setdefault("a", 5) == 1
    assert await d.setdefault("b", [1, 2]) == [1, 2]
    await d.update({"c": {"x": (1, 2)}, "d": None})
    assert await d.pop("a") == 1
    assert await d.pop("a", "gone") == "gone"
    assert d.get("a") is None and "a" not in d
    with pytest.raises(KeyError):
        d["a"]
    assert list(d) == ["b", "c", "d"] and len(d) == 3
    assert dict(d.items()) == d.copy() == {"b": [1, 2], "c": {"x": (1, 2)}, "d": None}
    with pytest.raises(UnsupportedValue):
        d.set("e", object())
    await cluster.converged()
    assert all(o.copy() == d.copy() for o in cluster.everywhere("dict"))
    await d.clear()
    await d.reset({"z": 0})
    assert d.copy() == {"z": 0}


async def test_list(cluster: Cluster) -> None:
    xs: ReplicatedList[Any] = (await cluster.on_follower())["list"]
    await xs.append(3)
    await xs.extend([1, 2, 1])
    await xs.insert(0, 9)
    assert xs.copy() == [9, 3, 1, 2, 1]
    await xs.set(1, 4)
    await xs.remove(1)
    assert xs.copy() == [9, 4, 2, 1]
    assert await xs.pop() == 1
    assert await xs.pop(0) == 9
    await xs.sort(reverse=True)
    assert xs.copy() == [4, 2] and xs[0] == xs.get(0) == 4
    assert xs.index(2) == 1 and xs.count(4) == 1 and 2 in xs and len(xs) == 2
    with pytest.raises(ValueError):
        await xs.remove(99)
    with pytest.raises(IndexError):
        await xs.set(10, 0)
    await xs.append("x")
    with pytest.raises(TypeError):  # the same error on every member, which all go on
        await xs.sort()
    await cluster.converged()
    assert all(o.copy() == [4, 2, "x"] for o in cluster.everywhere("list"))
    await xs.clear()
    with pytest.raises(IndexError):
        await xs.pop()


async def test_set(cluster: Cluster) -> None:
    s: ReplicatedSet[Any] = (await cluster.on_follower())["set"]
    assert await s.add("b") is True
    assert await s.add("b") is False
    await s.update(["a", "c", ("t", 1)])
    assert await s.discard("c") is True
    assert await s.discard("c") is False
    await s.remove("a")
    with pytest.raises(KeyError):
        await s.remove("a")
    assert "b" in s and len(s) == 2 and s.copy() == {"b", ("t", 1)}
    assert await s.pop() == "b"  # the earliest added
    assert await s.pop() == ("t", 1)
    with pytest.raises(KeyError):
        await s.pop()
    await cluster.converged()


async def test_queue(cluster: Cluster) -> None:
    q: ReplicatedQueue[str] = (await cluster.on_follower())["queue"]
    assert q.empty() and await q.get() is None and await q.get("none") == "none"
    for item in ("a", "b", "c"):
        assert await q.put(item) is True
    assert q.full() and await q.put("d") is False
    assert q.qsize() == len(q) == 3 and q.peek() == "a"
    assert [await q.get(), await q.get()] == ["a", "b"]
    await cluster.converged()
    assert all(o.peek() == "c" and len(o) == 1 for o in cluster.everywhere("queue"))


async def test_priority_queue(cluster: Cluster) -> None:
    pq: ReplicatedPriorityQueue[tuple[int, str]] = (await cluster.on_follower())["pq"]
    for item in [(3, "c"), (1, "a"), (2, "b"), (1, "0")]:
        assert await pq.put(item) is True
    assert pq.peek() == (1, "0") and pq.qsize() == 4 and not pq.full()
    assert [await pq.get() for _ in range(4)] == [(1, "0"), (1, "a"), (2, "b"), (3, "c")]
    assert await pq.get() is None and pq.empty()


def test_bad_maxsize() -> None:
    with pytest.raises(LocalError, match="maxsize"):
        ReplicatedQueue[int](maxsize=-1)


async def test_a_member_restored_from_a_snapshot_behaves_like_the_others() -> None:
    h = ObjectHarness(objects, snapshot_every=8)
    await start_all(h)
    try:
        c = Cluster(h)
        leader = await h.leader()
        lagging = next(n for n in h.ids if n != leader.id)
        await h.stop(lagging)
        objs = {o.replicated_id: o for o in h.objs[leader.id]}
        for i in range(12):
            await objs["counter"].add(i)
            await objs["dict"].set(f"k{i % 4}", [i, {"i": i}])
            await objs["list"].append(i * 1.5)
            await objs["set"].add(f"m{(i * 7) % 10}")
            await objs["queue"].put(f"q{i}")
            await objs["pq"].put((i % 3, f"p{i}"))
        assert leader.status().first_index > 1
        await h.start(lagging)
        await c.converged()
        assert h.nodes[lagging].status().first_index > 1  # it did restore a snapshot
        # Pops on every member now return the same items, in the same order.
        leader = await h.leader()
        pops: list[Any] = []
        for ident in ("set", "pq", "queue"):
            obj = next(o for o in h.objs[lagging] if o.replicated_id == ident)
            pops.append([await (obj.pop() if ident == "set" else obj.get()) for _ in range(3)])
        assert pops[0] == ["m0", "m7", "m4"]
        assert pops[1] == [(0, "p0"), (0, "p3"), (0, "p6")]
        assert pops[2] == [f"q{i}" for i in range(3)]
        await c.converged()
    finally:
        await h.aclose()
