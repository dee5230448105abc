"""The application's replicated state machine."""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

__all__ = ["StateMachine"]


class StateMachine(abc.ABC):
    """What a :class:`~phalanx_aio.RaftNode` replicates.

    Every member applies the same commands in the same order, so ``apply`` must be
    deterministic: its result may depend only on the state and the command (no clocks, no
    randomness, no I/O whose outcome differs between members). The driver calls these methods
    from its single event-loop task, never concurrently.
    """

    @abc.abstractmethod
    def apply(self, command: bytes) -> Any:
        """Apply one committed command and return its result (handed to ``propose``'s caller
        on the node that proposed it). An exception is handed to that caller too."""

    @abc.abstractmethod
    def snapshot(self) -> bytes:
        """The whole state as bytes (the log before it is then compacted away)."""

    def snapshot_later(self) -> Callable[[], bytes] | None:
        """Optional: take a consistent copy of the state *now* (quickly), and return the
        function that turns that copy into the bytes :meth:`snapshot` would give. The node runs
        the function in a worker thread while its loop goes on (heartbeats, applying), so a
        large state does not stall it; it must not touch the live state. The default, None,
        means the node calls :meth:`snapshot` on its loop."""
        return None

    @abc.abstractmethod
    def restore(self, data: bytes) -> None:
        """Replace the whole state with one produced by :meth:`snapshot` (possibly on another
        member)."""

    def restore_later(self, data: bytes) -> Callable[[], Callable[[], None]] | None:
        """Optional: split :meth:`restore` in two, so that a large snapshot received from the
        leader is decoded without stalling the event loop. Return a function the node runs in
        a worker thread: it decodes ``data`` without touching the live state (raising if it
        cannot), and returns a function the node then calls on its loop to install the result
        (quickly: swapping references, not copying). The node's Raft work waits meanwhile, but
        the loop (the transport, the application's other tasks) goes on. The default, None,
        means the node calls :meth:`restore` on its loop."""
        return None
