"""Replicated objects on a three-node cluster: calls replicate, replicas converge, snapshots
bring a lagging member up to date, several objects share one node."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from phalanx_aio import LocalError, RaftNode, ReplicatedState, UnknownCommand, UnsupportedValue, command
from phalanx_aio.commands import ReplicatedGroup
from tests.commands.harness import ObjectHarness, start_all, started
from tests.node.harness import DEADLINE


class Inventory(ReplicatedState):
    def __init__(self) -> None:
        self.stock: dict[str, int] = {}
        self.log: list[tuple[str, int]] = []

    @command
    def add(self, item: str, n: int = 1) -> int:
        self.stock[item] = self.stock.get(item, 0) + n
        self.log.append((item, n))
        return self.stock[item]

    @command(name="remove", aliases=("take",))
    def take_out(self, item: str, *, all_of_it: bool = False) -> int:
        if item not in self.stock:
            raise KeyError(item)
        left = 0 if all_of_it else self.stock[item] - 1
        self.stock[item] = left
        return left


class Tags(ReplicatedState, name="tags"):
    def __init__(self) -> None:
        self.tags: set[str] = set()

    @command
    def tag(self, *names: str) -> int:
        self.tags.update(names)
        return len(self.tags)


@pytest.fixture
async def inv_cluster() -> AsyncIterator[ObjectHarness]:
    async for h in started(ObjectHarness(lambda _: Inventory())):
        yield h


async def test_commands_replicate_and_return_typed_results(inv_cluster: ObjectHarness) -> None:
    h = inv_cluster
    leader = await h.leader()
    follower = next(nid for nid in h.ids if nid != leader.id)
    on_leader: Inventory = h.objs[leader.id]
    on_follower: Inventory = h.objs[follower]
    assert await on_leader.add("apple", 3) == 3
    assert await on_follower.add("apple", n=2) == 5  # forwarded to the leader
    assert await on_follower.add("pear") == 1  # the default applies on every replica
    assert await on_leader.read(lambda s: s.stock) == {"apple": 5, "pear": 1}
    await h.until(lambda: all(o.stock == {"apple": 5, "pear": 1} for o in h.objs.values()))
    # Every replica applied the same commands in the same order: equal snapshots.
    snaps = {o.snapshot() for o in h.objs.values()}
    assert len(snaps) == 1
    assert h.objs["n1"].log == [("apple", 3), ("apple", 2), ("pear", 1)]


async def test_node_read_sees_the_object(inv_cluster: ObjectHarness) -> None:
    h = inv_cluster
    leader = await h.leader()
    inv: Inventory = h.objs[leader.id]
    await inv.add("apple", 4)
    for nid, node in h.nodes.items():
        assert node.state_machine is h.objs[nid]
        assert await node.read(lambda s: s.stock["apple"], timeout=DEADLINE) == 4  # type: ignore[attr-defined]


async def test_errors_raised_by_a_command_reach_the_caller_and_the_node_goes_on(
    inv_cluster: ObjectHarness,
) -> None:
    h = inv_cluster
    leader = await h.leader()
    inv: Inventory = h.objs[leader.id]
    with pytest.raises(KeyError):
        await inv.take_out("plum")
    await inv.add("plum", 2)
    assert await inv.take_out("plum", all_of_it=True) == 0
    assert leader.healthy


async def test_unknown_command_is_an_error_not_a_crash(inv_cluster: ObjectHarness) -> None:
    h = inv_cluster
    leader = await h.leader()
    inv: Inventory = h.objs[leader.id]
    frame = inv._rs_prefix() + inv._rs_codec().encode(["restock", [], {}])
    with pytest.raises(UnknownCommand, match="restock"):
        await leader.propose(frame)
    # An alias applies the renamed command; the node keeps serving.
    await inv.add("fig", 3)
    alias = inv._rs_prefix() + inv._rs_codec().encode(["take", ["fig"], {}])
    assert await leader.propose(alias) == 2
    assert await inv.add("fig") == 3


async def test_bad_calls_raise_before_anything_is_proposed(inv_cluster: ObjectHarness) -> None:
    h = inv_cluster
    leader = await h.leader()
    inv: Inventory = h.objs[leader.id]
    before = leader.status().last_index
    with pytest.raises(UnsupportedValue, match=r"object"):
        inv.add("apple", object())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        inv.add("apple", 1, 2)  # type: ignore[call-arg]
    assert leader.status().last_index == before
    assert all(o.stock == {} for o in h.objs.values())


async def test_an_unattached_object_refuses_calls() -> None:
    inv = Inventory()
    with pytest.raises(LocalError, match="not attached"):
        inv.add("apple", 1)
    with pytest.raises(LocalError, match="not attached"):
        await inv.read(lambda s: s.stock)


async def test_a_lagging_member_catches_up_through_a_snapshot() -> None:
    h = ObjectHarness(lambda _: Inventory(), snapshot_every=8)
    await start_all(h)
    try:
        leader = await h.leader()
        lagging = next(nid for nid in h.ids if nid != leader.id)
        await h.stop(lagging)
        inv: Inventory = h.objs[leader.id]
        for i in range(40):
            await inv.add(f"item{i % 5}", i)
        assert leader.status().first_index > 1  # compacted: the stopped member needs a snapshot
        node = await h.start(lagging)  # fresh memory, same store: restores, then catches up
        await h.until(lambda: h.objs[lagging].stock == inv.stock)
        assert node.status().first_index > 1
        assert h.objs[lagging].snapshot() == inv.snapshot()
        assert await h.objs[lagging].add("item0") == inv.stock["item0"]
    finally:
        await h.aclose()


async def test_several_objects_share_one_node() -> None:
    h = ObjectHarness(lambda _: [Inventory(), Tags()], snapshot_every=6)
    await start_all(h)
    try:
        leader = await h.leader()
        inv, tags = h.objs[leader.id]
        assert isinstance(leader.state_machine, ReplicatedGroup)
        assert leader.state_machine["tags"] is tags
        lagging = next(nid for nid in h.ids if nid != leader.id)
        await h.stop(lagging)
        for i in range(15):
            assert await inv.add("apple") == i + 1
            assert await tags.tag(f"t{i % 4}", "all") == min(i, 3) + 2
        await h.start(lagging)
        await h.until(lambda: h.objs[lagging][0].stock == {"apple": 15} and len(h.objs[lagging][1].tags) == 5)
        assert leader.state_machine.snapshot() == h.nodes[lagging].state_machine.snapshot()
    finally:
        await h.aclose()


def test_objects_of_one_node_need_distinct_ids() -> None:
    with pytest.raises(LocalError, match="distinct names"):
        ReplicatedGroup([Inventory(), Inventory()])
    with pytest.raises(LocalError, match="ReplicatedState"):
        ReplicatedGroup([Inventory(), object()])  # type: ignore[list-item]


async def test_an_object_is_hosted_by_one_running_node() -> None:
    h = ObjectHarness(lambda _: Inventory(), ids=["n1"])
    await h.start("n1")
    try:
        inv = h.objs["n1"]
        with pytest.raises(LocalError, match="already attached"):
            RaftNode("other", address="mem://other", peers={}, state_machine=inv, storage=h.stores["n1"])
    finally:
        await h.aclose()


class Careless(ReplicatedState):
    def __init__(self) -> None:
        self.when = complex(1, 2)  # not a codec value
        self._cache = object()  # private: not state, never snapshotted


def test_a_state_the_default_snapshot_cannot_encode_is_refused_when_attached() -> None:
    h = ObjectHarness(lambda _: Careless(), ids=["n1"])
    with pytest.raises(UnsupportedValue, match=r"Careless: the state cannot be snapshotted.*'when'.*complex"):
        h.make("n1")
    fixed = Careless()
    fixed.when = 1.5  # type: ignore[assignment]
    assert Careless().snapshot_state().keys() == {"when"}
    h.factory = lambda _: fixed
    assert h.make("n1").state_machine is fixed
