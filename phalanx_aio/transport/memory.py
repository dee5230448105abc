"""An in-process transport with the same interface as the gRPC one, for tests and examples.

A :class:`MemoryNetwork` connects the :class:`MemoryTransport` of several nodes in one event
loop. Delivery is asynchronous (``loop.call_soon``) and in order per link; links can be cut to
make partitions.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from phalanx_aio.core.types import Message
from phalanx_aio.errors import ClosedError
from phalanx_aio.transport.base import Transport, TransportHandler

__all__ = ["MemoryNetwork", "MemoryTransport"]


class MemoryNetwork:
    """The shared medium of several :class:`MemoryTransport` instances."""

    def __init__(self) -> None:
        self._handlers: dict[str, TransportHandler] = {}
        self._transports: dict[str, MemoryTransport] = {}
        self.blocked: set[tuple[str, str]] = set()
        """Directed links ``(src, dst)`` that drop everything."""
        self.drop: Callable[[Message], bool] | None = None
        """If set, every message for which it returns True is lost on the way (tests use it
        to lose one kind of message, or to capture messages and deliver them later)."""

    def transport(self, node_id: str) -> MemoryTransport:
        """A transport for ``node_id`` on this network."""
        return MemoryTransport(node_id, self)

    def isolate(self, node_id: str) -> None:
        """Cut ``node_id`` off from everyone, both ways."""
        for other in self._handlers:
            if other != node_id:
                self.blocked |= {(node_id, other), (other, node_id)}

    def heal(self) -> None:
        """Restore every link."""
        self.blocked.clear()

    def _deliver(self, src: str, dst: str, messages: list[Message]) -> bool:
        handler = self._handlers.get(dst)
        if handler is None or (src, dst) in self.blocked:
            return False
        drop = self.drop
        if drop is not None:
            messages = [m for m in messages if not drop(m)]
            if not messages:
                return True
        receiver = self._transports.get(dst)
        if receiver is not None and src not in receiver._peers and src in receiver._removed:
            # As the gRPC transport does: a removed member's messages are refused, and it is told.
            sender = self._handlers.get(src)
            on_removed = getattr(sender, "on_removed", None)
            if on_removed is not None:
                on_removed(dst, receiver._removed[src])
            return True
        handler.on_messages(src, messages)
        return True


class MemoryTransport(Transport):
    """One node's end of a :class:`MemoryNetwork`."""

    def __init__(self, node_id: str, network: MemoryNetwork) -> None:
        self.node_id = node_id
        self.network = network
        self._handler: TransportHandler | None = None
        self._peers: dict[str, str] = {}
        self._removed: dict[str, int] = {}
        self._stats: Counter[str] = Counter()
        self._closed = False

    async def start(self, handler: TransportHandler) -> None:
        """Attach to the network."""
        if self._closed:
            raise ClosedError("transport is closed")
        self._handler = handler
        self.network._handlers[self.node_id] = handler
        self.network._transports[self.node_id] = self

    def send(self, messages: Sequence[Message]) -> None:
        """Deliver on the next loop iteration, grouped per destination, order kept."""
        if self._closed or not messages:
            return
        by_peer: dict[str, list[Message]] = {}
        for m in messages:
            by_peer.setdefault(m.to, []).append(m)
        loop = asyncio.get_running_loop()
        for dst, batch in by_peer.items():
            if dst not in self._peers:
                self._stats["dropped_unknown_peer"] += len(batch)
                continue
            self._stats["messages_sent"] += len(batch)
            loop.call_soon(self._deliver, dst, batch)

    def _deliver(self, dst: str, batch: list[Message]) -> None:
        if self._closed:
            return
        if not self.network._deliver(self.node_id, dst, batch):
            self._stats["undeliverable"] += len(batch)
            if self._handler is not None:
                self._handler.on_unreachable(dst)
            return
        for m in batch:
            if m.snapshot is not None and self._handler is not None:
                self._handler.on_snapshot_status(dst, True)

    def set_peers(self, peers: Mapping[str, str]) -> None:
        """Replace the peer list."""
        self._peers = dict(peers)

    def set_removed(self, removed: Mapping[str, int]) -> None:
        """Refuse messages from these former members (unless they are peers again) and tell
        them, as :meth:`GrpcTransport.set_removed
        <phalanx_aio.transport.grpc.GrpcTransport.set_removed>` does."""
        self._removed = dict(removed)

    async def aclose(self) -> None:
        """Detach from the network."""
        self._closed = True
        if self.network._handlers.get(self.node_id) is self._handler:
            del self.network._handlers[self.node_id]
        if self.network._transports.get(self.node_id) is self:
            del self.network._transports[self.node_id]

    @property
    def stats(self) -> Mapping[str, int]:
        """Counters of sent, dropped and undeliverable messages."""
        return dict(self._stats)
