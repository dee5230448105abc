"""Local snapshots of :class:`~phalanx_aio.RaftNode` (private): when one is due, building it (on
the loop or in a worker thread), compacting the log, storing it (again later after a full
disk), and restoring the state machine from one.

A mixin, like :mod:`phalanx_aio.node._proposals`.
"""

from __future__ import annotations

import asyncio
import random
from typing import Final

from phalanx_aio.core.raft import Raft
from phalanx_aio.core.types import Entry, Snapshot
from phalanx_aio.errors import ProtocolError, StorageError
from phalanx_aio.node._items import SnapshotBuilt
from phalanx_aio.node._state import NodeState
from phalanx_aio.node.events import SnapshotTaken

__all__ = ["FREE_STEP", "SNAP_ENTRIES_CAP", "SNAP_RETRY_MAX", "SNAP_RETRY_MIN", "LocalSnapshots"]

FREE_STEP: Final = 32_768  # compacted entries freed per loop turn (see _free_compacted)

SNAP_ENTRIES_CAP: Final = 8
"""A state larger than the log since its last snapshot waits for more log, but never past this
many times ``snapshot_every`` entries (see ``LocalSnapshots._entries_due``)."""

# A local snapshot that a full disk refused is written again after this delay, doubled after
# each failure up to the maximum (seconds); meanwhile the store keeps the entries it covers.
SNAP_RETRY_MIN: Final = 0.5
SNAP_RETRY_MAX: Final = 30.0


class LocalSnapshots(NodeState):
    """Taking, storing and restoring snapshots."""

    def _init_snapshots(self, snapshot_every: int, snapshot_bytes: int, base_seed: int) -> None:
        """When snapshots fall due, and none in progress (called by ``RaftNode.__init__``)."""
        self._snapshot_every = snapshot_every
        # Bytes of commands applied since the last snapshot; one is due past the larger of
        # snapshot_bytes and the last snapshot's size (so large values cannot grow the log for
        # long, and snapshot work stays in proportion to the log it saves).
        self._snapshot_bytes = snapshot_bytes
        self._log_bytes = 0
        self._log_bytes_due = snapshot_bytes
        self._last_snap_size = 0  # bytes of the last snapshot taken or received
        self._snap_bytes_taken = 0  # _log_bytes when the snapshot being built was captured
        # Snapshot timing has its own generator, so it does not shift the core's draws.
        self._snap_rng = random.Random(base_seed ^ 0x5EED)
        self._snapshot_due = self._next_snapshot_due()
        self._log_bytes_due = self._next_bytes_due(0)
        # A local snapshot the store could not take for lack of space, to try again at that
        # loop time (the store still holds every entry it covers), and the next delay.
        self._snap_retry: Snapshot | None = None
        self._snap_retry_at = 0.0
        self._snap_retry_delay = SNAP_RETRY_MIN
        # A snapshot being encoded in a worker thread (StateMachine.snapshot_later).
        self._snap_building = False
        self._snap_task: asyncio.Task[None] | None = None
        # Lists of entries a compaction dropped, freed a step per loop turn: freeing a
        # million entries in one go would stall the loop.
        self._compacted: list[list[Entry]] = []

    async def _save_local_snapshot(self, snap: Snapshot) -> None:
        """Store a snapshot this node took. A full disk, or a state too big for the store,
        skips it rather than stopping the node: nothing was written, the store keeps every
        entry the snapshot covers (a restart replays them), and only the log stays longer.
        After a full disk the same snapshot is tried again later (unless a newer one is taken
        first); a snapshot too big is not, the next one is taken when due. Any other storage
        failure stops the node, as every failed write does."""
        try:
            await self._storage.save_snapshot(snap)
        except StorageError as exc:
            if self._storage.failed or self._closed:
                raise
            full = not self._storage.healthy
            delay = self._snap_retry_delay
            self.log.error(
                "could not store the snapshot at index %d (%d bytes): %s; the log is not compacted%s",
                snap.meta.index,
                len(snap.data),
                exc,
                f", trying again in {delay:g} s" if full else "",
            )
            if full:
                self._healthy = False
                if self._behind_snap is None:  # else a newer snapshot supersedes it
                    self._snap_retry = snap
                    self._snap_retry_at = asyncio.get_running_loop().time() + delay
                    self._snap_retry_delay = min(delay * 2, SNAP_RETRY_MAX)
            return
        if self._snap_retry_delay > SNAP_RETRY_MIN:
            self.log.warning("stored the snapshot at index %d; the log is compacted again", snap.meta.index)
        self._snap_retry_delay = SNAP_RETRY_MIN
        if self._storage.healthy:
            self._healthy = True
        if self._listeners:
            term = self._core.term if self._core is not None else snap.meta.term
            self._emit(SnapshotTaken(self.id, term, snap.meta.index, len(snap.data)))

    def _retry_snapshot(self) -> None:
        """Hand a snapshot a full disk refused to the writer again, once its delay passed."""
        snap = self._snap_retry
        if snap is None or asyncio.get_running_loop().time() < self._snap_retry_at:
            return
        self._snap_retry = None
        if self._behind_snap is None:
            self._behind_snap = snap
            self._start_writer()

    def _take_snapshot(self, core: Raft) -> None:
        """Snapshot the state machine at the applied index and compact the log up to it: at
        once with ``snapshot()``, or, if the state machine offers ``snapshot_later()``, from a
        copy encoded in a worker thread while the loop goes on (one build at a time)."""
        if self._snap_building:
            return
        # The bytes applied up to the captured index: the compaction takes them off the count,
        # and what is applied while a snapshot is built stays counted for the next one.
        self._snap_bytes_taken = self._log_bytes
        snapshot_later = getattr(self._sm, "snapshot_later", None)
        later = snapshot_later() if snapshot_later is not None else None
        if later is None:
            self._compact(core, core.log.applied, self._sm.snapshot())
            return
        # A copy is taken now; it is encoded in a worker thread, and the log compacted up to
        # this index once the loop gets the bytes (_SNAP_BUILT).
        self._snap_building = True
        index = core.log.applied

        async def build() -> None:
            try:
                result: bytes | BaseException = await asyncio.to_thread(later)
            except Exception as exc:
                result = exc
            self._queue.put_nowait(SnapshotBuilt(index, result))

        self._snap_task = asyncio.get_running_loop().create_task(build(), name=f"phalanx-snapshot-{self.id}")

    def _snapshot_built(self, core: Raft, index: int, result: bytes | BaseException) -> None:
        self._snap_building = False
        self._snap_task = None
        if isinstance(result, BaseException):
            self.log.error("the state machine could not build its snapshot at index %d: %r", index, result)
            self._snapshot_due = self._next_snapshot_due()  # try again later, not at once
            self._log_bytes = 0
            return
        if index > core.log.snap_index:  # else a snapshot from the leader superseded it
            self._compact(core, index, result)

    def _compact(self, core: Raft, index: int, data: bytes) -> None:
        """Compact the core's log up to ``index`` with the snapshot ``data``; the writer task
        stores the snapshot and deletes the entries it covers, so the loop does not wait (a
        large delete is slow; see the performance page). The next one is due after another
        ``snapshot_every`` entries plus a random quarter of that, so that members do not all
        compact at the same moment."""
        self._behind_snap = snap = core.compact(index, data, release=self._compacted.append)
        self._log_bytes = max(0, self._log_bytes - self._snap_bytes_taken)
        self._snap_bytes_taken = 0
        self._last_snap_size = len(snap.data)
        self._log_bytes_due = self._next_bytes_due(len(snap.data))
        self._snap_retry = None  # a snapshot a full disk refused is superseded
        self._snapshot_due = self._next_snapshot_due()
        self._start_writer()

    def _free_compacted(self) -> None:
        """Free up to :data:`FREE_STEP` of the entries compactions dropped (from the end of
        each list, so that the lists are never copied)."""
        lists = self._compacted
        old = lists[-1]
        del old[-FREE_STEP:]
        if not old:
            lists.pop()

    def _next_bytes_due(self, last_size: int) -> int:
        """Bytes of log before the next snapshot: the larger of ``snapshot_bytes`` and the
        last snapshot's size, plus a random quarter (so members do not all compact at once)."""
        base = max(self._snapshot_bytes, last_size)
        return base + self._snap_rng.randrange(base // 4 + 1)

    def _entries_due(self, entries: int) -> bool:
        """Whether ``entries`` applied since the last snapshot make the next one due: past
        ``snapshot_every`` (plus its random quarter), once the commands applied since then
        weigh as much as the last snapshot did, or past :data:`SNAP_ENTRIES_CAP` times that
        many entries. A snapshot's work grows with the state, the log it saves with the
        commands: a large state under small commands is snapshotted less often, so that
        snapshotting costs about as much as writing the log it compacts, not more."""
        due = self._snapshot_due
        return entries >= due and (
            self._log_bytes >= self._last_snap_size or entries >= SNAP_ENTRIES_CAP * due
        )

    def _next_snapshot_due(self) -> int:
        """Applied entries between two snapshots: ``snapshot_every`` plus a random quarter."""
        return self._snapshot_every + self._snap_rng.randrange(self._snapshot_every // 4 + 1)

    async def _restore_state(self, data: bytes) -> None:
        """Restore the state machine from snapshot ``data``: decoded in a worker thread if it
        offers ``restore_later`` (the loop goes on; this node's Raft work waits), else on the
        loop."""
        restore_later = getattr(self._sm, "restore_later", None)
        decode = restore_later(data) if restore_later is not None else None
        if decode is None:
            self._sm.restore(data)
        else:
            install = await asyncio.to_thread(decode)
            install()

    async def _restore(self, snap: Snapshot) -> None:
        try:
            await self._restore_state(snap.data)
        except Exception as exc:
            raise ProtocolError(
                f"{self.id}: the state machine cannot restore the snapshot at index {snap.meta.index} "
                f"(term {snap.meta.term}) sent by {self._core.leader if self._core else None}: {exc!r}; "
                "the node stops without saving it"
            ) from exc
