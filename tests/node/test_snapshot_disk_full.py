"""A snapshot the store refuses (a full disk, a state too big) never stops the node."""

from __future__ import annotations

from phalanx_aio.core.types import Snapshot
from phalanx_aio.errors import StorageError
from phalanx_aio.storage import MemoryStorage
from tests.node.harness import DEADLINE, Harness


class SnapshotRefusingStorage(MemoryStorage):
    """Entries are written; local snapshots fail while ``refuse`` is ``"full"`` (as a full
    disk: the store is unhealthy until a write succeeds) or ``"too big"`` (as SQLite's blob
    limit: a write error that says nothing about the disk)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.refuse: str | None = None
        self.refused = 0

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        if self.refuse == "full":
            self.refused += 1
            self._last_error = StorageError(f"{self.location}: disk full (simulated); nothing was written")
            raise self._last_error
        if self.refuse == "too big":
            self.refused += 1
            raise StorageError(f"{self.location}: saving a snapshot failed: a value is too big (simulated)")
        await super().save_snapshot(snapshot)


async def _cluster_with(refuse: str) -> tuple[Harness, SnapshotRefusingStorage, str]:
    h = Harness(["n1", "n2", "n3"], snapshot_every=8)
    store = SnapshotRefusingStorage("n3")
    store.refuse = refuse
    h.stores["n3"] = store
    for nid in h.ids:
        await h.start(nid)
    return h, store, "n3"


async def test_a_full_disk_skips_the_snapshot_and_it_is_stored_once_there_is_space() -> None:
    h, store, nid = await _cluster_with("full")
    try:
        leader = await h.leader()
        for _ in range(40):
            await leader.propose(b"incr 1", timeout=DEADLINE)
        await h.until(lambda: store.refused > 0 and h.sms[nid].value == 40)
        node = h.nodes[nid]
        assert node.status().applied >= 40 and node._failure is None  # still running
        assert store._snapshot.meta.index == 0  # nothing stored, every entry kept
        store.refuse = None  # space again
        await h.until(lambda: store._snapshot.meta.index > 0)
        await leader.propose(b"incr 1", timeout=DEADLINE)
        await h.until(lambda: h.sms[nid].value == 41 and node.healthy)
    finally:
        await h.aclose()


async def test_a_snapshot_too_big_for_the_store_is_skipped_and_the_next_one_tried() -> None:
    h, store, nid = await _cluster_with("too big")
    try:
        leader = await h.leader()
        for _ in range(20):
            await leader.propose(b"incr 1", timeout=DEADLINE)
        await h.until(lambda: store.refused > 0 and h.sms[nid].value == 20)
        assert h.nodes[nid]._failure is None and h.nodes[nid].healthy
        store.refuse = None
        for _ in range(20):
            await leader.propose(b"incr 1", timeout=DEADLINE)
        await h.until(lambda: store._snapshot.meta.index > 0)  # the next one, when due
    finally:
        await h.aclose()
