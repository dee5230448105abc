"""A state machine that builds its snapshot off the loop (StateMachine.snapshot_later) lets
the node go on while the snapshot is encoded (issue 17, part 6)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from phalanx_aio.kv import KVStateMachine
from phalanx_aio.kv.state_machine import KVCommand, KVOp, encode_command
from tests.node.harness import DEADLINE, Counter, Harness


class SlowSnapshots(Counter):
    """A counter whose snapshot encoding waits for the test (in the worker thread)."""

    release = threading.Event()
    started = threading.Event()

    def snapshot_later(self) -> Callable[[], bytes]:
        copy = self.snapshot()  # the state now

        def encode() -> bytes:
            SlowSnapshots.started.set()
            assert SlowSnapshots.release.wait(30)
            return copy

        return encode


async def test_the_node_goes_on_while_its_snapshot_is_encoded() -> None:
    SlowSnapshots.release.clear()
    SlowSnapshots.started.clear()
    h = Harness(["n1", "n2", "n3"], snapshot_every=10)
    try:
        sms = {nid: SlowSnapshots() for nid in h.ids}
        for nid in h.ids:
            await h.make(nid, state_machine=sms[nid]).start()
        leader = await h.leader()
        for _ in range(15):
            await leader.propose(b"incr 1", timeout=DEADLINE)
        await h.until(SlowSnapshots.started.is_set)
        # Encoding is blocked, yet proposals commit and apply, and elections stay calm.
        term = leader.status().term
        for _ in range(20):
            await leader.propose(b"incr 1", timeout=DEADLINE)
        assert leader.is_leader and leader.status().term == term
        assert all(h.stores[n]._snapshot.meta.index == 0 for n in h.ids)  # nothing stored yet
        SlowSnapshots.release.set()
        await h.until(lambda: all(h.stores[n]._snapshot.meta.index >= 10 for n in h.ids))
        await leader.propose(b"incr 1", timeout=DEADLINE)
        await h.until(lambda: all(sm.value == 36 for sm in sms.values()))
    finally:
        SlowSnapshots.release.set()
        await h.aclose()


def test_the_kv_state_machine_encodes_the_copy_taken_when_asked() -> None:
    sm = KVStateMachine()
    sm.apply(encode_command(KVCommand(KVOp.PUT, b"a", b"1", client_id="c", seq=1)))
    later = sm.snapshot_later()
    expected = sm.snapshot()
    sm.apply(encode_command(KVCommand(KVOp.PUT, b"b", b"2", client_id="c", seq=2)))  # after the copy
    assert later() == expected
    other = KVStateMachine()
    other.restore(later())
    assert other.get(b"a") == b"1" and other.get(b"b") is None


async def test_snapshots_under_writes_leave_every_member_with_the_same_state() -> None:
    """The KV overlay (writes during an encoding) and the log freed in steps after each
    compaction, in a real node: several snapshots while writes go on, then every member holds
    the same keys, its in-memory log starts after its snapshot, and nothing is left to free."""
    h = Harness(["n1", "n2", "n3"], snapshot_every=200)
    try:
        sms = {nid: KVStateMachine() for nid in h.ids}
        for nid in h.ids:
            await h.make(nid, state_machine=sms[nid]).start()
        leader = await h.leader()
        cmds = [
            encode_command(KVCommand(KVOp.DELETE if i % 5 == 4 else KVOp.PUT, b"k%d" % (i % 700), b"v%d" % i))
            for i in range(3000)
        ]
        for i in range(0, len(cmds), 100):
            await leader.propose_many(cmds[i : i + 100], timeout=DEADLINE)
        want = KVStateMachine()
        for c in cmds:
            want.apply(c)
        await h.until(lambda: all(dict(sm.data) == want.data for sm in sms.values()))
        await h.until(lambda: all(h.stores[n]._snapshot.meta.index >= 2000 for n in h.ids))
        for nid in h.ids:
            node = h.nodes[nid]
            await h.until(lambda node=node: not node._compacted)
            log = node._require_core().log
            assert not log.entries or log.entries[0].index == log.snap_index + 1
    finally:
        await h.aclose()


class ThreadedRestores(KVStateMachine):
    """Records the thread each snapshot was decoded in."""

    decoded_in: list[str]

    def restore_later(self, data: bytes) -> Callable[[], Callable[[], None]]:
        decode = super().restore_later(data)

        def traced() -> Callable[[], None]:
            self.decoded_in.append(threading.current_thread().name)
            return decode()

        return traced


async def test_a_snapshot_from_the_leader_is_decoded_in_a_worker_thread() -> None:
    h = Harness(["n1", "n2", "n3"], snapshot_every=100)
    try:
        sms = {nid: ThreadedRestores() for nid in h.ids}
        for sm in sms.values():
            sm.decoded_in = []
        for nid in h.ids:
            await h.make(nid, state_machine=sms[nid]).start()
        leader = await h.leader()
        behind = next(n for n in h.ids if n != leader.id)
        await h.stop(behind)
        cmds = [encode_command(KVCommand(KVOp.PUT, b"k%d" % i, b"v%d" % i)) for i in range(600)]
        for i in range(0, len(cmds), 50):
            await leader.propose_many(cmds[i : i + 50], timeout=DEADLINE)
        await h.until(lambda: h.stores[leader.id]._snapshot.meta.index >= 300)
        fresh = ThreadedRestores()
        fresh.decoded_in = []
        await h.make(behind, state_machine=fresh).start()  # its log lacks what was compacted
        await h.until(lambda: dict(fresh.data) == dict(sms[leader.id].data) and len(fresh.data) == 600)
        assert fresh.decoded_in and threading.main_thread().name not in fresh.decoded_in
    finally:
        await h.aclose()


class SlowRestores(KVStateMachine):
    """Its decode waits for the test (in the worker thread)."""

    release = threading.Event()
    started = threading.Event()

    def restore_later(self, data: bytes) -> Callable[[], Callable[[], None]]:
        decode = super().restore_later(data)

        def slow() -> Callable[[], None]:
            SlowRestores.started.set()
            assert SlowRestores.release.wait(30)
            return decode()

        return slow


async def test_a_long_decode_does_not_make_the_follower_campaign() -> None:
    """While its Raft work waits for a decode, ticks and the leader's messages queue up;
    handled in the order they came once the state is installed, they do not make the
    follower campaign (five election timeouts pass meanwhile)."""
    SlowRestores.release.clear()
    SlowRestores.started.clear()
    h = Harness(["n1", "n2", "n3"], snapshot_every=50)
    try:
        sms = {nid: KVStateMachine() for nid in h.ids}
        for nid in h.ids:
            await h.make(nid, state_machine=sms[nid]).start()
        leader = await h.leader()
        behind = next(n for n in h.ids if n != leader.id)
        await h.stop(behind)
        cmds = [encode_command(KVCommand(KVOp.PUT, b"k%d" % i, b"v")) for i in range(300)]
        for i in range(0, len(cmds), 50):
            await leader.propose_many(cmds[i : i + 50], timeout=DEADLINE)
        await h.until(lambda: h.stores[leader.id]._snapshot.meta.index >= 100)
        slow = SlowRestores()
        node = h.make(behind, state_machine=slow)
        campaigns: list[object] = []
        node.add_listener(lambda ev: campaigns.append(ev) if type(ev).__name__ == "ElectionStarted" else None)
        await node.start()
        await h.until(SlowRestores.started.is_set)
        # Five election timeouts at most (tick 10 ms, at most 20 ticks each) pass meanwhile.
        await asyncio.sleep(5 * 20 * 0.01)
        SlowRestores.release.set()
        await h.until(lambda: len(slow.data) == 300)
        await leader.propose(encode_command(KVCommand(KVOp.PUT, b"after", b"1")), timeout=DEADLINE)
        await h.until(lambda: slow.get(b"after") == b"1")
        assert campaigns == []
        assert leader.is_leader
    finally:
        SlowRestores.release.set()
        await h.aclose()
