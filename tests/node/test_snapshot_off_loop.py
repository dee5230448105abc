"""A state machine that builds its snapshot off the loop (StateMachine.snapshot_later) lets
the node go on while the snapshot is encoded (issue 17, part 6)."""

from __future__ import annotations

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
