"""The durable write path of RaftNode: ``propose_many``, the shared deadlines, bounded loop
turns, commit-only hard states left unwritten, and leaders writing their own entries in the
background (sending before, committing on their followers' copies meanwhile)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from phalanx_aio.core.types import Entry, HardState, Snapshot
from phalanx_aio.errors import ClosedError, LocalError, NotLeader, ProposalDropped, StorageError, Timeout
from phalanx_aio.node import _proposals as proposals_module
from phalanx_aio.node.raft_node import RaftNode
from phalanx_aio.storage import MemoryStorage
from tests.node.harness import DEADLINE, FAST, Counter, Harness

Save = tuple[HardState | None, tuple[Entry, ...], Snapshot | None]


def record_saves(store: MemoryStorage) -> list[Save]:
    """Record every ``save`` call made on ``store`` (then let it through)."""
    calls: list[Save] = []
    real = store.save

    async def save(
        *, hard_state: HardState | None = None, entries: Any = (), snapshot: Snapshot | None = None
    ) -> None:
        calls.append((hard_state, tuple(entries), snapshot))
        await real(hard_state=hard_state, entries=entries, snapshot=snapshot)

    store.save = save  # type: ignore[method-assign]
    return calls


async def test_propose_many_returns_each_result_in_order(cluster: Harness) -> None:
    leader = await cluster.leader()
    assert await leader.propose_many([b"incr 1", b"incr 2", b"incr 3"], timeout=DEADLINE) == [1, 3, 6]
    follower = next(n for n in cluster.nodes.values() if n is not leader)
    await follower.wait_for_leader(DEADLINE)  # it forwards only to a leader it knows
    assert await follower.propose_many([b"incr 10"] * 2, timeout=DEADLINE) == [16, 26]
    assert await leader.propose_many([], timeout=DEADLINE) == []
    assert leader.status().pending_proposals == 0


async def test_propose_many_reports_a_failed_command_or_every_outcome(cluster: Harness) -> None:
    leader = await cluster.leader()
    with pytest.raises(ValueError, match="unknown command"):
        await leader.propose_many([b"incr 1", b"bogus", b"incr 1"], timeout=DEADLINE)
    assert cluster.sms[leader.id].value == 2  # the others were applied all the same
    out = await leader.propose_many(
        [b"incr 1", b"bogus", b"incr 1"], timeout=DEADLINE, return_exceptions=True
    )
    assert out[0] == 3 and out[2] == 4
    assert isinstance(out[1], ValueError)


async def test_propose_many_refuses_bad_input_and_overload_at_once(cluster: Harness) -> None:
    leader = await cluster.leader()
    with pytest.raises(LocalError, match="iterable of commands"):
        await leader.propose_many(b"incr 1")  # type: ignore[arg-type]
    with pytest.raises(LocalError, match="must be bytes"):
        await leader.propose_many([b"incr 1", "incr 2"])  # type: ignore[list-item]
    with pytest.raises(LocalError, match="must be bytes"):
        await leader.propose(42)  # type: ignore[arg-type]
    with pytest.raises(ProposalDropped, match="overloaded"):
        await leader.propose_many([b"incr 1"] * 10_001)  # max_pending is 10,000
    assert leader.status().pending_proposals == 0
    assert cluster.sms[leader.id].value == 0


def test_a_node_id_too_long_for_the_envelope_is_refused_at_construction() -> None:
    h = Harness(["a", "b", "c"])
    # The envelope's origin holds the id, "#" and the 16 hex digits of the run nonce.
    with pytest.raises(LocalError, match="at most 238 bytes"):
        h.make("é" * 120)  # 240 bytes in UTF-8
    assert h.make("x" * 238).id == "x" * 238


async def test_propose_many_without_a_leader_is_refused_whole() -> None:
    h = Harness(["a", "b", "c"])
    node = await h.start("a")  # alone: no leader
    try:
        with pytest.raises(NotLeader):
            await node.propose_many([b"incr 1"] * 3, timeout=0.3)
        out = await node.propose_many([b"incr 1"] * 2, timeout=0.3, return_exceptions=True)
        assert [type(x) for x in out] == [NotLeader, NotLeader]
        assert node.status().pending_proposals == 0
    finally:
        await h.aclose()


async def test_timeouts_share_deadlines_and_leave_nothing_behind(cluster: Harness) -> None:
    leader = await cluster.leader()
    cluster.net.isolate(leader.id)
    singles = [asyncio.create_task(leader.propose(b"incr 1", timeout=0.2)) for _ in range(50)]
    many = asyncio.create_task(leader.propose_many([b"incr 1"] * 5, timeout=0.2))
    every = asyncio.create_task(leader.propose_many([b"incr 1"] * 5, timeout=0.2, return_exceptions=True))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for t in singles:
        with pytest.raises(Timeout, match="outcome is unknown"):
            await t
    assert loop.time() - t0 >= 0.2 - 0.01  # never early
    with pytest.raises(Timeout):
        await many
    assert [type(x) for x in await every] == [Timeout] * 5
    assert leader.status().pending_proposals == 0
    assert not leader._deadlines._slots  # every grain fired and was dropped
    cluster.net.heal()


async def test_cancelled_propose_many_leaves_nothing_behind(cluster: Harness) -> None:
    leader = await cluster.leader()
    cluster.net.isolate(leader.id)
    task = asyncio.create_task(leader.propose_many([b"incr 1"] * 4, timeout=DEADLINE))
    await asyncio.sleep(0.05)
    assert leader.status().pending_proposals == 4
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert leader.status().pending_proposals == 0
    assert all(not waiters for waiters in leader._deadlines._slots.values())
    cluster.net.heal()


async def test_a_big_backlog_is_taken_in_bounded_turns(
    cluster: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    leader = await cluster.leader()
    saves = record_saves(cluster.stores[leader.id])
    monkeypatch.setattr(proposals_module, "TURN_MAX_PROPOSALS", 40)
    results = await leader.propose_many([b"incr 1"] * 400, timeout=DEADLINE)
    assert results == list(range(1, 401))
    sizes = [len(entries) for _, entries, _ in saves if entries]
    assert sum(sizes) >= 400 and max(sizes) <= 40


async def test_commit_only_hard_states_are_not_written(cluster: Harness) -> None:
    saves = {nid: record_saves(cluster.stores[nid]) for nid in cluster.ids}
    leader = await cluster.leader()
    for _ in range(5):
        await leader.propose(b"incr 1", timeout=DEADLINE)
    await cluster.until(lambda: all(cluster.sms[n].value == 5 for n in cluster.ids))
    for calls in saves.values():
        # Every save carries entries, a snapshot or a new term or vote: never only a commit.
        seen: tuple[int, str | None] | None = None
        for hs, entries, snap in calls:
            if not entries and snap is None:
                assert hs is not None and (hs.term, hs.vote) != seen
            if hs is not None:
                seen = (hs.term, hs.vote)
    # A restart still finds everything acknowledged.
    await cluster.stop(leader.id)
    node = await cluster.start(leader.id)
    await cluster.until(lambda: cluster.sms[node.id].value == 5)


def gate_saves(store: MemoryStorage) -> tuple[asyncio.Event, list[Save]]:
    """Hold every ``save`` on ``store`` until the returned event is set; record the calls."""
    gate = asyncio.Event()
    calls: list[Save] = []
    real = store.save

    async def slow_save(
        *, hard_state: HardState | None = None, entries: Any = (), snapshot: Snapshot | None = None
    ) -> None:
        calls.append((hard_state, tuple(entries), snapshot))
        await gate.wait()
        await real(hard_state=hard_state, entries=entries, snapshot=snapshot)

    store.save = slow_save  # type: ignore[method-assign]
    return gate, calls


async def test_leader_commits_on_its_followers_while_its_own_write_waits(cluster: Harness) -> None:
    leader = await cluster.leader()
    await leader.propose(b"incr 1", timeout=DEADLINE)
    term = leader.status().term
    gate, saves = gate_saves(cluster.stores[leader.id])
    # Both followers store the entry: a majority without the leader's copy (thesis §10.2.1).
    assert await leader.propose(b"incr 1", timeout=DEADLINE) == 2
    me = leader.status().core.progress[leader.id]
    assert me.match < leader.status().last_index  # its own copy does not count yet
    # Its loop does not wait for the disk: heartbeats go on for several election timeouts
    # (the old driver's loop waited here, so the followers elected another leader).
    timeout_s = 2 * FAST.election_ticks * FAST.tick_interval  # the longest election timeout
    await asyncio.sleep(3 * timeout_s)
    assert await leader.propose_many([b"incr 1"] * 50, timeout=DEADLINE) == list(range(3, 53))
    assert leader.is_leader and all(n.status().term == term for n in cluster.nodes.values())
    assert len(saves) == 1  # the first write still waits; the rest queue behind it
    gate.set()
    await cluster.until(lambda: leader.status().core.progress[leader.id].match == leader.status().last_index)
    # Everything that queued while the first write waited went in one more write (one fsync).
    assert [len(entries) for _, entries, _ in saves] == [1, 50]


async def test_a_failed_background_write_stops_the_leader(cluster: Harness) -> None:
    leader = await cluster.leader()
    store = cluster.stores[leader.id]

    async def broken_save(**kw: Any) -> None:
        raise StorageError("I/O error (simulated)")

    store.save = broken_save  # type: ignore[method-assign]
    with contextlib.suppress(ClosedError):
        await leader.propose(b"incr 1", timeout=DEADLINE)  # may commit on the followers first
    await cluster.until(lambda: not leader.healthy)
    with pytest.raises(ClosedError, match="I/O error"):
        await leader.propose(b"incr 1", timeout=DEADLINE)


def test_the_turn_bound_adapts_to_how_long_turns_take() -> None:
    from phalanx_aio.core import Config

    node = RaftNode(
        "a",
        address="mem://a",
        peers={},
        state_machine=Counter(),  # never started
        storage=MemoryStorage("a"),
        config=Config.lan(tick_interval=0.05),
    )
    top = proposals_module.TURN_MAX_PROPOSALS
    assert node._turn_cap == top
    node._adapt_turn(top, 0.5)  # a slow full turn: halve
    assert node._turn_cap == top // 2
    for _ in range(20):
        node._adapt_turn(node._turn_cap, 1.0)
    assert node._turn_cap == proposals_module.TURN_MIN_PROPOSALS  # never below the floor
    node._adapt_turn(10, 0.01)  # a quick turn that was not full: no change
    assert node._turn_cap == proposals_module.TURN_MIN_PROPOSALS
    for _ in range(50):
        node._adapt_turn(node._turn_cap, 0.01)  # quick full turns: grow back to the top
    assert node._turn_cap == top
