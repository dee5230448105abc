"""When a node snapshots: every ``snapshot_every`` entries, unless its state outweighs the log
those entries make; then once the log weighs as much, or after ``SNAP_ENTRIES_CAP`` times as
many entries. Snapshotting a large state for every few small commands would cost far more
than the log it saves."""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable

from phalanx_aio.node._snapshots import SNAP_ENTRIES_CAP
from tests.node.harness import Counter, Harness

PAD = 3_000


class Padded(Counter):
    """A counter whose snapshot weighs ``PAD`` bytes more (a large state, small commands)."""

    def snapshot(self) -> bytes:
        return super().snapshot() + bytes(PAD)

    def restore(self, data: bytes) -> None:
        self.value, self.applied = struct.unpack_from(">qq", data)


async def _snapshots_taken(command: bytes, count: int) -> list[int]:
    """The log's first index after each of ``count`` proposals of ``command`` on a one-node
    cluster with ``snapshot_every=10``: it moves when a snapshot compacts the log."""
    h = Harness(["n1"], snapshot_every=10)
    node = await h.start("n1", state_machine=Padded())
    try:
        await node.wait_for_leader(5.0)
        firsts = []
        for _ in range(count):
            await node.propose(command)
            firsts.append(node.status().first_index)
        return firsts
    finally:
        await h.aclose()


def _compactions(firsts: list[int]) -> int:
    return len({f for f in firsts if f > 1})


async def test_a_state_larger_than_the_log_waits_for_more_log() -> None:
    """7-byte commands and a 3 KB state: after the first snapshot (at 10 to 12 entries), the
    next waits for 3 KB of log (over 400 entries) but no longer than the cap, 80 to 100."""
    cap = SNAP_ENTRIES_CAP * 10
    firsts = await _snapshots_taken(b"incr  1", 12 + cap + cap // 4 + 2)
    first_snapshot = next(i for i, f in enumerate(firsts) if f > 1)
    assert first_snapshot <= 12
    after = firsts[first_snapshot]
    # Not 10 to 12 entries later, as for a small state: only at the cap.
    assert all(f == after for f in firsts[first_snapshot : first_snapshot + cap - 2])
    assert firsts[-1] > after, "no snapshot even past the entries cap"


async def test_commands_that_outweigh_the_state_keep_the_usual_cadence() -> None:
    """4 KB commands: the log outweighs the 3 KB state within one entry, so a snapshot is
    due every 10 to 12.5 entries as before."""
    firsts = await _snapshots_taken(b"incr " + b"0" * 4_000 + b"1", 60)
    assert _compactions(firsts) >= 4


class SlowBuild(Counter):
    """A counter whose snapshot is built in a worker thread that waits for ``release``."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def snapshot_later(self) -> Callable[[], bytes]:
        data = self.snapshot()

        def build() -> bytes:
            self.release.wait(10)
            return data

        return build


async def test_commands_applied_while_a_snapshot_is_built_count_for_the_next() -> None:
    """The log's weight after a compaction is that of the commands applied since the captured
    index, including those applied while the snapshot was built (they used to be forgotten,
    and a large state then waited for a cap rather than for its log)."""
    h = Harness(["n1"], snapshot_every=10)
    sm = SlowBuild()
    node = await h.start("n1", state_machine=sm)
    try:
        await node.wait_for_leader(5.0)
        for _ in range(12):  # past snapshot_every and its random quarter: a build starts
            await node.propose(b"incr 1")
        assert node._snap_building
        for _ in range(5):  # applied while the build waits
            await node.propose(b"incr 1")
        sm.release.set()
        await h.until(lambda: node.status().first_index > 1)
        log = node._require_core().log
        after = sum(len(e.data) for e in log.entries if log.snap_index < e.index <= log.applied)
        assert after > 0
        assert node.log_bytes == after
    finally:
        sm.release.set()
        await h.aclose()
