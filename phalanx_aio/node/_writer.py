"""The background writer of :class:`~phalanx_aio.RaftNode` (private): a leader's own entries are
written in a task of their own (one fsync for everything queued meanwhile) while the loop goes
on; the loop learns of each write through a :class:`~phalanx_aio.node._items.Persisted` item.

A mixin, like :mod:`phalanx_aio.node._proposals`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from operator import attrgetter
from typing import Final

from phalanx_aio.core.types import Entry, HardState, Snapshot
from phalanx_aio.errors import StorageError
from phalanx_aio.node._items import Persisted, WriteFailed
from phalanx_aio.node._proposals import TURN_MAX_PROPOSALS
from phalanx_aio.node._state import NodeState

__all__ = ["WRITE_BEHIND_MAX_BYTES", "WRITE_BEHIND_MAX_ENTRIES", "BackgroundWriter"]

# A leader writes its own entries in the background while its loop goes on (RaftNode._write_behind).
# Entries handed over while a write is in flight wait for the next one (one fsync for all of
# them); past this many, the loop waits for the disk instead of taking more proposals.
WRITE_BEHIND_MAX_ENTRIES: Final = 4 * TURN_MAX_PROPOSALS
WRITE_BEHIND_MAX_BYTES: Final = 64 << 20  # the same bound, for large commands


_data_of = attrgetter("data")


class BackgroundWriter(NodeState):
    """Writing entries, hard state and local snapshots without blocking the loop."""

    def _init_writer(self) -> None:
        """The writer's state, idle (called by ``RaftNode.__init__``)."""
        # The term and vote storage holds, and a newer hard state that only moved the commit
        # index, not saved on its own (the commit index need not be durable).
        self._saved_tv: tuple[int, str | None] = (0, None)
        self._unsaved_hs: HardState | None = None
        # The leader's own entries handed to the background writer and not yet written (with
        # the hard state to write along), and the writer task while it runs.
        self._behind: list[Entry] = []
        self._behind_bytes = 0  # their command bytes (the wait for the disk is bounded in both)
        self._behind_hs: HardState | None = None
        self._behind_snap: Snapshot | None = None  # a local snapshot to store, then compact
        self._writer: asyncio.Task[None] | None = None

    def _write_behind(self, entries: Sequence[Entry], hard_state: HardState | None) -> None:
        """Queue the leader's own ``entries`` (and ``hard_state``) for the background writer."""
        self._behind.extend(entries)
        self._behind_bytes += sum(map(len, map(_data_of, entries)))
        if hard_state is not None:
            self._behind_hs = hard_state
        self._start_writer()

    def _start_writer(self) -> None:
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(
                self._run_writer(), name=f"phalanx-writer-{self.id}"
            )

    async def _run_writer(self) -> None:
        """Write what :meth:`_write_behind` queued, all of it per write (one fsync), until
        nothing is left; report each write to the loop. A write that fails for good stops
        the node (through the loop, which owns the core)."""
        try:
            while self._behind or self._behind_snap is not None:
                snap, self._behind_snap = self._behind_snap, None
                if snap is not None:
                    # Entries up to the snapshot are durable already (the loop took it only
                    # then); newer ones may be stored before or after it.
                    await self._save_local_snapshot(snap)
                if not self._behind:
                    continue
                entries, hs = self._behind, self._behind_hs
                self._behind, self._behind_hs, self._behind_bytes = [], None, 0
                await self._persist(entries, hs, None)
                last = entries[-1]
                self._queue.put_nowait(Persisted(last.index, last.term))
        except Exception as exc:
            self._behind.clear()
            self._behind_bytes = 0
            self._queue.put_nowait(WriteFailed(exc))
        finally:
            self._writer = None

    async def _drain_writes(self) -> None:
        """Wait until the background writer has written everything queued."""
        while self._writer is not None:
            await asyncio.shield(self._writer)

    async def _persist(
        self, entries: Sequence[Entry], hard_state: HardState | None, snapshot: Snapshot | None
    ) -> None:
        delay = 0.05
        observer = self._latency
        while True:
            started = time.perf_counter() if observer is not None else 0.0
            try:
                await self._storage.save(hard_state=hard_state, entries=entries, snapshot=snapshot)
            except StorageError as exc:
                if self._storage.healthy or self._storage.failed or self._closed:
                    raise  # not a full disk: the store refuses writes for good
                if self._healthy:
                    self.log.error(
                        "storage refuses writes (%s); this node's copy counts for nothing until it recovers",
                        exc,
                    )
                self._healthy = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            if observer is not None:
                self._report_latency(observer, "storage_save", started)
            if not self._healthy:
                self.log.warning("storage writes succeed again")
            self._healthy = True
            return
