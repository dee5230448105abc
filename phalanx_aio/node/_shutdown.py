"""Closing a :class:`~phalanx_aio.RaftNode` (private): leadership handed over first when another
voter is up to date, then the loop stopped after its last write, the transport and storage
closed, and every waiting caller told.

A mixin, like :mod:`phalanx_aio.node._proposals`; ``RaftNode.aclose`` calls it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from phalanx_aio.core.raft import Raft
from phalanx_aio.errors import ClosedError, PhalanxError
from phalanx_aio.node._items import STOP
from phalanx_aio.node._steps import LoopSteps

__all__ = ["Shutdown"]


class Shutdown(LoopSteps):
    """Handing over and closing."""

    _loop_task: asyncio.Task[None] | None
    _ticker_task: asyncio.Task[None] | None

    if TYPE_CHECKING:  # defined by RaftNode

        @property
        def running(self) -> bool: ...

        @property
        def is_leader(self) -> bool: ...

        async def transfer_leadership(
            self, target: str | None = None, *, timeout: float | None = None
        ) -> str: ...

        def _require_core(self) -> Raft: ...

    async def _hand_over(self) -> None:
        """Transfer leadership before closing, if this node leads and another voter exists."""
        if not (self.running and self.is_leader):
            return
        core = self._require_core()
        live = [
            (pr.match, nid)
            for nid, pr in core.status().progress.items()
            if nid != self.id and nid in core.conf.voters and pr.recent_active
        ]
        if not live:
            return  # no other voter heard from lately: nobody to hand over to
        limit = self.config.election_seconds()[1]
        try:
            new = await self.transfer_leadership(max(live)[1], timeout=limit)
        except PhalanxError as exc:
            self.log.info("closing without handing leadership over: %s", exc)
        else:
            self.log.info("handed leadership over to %s before closing", new)

    async def _close(self) -> None:
        self._closed = True
        if self._snap_task is not None:
            self._snap_task.cancel()  # its thread finishes on its own; its result is dropped
        await self._subscriptions.aclose()  # leader work cancelled (and awaited), event streams end
        tasks = [t for t in (self._ticker_task, self._loop_task) if t is not None]
        if self._loop_task is not None:
            self._queue.put_nowait(STOP)
        try:
            if self._ticker_task is not None:
                self._ticker_task.cancel()
            if self._loop_task is not None:
                # Let an in-flight save finish (never abandon a write half-way), then stop.
                await asyncio.shield(asyncio.wait({self._loop_task}, timeout=30))
                self._loop_task.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            if self._writer is not None:  # only if the loop was cancelled mid-turn
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(asyncio.shield(self._writer), 30)
        finally:
            self._fail_all(ClosedError(f"node {self.id} is closed"))
            if self._transport is not None:
                await self._transport.aclose()
            await self._storage.aclose()
            self.log.info("closed")
