"""Deadlines shared by many futures: one timer per grain of time (private).

``asyncio.wait_for`` or ``asyncio.timeout`` per operation costs a timer handle and a wrapper
each (``docs/performance.md`` has the measurement); here every future whose deadline
falls in the same grain shares one ``call_at``. A future still pending when its grain ends
fails with the exception ``expired(what, limit)`` builds: at most one grain late, never early.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any, Final

GRAIN: Final = 0.005
"""Deadlines are rounded up to this many seconds."""

Waiters = dict["asyncio.Future[Any]", tuple[str, float]]


class Deadlines:
    """The deadlines of one owner's futures (a node's operations, a client's requests)."""

    __slots__ = ("_expired", "_slots")

    def __init__(self, expired: Callable[[str, float], BaseException]) -> None:
        self._expired = expired
        self._slots: dict[int, Waiters] = {}

    def add(
        self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any], limit: float, what: str
    ) -> Waiters:
        """Fail ``fut`` with ``expired(what, limit)`` if still pending ``limit`` seconds from
        now. Returns the grain's table: the caller removes ``fut`` from it once it has its
        outcome (``waiters.pop(fut, None)``), so nothing outlives the operation."""
        slot = math.ceil((loop.time() + limit) / GRAIN)
        waiters = self._slots.get(slot)
        if waiters is None:
            waiters = self._slots[slot] = {}
            loop.call_at(slot * GRAIN, self._expire, slot)
        waiters[fut] = (what, limit)
        return waiters

    def _expire(self, slot: int) -> None:
        for fut, (what, limit) in self._slots.pop(slot, {}).items():
            if not fut.done():
                fut.set_exception(self._expired(what, limit))
