"""A RaftNode on SQLiteStorage keeps its stored log bounded: every ``snapshot_every`` applied
entries it takes a snapshot, and the rows the snapshot covers are deleted, so a restart loads
only the entries after the last snapshot."""

from __future__ import annotations

import asyncio
import sqlite3
import struct
from pathlib import Path

from phalanx_aio import Config, RaftNode, SQLiteStorage, StateMachine
from phalanx_aio.transport.memory import MemoryNetwork

EVERY = 20
ROUNDS, PER_ROUND = 15, 10  # proposals in flight together: one Ready holds several entries
COMMANDS = ROUNDS * PER_ROUND


class Counter(StateMachine):
    """Counts applied commands."""

    def __init__(self) -> None:
        self.value = 0

    def apply(self, command: bytes) -> int:
        self.value += 1
        return self.value

    def snapshot(self) -> bytes:
        return struct.pack(">q", self.value)

    def restore(self, data: bytes) -> None:
        (self.value,) = struct.unpack(">q", data)


def single_node(path: Path, sm: Counter) -> RaftNode:
    return RaftNode(
        "n1",
        address="n1",
        peers={},
        state_machine=sm,
        storage=SQLiteStorage(path),
        config=Config.lan(),
        transport=MemoryNetwork().transport("n1"),
        snapshot_every=EVERY,
        seed=1,
    )


def stored_rows(path: Path) -> tuple[int, int, int]:
    """(number of entries held in rows, lowest stored index, snapshot index) read with plain
    sqlite3. Compaction deletes whole rows: one row may still hold entries the snapshot covers."""
    conn = sqlite3.connect(path)
    try:
        count, low = conn.execute("SELECT sum(last - first + 1), min(first) FROM entry_batches").fetchone()
        (snap,) = conn.execute("SELECT idx FROM snapshot").fetchone()
    finally:
        conn.close()
    return count or 0, low or 0, snap


async def test_compaction_deletes_the_rows_a_snapshot_covers(tmp_path: Path) -> None:
    path = tmp_path / "n1.db"
    sm = Counter()
    async with single_node(path, sm) as node:
        await node.wait_for_leader(timeout=30)
        for r in range(ROUNDS):
            await asyncio.gather(*(node.propose(b"c%d" % i, timeout=30) for i in range(PER_ROUND)))
            count, low, snap = stored_rows(path)
            # Snapshots every 20 to 25 applied entries; a row that straddles the snapshot holds at
            # most one write's entries (one round's, plus a no-op).
            bound = EVERY + EVERY // 4 + 2 * (PER_ROUND + 2)
            assert count < bound, f"after round {r} the store holds {count} entries"
        status = node.status()
    count, low, snap = stored_rows(path)
    assert snap >= COMMANDS - EVERY  # snapshots kept being taken
    covered = max(0, snap + 1 - low) if count else 0  # held by a row that straddles the snapshot
    assert covered <= PER_ROUND + 1
    assert count - covered == status.last_index - snap  # every entry after the snapshot is stored
    assert sm.value == COMMANDS

    sm2 = Counter()
    async with single_node(path, sm2) as node:
        after = node.status()
        assert after.first_index == snap + 1
        assert after.last_index - after.first_index + 1 == count - covered  # only these were loaded
        await node.wait_for_leader(timeout=30)
        await node.propose(b"one more", timeout=30)
        assert sm2.value == COMMANDS + 1  # the snapshot restored the count, the tail re-applied
