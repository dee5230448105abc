"""The reads a node serves, asked of the core in groups.

Every read asked before the loop's next turn joins one group, and the group asks the core
once (one context, one read index, one heartbeat round or one message to the leader): 2,000
concurrent reads cost a few core calls, not 2,000, so writes keep flowing under a read flood.
A read joins a group only before the group is asked, so the read index the group gets is
chosen after every one of its reads began: each is linearizable. Once the node has applied
that index, the group's functions run in the order the reads were asked.

At most ``limit`` reads wait at once; past that a read is refused at once with
:class:`~phalanx_aio.errors.ProposalDropped`. Everything here runs in the node's loop task.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any

from phalanx_aio.errors import ProposalDropped
from phalanx_aio.node._envelope import pack_request

__all__ = ["Reads"]

_Read = tuple[Callable[[Any], Any], "asyncio.Future[Any]"]


class Reads:
    """The reads of one node: groups by context, those confirmed, and the open group."""

    __slots__ = ("_confirmed", "_groups", "_ids", "_limit", "_nonce", "_open", "_seq", "waiting")

    def __init__(self, nonce: bytes, limit: int) -> None:
        self._nonce = nonce
        self._limit = limit
        self._ids = itertools.count()
        self._seq = itertools.count()
        self._groups: dict[bytes, list[_Read]] = {}
        self._open: bytes | None = None  # the group new reads join, until the loop asks it
        self._confirmed: list[tuple[int, int, bytes]] = []  # (read index, seq, context) heap
        self.waiting = 0
        """Reads whose caller still waits."""

    def __len__(self) -> int:
        return len(self._groups)

    def add(self, fn: Callable[[Any], Any], fut: asyncio.Future[Any], name: str) -> bytes | None:
        """Register a read; the context of a new group the loop must ask, or None if the read
        joined one already on its way. Raises :class:`ProposalDropped` past the limit."""
        if self.waiting >= self._limit:
            raise ProposalDropped(f"{name}: overloaded ({self.waiting} reads pending)")
        self.waiting += 1
        fut.add_done_callback(self._done)
        ctx = self._open
        if ctx is not None:
            self._groups[ctx].append((fn, fut))
            return None
        ctx = self._open = self._nonce + pack_request(next(self._ids))
        self._groups[ctx] = [(fn, fut)]
        return ctx

    def _done(self, _fut: asyncio.Future[Any]) -> None:
        self.waiting -= 1

    def take(self, ctx: bytes) -> bool:
        """The loop asks the core for group ``ctx`` now: no read joins it any more. True if
        some read of it still waits (else the group is forgotten)."""
        if self._open == ctx:
            self._open = None
        group = self._groups.get(ctx)
        if group is not None and any(not f.done() for _, f in group):
            return True
        self._groups.pop(ctx, None)
        return False

    def confirmed(self, index: int, ctx: bytes) -> None:
        """The core says group ``ctx`` may be served once ``index`` is applied."""
        heapq.heappush(self._confirmed, (index, next(self._seq), ctx))

    def serve(self, applied: int, state_machine: Any) -> None:
        """Run the functions of every group confirmed at or below ``applied``."""
        heap = self._confirmed
        while heap and heap[0][0] <= applied:
            ctx = heapq.heappop(heap)[2]
            for fn, fut in self._groups.pop(ctx, ()):
                if fut.done():
                    continue
                try:
                    value = fn(state_machine)
                except Exception as exc:
                    fut.set_exception(exc)
                else:
                    fut.set_result(value)

    def fail(self, ctx: bytes, exc: BaseException) -> None:
        """Fail every read of group ``ctx``."""
        if self._open == ctx:
            self._open = None
        for _, fut in self._groups.pop(ctx, ()):
            if not fut.done():
                fut.set_exception(exc)

    def unconfirmed(self) -> list[bytes]:
        """The groups asked of the core and not yet confirmed (to ask a new leader again)."""
        confirmed = {ctx for _, _, ctx in self._confirmed}
        return [c for c in self._groups if c not in confirmed and c != self._open]

    def sweep(self) -> None:
        """Forget the groups none of whose callers still wait (timed out or cancelled)."""
        for ctx in [c for c, g in self._groups.items() if c != self._open and all(f.done() for _, f in g)]:
            del self._groups[ctx]

    def fail_all(self, exc: BaseException) -> None:
        """Fail every read (the node stops)."""
        for ctx in list(self._groups):
            self.fail(ctx, exc)
        self._confirmed.clear()
