"""Leader-only work and event streams, built on a node's event listeners.

:meth:`RaftNode.while_leader <phalanx_aio.node.RaftNode.while_leader>` returns a
:class:`LeaderWork` and :meth:`RaftNode.events <phalanx_aio.node.RaftNode.events>` an
:class:`EventStream`. Both are event listeners of the node (nothing in the node's loop knows
about them): the node calls them synchronously from its loop task, so a :class:`LeaderWork`
cancels its run in the very turn the node stops leading. The node tells both when it closes
(or its loop fails) through :class:`Subscriptions`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Protocol

from phalanx_aio.errors import ConfigError
from phalanx_aio.node.events import EventListener, NodeEvent

__all__ = ["EventStream", "LeaderWork", "Subscriptions"]

log = logging.getLogger("phalanx_aio.node")

LeaderFn = Callable[[int], Awaitable[None]]
"""What :meth:`RaftNode.while_leader` runs: a coroutine function taking the term."""

_CLOSE_TIMEOUT = 10.0
"""Seconds a closing node waits for its cancelled leader work before it goes on without it."""


class _Node(Protocol):
    """What a subscription needs of its node."""

    @property
    def id(self) -> str: ...  # pragma: no cover - protocol

    def add_listener(self, listener: EventListener) -> None: ...  # pragma: no cover - protocol

    def remove_listener(self, listener: EventListener) -> None: ...  # pragma: no cover - protocol

    def _leader_term(self) -> int | None: ...  # pragma: no cover - protocol


class _Subscription(Protocol):
    def _node_closed(self) -> None: ...  # pragma: no cover - protocol

    def _tasks(self) -> set[asyncio.Task[None]]: ...  # pragma: no cover - protocol


class Subscriptions:
    """A node's live :class:`LeaderWork` and :class:`EventStream` objects, told when it closes."""

    def __init__(self) -> None:
        self._members: set[_Subscription] = set()
        self.closed = False
        """True once the node has closed (or its loop failed): nothing new may subscribe."""

    def add(self, member: _Subscription) -> None:
        """Track ``member`` until it stops."""
        self._members.add(member)

    def discard(self, member: _Subscription) -> None:
        """Stop tracking ``member``."""
        self._members.discard(member)

    def end(self) -> None:
        """The node is closing or has failed: cancel all leader work, end all event streams."""
        self.closed = True
        for member in list(self._members):
            member._node_closed()

    async def aclose(self) -> None:
        """:meth:`end`, then wait (at most ten seconds) until the leader work has finished.
        Leader work that closes the node itself is neither cancelled nor waited for."""
        self.end()
        tasks: set[asyncio.Task[None]] = set()
        for member in self._members:
            tasks |= member._tasks()
        self._members.clear()
        tasks.discard(asyncio.current_task())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=_CLOSE_TIMEOUT)
        if pending:
            log.error(
                "leader work still running %s s after it was cancelled, left behind: %s",
                _CLOSE_TIMEOUT,
                ", ".join(sorted(t.get_name() for t in pending)),
            )


class LeaderWork:
    """Runs ``fn(term)`` while the node leads; made by :meth:`RaftNode.while_leader`.

    When the node becomes the leader of a term, ``fn(term)`` starts in a task of its own; when
    it stops leading (it steps down, hands leadership over, learns of a higher term) or the node
    closes, that task is cancelled at once, from the node's loop, in the same turn. When the
    node leads again, in a later term, ``fn`` starts again with that term. On one node at most
    one run is in progress: a new term's run starts only once the previous one has finished.

    If ``fn`` returns, its work for that term is done: it is not started again before the next
    term. If it raises, the error is logged, counted in :attr:`failures`, kept in
    :attr:`last_error`, and ``fn`` is started again with the same term after ``restart_delay``
    seconds (doubling after each failure in a row, up to ``max_restart_delay``), as long as the
    node leads that term.

    The term is a fencing token: a leader's term is unique to it, and a deposed leader may run
    on for a while before it learns of its successor (an isolated leader steps down only after
    an election timeout), so two nodes can briefly both run ``fn``. Give the term to whatever
    the work acts on and have it refuse terms lower than the highest it has seen.

    Stop it with :meth:`stop` (or by leaving ``async with``); it stops by itself when the
    node closes.
    """

    def __init__(
        self,
        node: _Node,
        subscriptions: Subscriptions,
        fn: LeaderFn,
        *,
        name: str | None,
        restart_delay: float,
        max_restart_delay: float,
    ) -> None:
        if not callable(fn):
            raise ConfigError(f"while_leader needs a coroutine function, not {type(fn).__name__}")
        for what, value in (("restart_delay", restart_delay), ("max_restart_delay", max_restart_delay)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigError(f"{what} must be a positive number of seconds, not {value!r}")
        if max_restart_delay < restart_delay:
            raise ConfigError("max_restart_delay must be at least restart_delay")
        self.name: str = name or getattr(fn, "__qualname__", None) or repr(fn)
        """The name of the work, in its tasks' names and in the log."""
        self.runs = 0
        """How many times ``fn`` was started (restarts after a failure included)."""
        self.failures = 0
        """How many runs of ``fn`` raised."""
        self.last_error: BaseException | None = None
        """What the last failed run raised (``None`` if none failed)."""
        self._node = node
        self._subscriptions = subscriptions
        self._fn = fn
        self._delays = (float(restart_delay), float(max_restart_delay))
        self._term: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._finishing: set[asyncio.Task[None]] = set()
        self._stopped = False
        subscriptions.add(self)
        node.add_listener(self._on_event)
        self._sync()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else f"running for term {self._term}" if self.running else "idle"
        return f"<LeaderWork {self.name!r} of {self._node.id!r} {state}>"

    @property
    def term(self) -> int | None:
        """The term this node leads and the work runs for, or ``None`` while it does not lead."""
        return self._term

    @property
    def running(self) -> bool:
        """True while a run of ``fn`` (or the pause before a restart) is in progress."""
        return self._task is not None and not self._task.done()

    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` was called or the node closed: ``fn`` never starts again."""
        return self._stopped

    async def stop(self) -> None:
        """Stop for good: cancel the current run and wait until it has finished. Idempotent."""
        self._halt()
        tasks = self._tasks()
        if tasks:
            await asyncio.wait(tasks)

    async def __aenter__(self) -> LeaderWork:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------ internals

    def _halt(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._subscriptions.discard(self)
        with contextlib.suppress(Exception):  # already removed if the node closed meanwhile
            self._node.remove_listener(self._on_event)
        self._switch(None)

    def _node_closed(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._task is not None and self._task is asyncio.current_task():
            self._task = self._term = None  # the run closes the node: it goes on, uncancelled
        self._switch(None)

    def _tasks(self) -> set[asyncio.Task[None]]:
        tasks = set(self._finishing)
        if self._task is not None and not self._task.done():
            tasks.add(self._task)
        return tasks

    def _on_event(self, event: NodeEvent) -> None:
        if not self._stopped:
            self._sync()

    def _sync(self) -> None:
        """Match the run to the node's state: the term it leads, or none."""
        term = self._node._leader_term()
        if term != self._term:
            self._switch(term)

    def _switch(self, term: int | None) -> None:
        previous = self._task
        if previous is not None and not previous.done():
            previous.cancel()
            self._finishing.add(previous)
            previous.add_done_callback(self._finishing.discard)
        else:
            previous = None
        self._term = term
        self._task = None
        if term is not None:
            self._task = asyncio.get_running_loop().create_task(
                self._supervise(term, previous), name=f"phalanx-leader-{self._node.id}-{self.name}-{term}"
            )

    async def _supervise(self, term: int, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:  # at most one run at a time: let the last one finish first
            await asyncio.wait({previous})
        delay, max_delay = self._delays
        while True:
            self.runs += 1
            try:
                await self._fn(term)
                return
            except Exception as exc:
                self.failures += 1
                self.last_error = exc
                log.exception(
                    "%s: leader work %s failed in term %d; starting it again in %.3g s",
                    self._node.id,
                    self.name,
                    term,
                    delay,
                )
            await asyncio.sleep(delay)
            delay = min(max_delay, delay * 2)


class EventStream:
    """The node's events as an async iterator; made by :meth:`RaftNode.events`.

    Events are queued from the moment the stream is made, in the order the node reports them.
    At most ``max_queue`` wait; when a slow consumer lets the queue fill, the **oldest** event
    is dropped and counted in :attr:`dropped` (a listener added with
    :meth:`RaftNode.add_listener` sees every event). Iteration ends when the node closes, after
    the events queued before. :meth:`aclose` (or leaving ``async with``) unsubscribes and ends
    it at once. Meant for one consumer.
    """

    def __init__(self, node: _Node, subscriptions: Subscriptions, *, max_queue: int) -> None:
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
            raise ConfigError(f"max_queue must be a positive int, not {max_queue!r}")
        self.dropped = 0
        """Events dropped, oldest first, because the queue was full."""
        self.max_queue = max_queue
        """The most events that wait for the consumer."""
        self._node = node
        self._subscriptions = subscriptions
        self._queue: deque[NodeEvent] = deque()
        self._wake = asyncio.Event()
        self._ended = False
        self._subscribed = True
        subscriptions.add(self)
        node.add_listener(self._push)

    def __repr__(self) -> str:
        state = "ended" if self._ended else f"{len(self._queue)} queued"
        return f"<EventStream of {self._node.id!r}: {state}, {self.dropped} dropped>"

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> NodeEvent:
        while not self._queue:
            if self._ended:
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()
        return self._queue.popleft()

    async def aclose(self) -> None:
        """Unsubscribe and end the iteration (events still queued are discarded). Idempotent."""
        self._unsubscribe()
        self._queue.clear()
        self._end()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ internals

    def _push(self, event: NodeEvent) -> None:
        if self._ended:
            return
        queue = self._queue
        if len(queue) >= self.max_queue:
            queue.popleft()
            self.dropped += 1
        queue.append(event)
        self._wake.set()

    def _end(self) -> None:
        self._ended = True
        self._wake.set()

    def _unsubscribe(self) -> None:
        if self._subscribed:
            self._subscribed = False
            self._subscriptions.discard(self)
            with contextlib.suppress(Exception):
                self._node.remove_listener(self._push)

    def _node_closed(self) -> None:
        self._unsubscribe()
        self._end()

    def _tasks(self) -> set[asyncio.Task[None]]:
        return set()
