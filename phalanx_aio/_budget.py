"""Bytes a gRPC service buffers for its calls, bounded per connection and in total (private).

A call holds bytes while a request message is only partly received (from its length prefix to
its last byte) and while an answer waits to be written (flow control: a client that does not
read holds it forever). :class:`BufferBudget` counts them by connection and in total. When a
count goes over its limit, the call in that scope that made no progress for the longest time
(the slowest reader or writer, usually the one at fault) is *shed*: its handler task is
cancelled and the call ends with a gRPC error status naming the limit; its bytes are released
at once. A call that holds bytes without any progress for ``stall_timeout`` seconds is shed
too. The KV service and the peer transport each keep one.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from types import TracebackType
from typing import Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError

SHED_REASONS = ("connection_bytes", "total_bytes", "stalled")
"""Why a call was shed: over the per-connection limit, over the total limit, or no progress
within the stall timeout."""


class Call:
    """One call's share of a :class:`BufferBudget` (a context manager around its handler)."""

    __slots__ = ("_budget", "_timer", "conn", "held", "reason", "since", "status", "task", "text")

    def __init__(self, budget: BufferBudget, conn: object, task: asyncio.Task[Any]) -> None:
        self._budget = budget
        self.conn = conn
        self.task = task
        self.held = 0
        self.since = 0.0
        """When this call last made progress (loop time)."""
        self._timer: asyncio.TimerHandle | None = None
        self.reason: str | None = None
        """Why the call was shed (one of :data:`SHED_REASONS`), or ``None``."""
        self.text = ""
        self.status = Status.RESOURCE_EXHAUSTED

    def take(self, n: int) -> None:
        """Hold ``n`` more bytes (may shed this call or another one)."""
        if self.reason is None and n > 0:
            self._budget._take(self, n)

    def give(self, n: int) -> None:
        """Release ``n`` bytes: progress."""
        if self.reason is None and n > 0:
            self._budget._give(self, n)

    def __enter__(self) -> Call:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._budget._close(self)
        if self.reason is not None and exc_type is not None and issubclass(exc_type, asyncio.CancelledError):
            self.task.uncancel()
            raise GRPCError(self.status, self.text) from None


class BufferBudget:
    """Buffered bytes of one service's calls: at most ``per_connection`` on one connection and
    ``total`` in all; a call holding bytes without progress for ``stall_timeout`` seconds is
    shed. ``what`` names the service in the texts of the statuses."""

    def __init__(self, *, per_connection: int, total: int, stall_timeout: float, what: str) -> None:
        self.per_connection = per_connection
        self.total = total
        self.stall_timeout = stall_timeout
        self.what = what
        self.held = 0
        """Bytes held by every call together."""
        self.by_connection: dict[object, int] = {}
        self.calls: set[Call] = set()
        """Calls holding bytes now."""
        self.shed: Counter[str] = Counter(dict.fromkeys(SHED_REASONS, 0))
        """Calls shed, by reason."""

    def call(self, stream: Any) -> Call:
        """The share of the call served by the current task on the grpclib server ``stream``."""
        task = asyncio.current_task()
        assert task is not None
        raw = getattr(stream, "_stream", None)
        conn = getattr(raw, "connection", None) or stream
        return Call(self, conn, task)

    def _take(self, call: Call, n: int) -> None:
        if not call.held:
            self.calls.add(call)
            self._progress(call)
        call.held += n
        self.held += n
        conn = call.conn
        on_conn = self.by_connection[conn] = self.by_connection.get(conn, 0) + n
        if on_conn > self.per_connection:
            self._shed_slowest(
                [c for c in self.calls if c.conn is conn],
                "connection_bytes",
                f"this connection's calls hold {on_conn} bytes, over the {self.what}'s per-connection "
                f"limit of {self.per_connection}",
            )
        if self.held > self.total:
            self._shed_slowest(
                list(self.calls),
                "total_bytes",
                f"calls hold {self.held} bytes, over the {self.what}'s total limit of {self.total}",
            )

    def _give(self, call: Call, n: int) -> None:
        n = min(n, call.held)
        call.held -= n
        self.held -= n
        conn = call.conn
        left = self.by_connection.get(conn, 0) - n
        if left > 0:
            self.by_connection[conn] = left
        else:
            self.by_connection.pop(conn, None)
        if call.held:
            self._progress(call)
        else:
            self._stop(call)

    def _progress(self, call: Call) -> None:
        loop = asyncio.get_running_loop()
        call.since = loop.time()
        if call._timer is not None:
            call._timer.cancel()
        call._timer = loop.call_later(self.stall_timeout, self._stalled, call)

    def _stop(self, call: Call) -> None:
        self.calls.discard(call)
        if call._timer is not None:
            call._timer.cancel()
            call._timer = None

    def _stalled(self, call: Call) -> None:
        call._timer = None
        self._shed(
            call,
            "stalled",
            f"the call held {call.held} bytes without progress for {self.stall_timeout} s "
            f"(the {self.what}'s stall timeout)",
        )

    def _shed_slowest(self, calls: list[Call], reason: str, text: str) -> None:
        if calls:
            self._shed(min(calls, key=lambda c: c.since), reason, text)

    def _shed(self, call: Call, reason: str, text: str) -> None:
        if call.reason is not None:
            return
        self.shed[reason] += 1
        call.reason = reason
        call.text = text
        self._give(call, call.held)
        call.task.cancel()

    def _close(self, call: Call) -> None:
        if call.held:
            self._give(call, call.held)
        self._stop(call)
