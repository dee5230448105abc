"""Issue 17, part 4: leader-only work (``RaftNode.while_leader``) and ``RaftNode.events()``,
on the in-memory harness."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from phalanx_aio import (
    ClosedError,
    ConfigError,
    ElectionWon,
    EventStream,
    LeaderChanged,
    LeaderWork,
    NodeEvent,
    RaftNode,
    RoleChanged,
)
from tests.node.harness import Harness


class Runs:
    """A leader-work function that records its runs: (node, term) started, ended, cancelled."""

    def __init__(self) -> None:
        self.started: list[tuple[str, int]] = []
        self.cancelled: list[tuple[str, int]] = []
        self.tasks: dict[tuple[str, int], asyncio.Task[object]] = {}

    def fn(self, node: RaftNode):  # type: ignore[no-untyped-def]
        async def work(term: int) -> None:
            self.started.append((node.id, term))
            task = asyncio.current_task()
            assert task is not None
            self.tasks[node.id, term] = task
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.append((node.id, term))
                raise

        return work


@pytest.fixture
async def solo() -> AsyncIterator[Harness]:
    h = Harness(["n1"])
    await h.start("n1")
    try:
        yield h
    finally:
        await h.aclose()


async def test_work_runs_on_the_leader_and_moves_when_leadership_is_lost(cluster: Harness) -> None:
    runs = Runs()
    works = {nid: node.while_leader(runs.fn(node)) for nid, node in cluster.nodes.items()}
    leader = await cluster.leader()
    term = leader.status().term
    await cluster.until(lambda: runs.started == [(leader.id, term)])
    assert works[leader.id].term == term and works[leader.id].running
    assert all(w.term is None and not w.running for nid, w in works.items() if nid != leader.id)

    # The cancellation is requested in the very turn the node stops leading: a listener added
    # after the work's sees it already cancelling when the role change is reported.
    seen_cancelling: list[bool] = []

    def on_event(ev: NodeEvent) -> None:
        if isinstance(ev, RoleChanged) and ev.previous == "leader":
            seen_cancelling.append(runs.tasks[leader.id, term].cancelling() > 0)

    leader.add_listener(on_event)
    cluster.net.isolate(leader.id)
    # The others elect a new leader with a higher term and start the work there; the isolated
    # leader steps down (check quorum) and its run is cancelled. For a while both may run: the
    # term tells them apart.
    await cluster.until(lambda: any(nid != leader.id for nid, _ in runs.started))
    await cluster.until(lambda: (leader.id, term) in runs.cancelled)
    assert seen_cancelling == [True]
    (new_id, new_term) = next(r for r in runs.started if r[0] != leader.id)
    assert new_term > term
    assert works[leader.id].term is None and not works[leader.id].running
    cluster.net.heal()
    await cluster.until(lambda: cluster.nodes[new_id].is_leader or (new_id, new_term) in runs.cancelled)
    for w in works.values():
        await w.stop()
    assert all(t.done() for t in runs.tasks.values())


async def test_work_starts_again_with_the_new_term_when_leadership_comes_back(cluster: Harness) -> None:
    runs = Runs()
    works = [node.while_leader(runs.fn(node)) for node in cluster.nodes.values()]
    a = await cluster.leader()
    t1 = a.status().term
    await cluster.until(lambda: runs.started == [(a.id, t1)])
    b = next(n for n in cluster.nodes.values() if n is not a)
    await a.transfer_leadership(b.id)
    await cluster.until(lambda: len(runs.started) == 2)
    assert (a.id, t1) in runs.cancelled
    b_term = runs.started[1][1]
    assert runs.started[1] == (b.id, b_term) and b_term > t1
    await b.transfer_leadership(a.id)
    await cluster.until(lambda: len(runs.started) == 3)
    assert (b.id, b_term) in runs.cancelled
    assert runs.started[2][0] == a.id and runs.started[2][1] > b_term
    assert [r for r in runs.started if r[0] == a.id] == [(a.id, t1), runs.started[2]]
    for w in works:
        await w.stop()


async def test_a_failing_run_is_logged_counted_and_started_again(
    solo: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    node = await solo.leader()
    term = node.status().term
    calls: list[int] = []
    steady = asyncio.Event()

    async def flaky(t: int) -> None:
        calls.append(t)
        if len(calls) <= 2:
            raise RuntimeError(f"boom {len(calls)}")
        steady.set()
        await asyncio.Event().wait()

    with caplog.at_level(logging.ERROR, logger="phalanx_aio.node"):
        work = node.while_leader(flaky, name="flaky", restart_delay=0.01, max_restart_delay=0.02)
        await asyncio.wait_for(steady.wait(), 10)
    assert calls == [term, term, term]
    assert (work.runs, work.failures) == (3, 2)
    assert isinstance(work.last_error, RuntimeError) and str(work.last_error) == "boom 2"
    failed = [r for r in caplog.records if "leader work flaky failed in term" in r.getMessage()]
    assert len(failed) == 2 and all(r.exc_info for r in failed)
    await work.stop()
    assert work.stopped and not work.running


async def test_a_run_that_returns_is_done_for_its_term(solo: Harness) -> None:
    node = await solo.leader()
    calls: list[int] = []

    async def once(t: int) -> None:
        calls.append(t)

    work = node.while_leader(once)
    await solo.until(lambda: not work.running)
    for _ in range(5):  # the node goes on working: many turns, many events, no restart
        await node.propose(b"incr 1")
    assert calls == [node.status().term] and work.runs == 1 and work.term == node.status().term
    await work.stop()


async def test_stop_and_async_with_end_the_work_for_good(solo: Harness) -> None:
    node = await solo.leader()
    runs = Runs()
    async with node.while_leader(runs.fn(node)) as work:
        assert isinstance(work, LeaderWork)
        await solo.until(lambda: len(runs.started) == 1)
    assert runs.cancelled == runs.started and work.stopped and not work.running
    assert work._on_event not in node._listeners
    await work.stop()  # idempotent


async def test_aclose_cancels_the_work_and_waits_for_it(solo: Harness) -> None:
    node = await solo.leader()
    cleaned: list[int] = []

    async def work(t: int) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.05)  # cleanup that takes a while: aclose waits for it
            cleaned.append(t)

    handle = node.while_leader(work)
    await solo.until(lambda: handle.running)
    term = handle.term
    await solo.stop("n1")
    assert cleaned == [term] and handle.stopped and not handle.running
    with pytest.raises(ClosedError):
        node.while_leader(work)
    with pytest.raises(ClosedError):
        node.events()


async def test_while_leader_before_start_begins_when_the_node_leads() -> None:
    h = Harness(["n1"])
    node = h.make("n1")
    runs = Runs()
    work = node.while_leader(runs.fn(node))
    assert not work.running
    await node.start()
    try:
        await h.until(lambda: len(runs.started) == 1)
        assert runs.started == [("n1", node.status().term)]
    finally:
        await node.aclose()
    assert runs.cancelled == runs.started


def test_while_leader_arguments_are_checked() -> None:
    node = Harness(["n1"]).make("n1")

    async def fn(t: int) -> None:
        pass

    with pytest.raises(ConfigError):
        node.while_leader(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        node.while_leader(fn, restart_delay=0)
    with pytest.raises(ConfigError):
        node.while_leader(fn, restart_delay=2, max_restart_delay=1)
    with pytest.raises(ConfigError):
        node.events(max_queue=0)


# ---------------------------------------------------------------------------------------------
# events()


async def test_events_iterate_in_order_and_end_when_the_node_closes() -> None:
    h = Harness(["n1"])
    node = h.make("n1")
    stream = node.events()
    everything: list[NodeEvent] = []
    node.add_listener(everything.append)
    await node.start()
    got: list[NodeEvent] = []

    async def consume() -> None:
        async for ev in stream:
            got.append(ev)
            if isinstance(ev, ElectionWon):
                asyncio.get_running_loop().call_soon(asyncio.ensure_future, node.aclose())

    await asyncio.wait_for(consume(), 10)  # ends by itself once the node has closed
    assert any(isinstance(ev, LeaderChanged) and ev.leader == "n1" for ev in got)
    assert got == everything and stream.dropped == 0
    assert isinstance(stream, EventStream)
    assert stream._push not in node._listeners


async def test_a_slow_consumer_loses_the_oldest_events_and_they_are_counted() -> None:
    h = Harness(["n1"])
    node = h.make("n1")
    stream = node.events(max_queue=2)
    everything: list[NodeEvent] = []
    node.add_listener(everything.append)
    await node.start()
    try:
        await node.wait_for_leader(10)
        assert len(everything) > 2
        # Two events are queued: taking them does not yield to the loop, nothing new comes in.
        newest = [await anext(stream), await anext(stream)]
        assert newest == everything[-2:]
        assert stream.dropped == len(everything) - 2
    finally:
        await node.aclose()
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_closing_a_stream_unsubscribes_and_ends_it(solo: Harness) -> None:
    node = solo.nodes["n1"]
    async with node.events() as stream:
        pass
    assert stream._push not in node._listeners
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    waiting = node.events()
    pending = asyncio.ensure_future(anext(waiting))
    await asyncio.sleep(0)
    await waiting.aclose()  # a consumer waiting for the next event is released
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(pending, 10)


async def test_work_that_closes_its_node_is_not_cancelled_by_it(solo: Harness) -> None:
    node = solo.nodes["n1"]
    after: list[bool] = []

    async def shut_down(t: int) -> None:
        await node.aclose()
        after.append(node.is_leader)  # still running: aclose neither cancelled nor awaited it

    work = node.while_leader(shut_down)
    await solo.until(lambda: bool(after))
    assert after == [False] and work.stopped
    assert node._loop_task is not None and node._loop_task.done()
