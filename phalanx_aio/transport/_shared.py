"""What the parts of :class:`~phalanx_aio.transport.grpc.GrpcTransport` share (private): the
per-peer sending state, the attributes both directions read, and the handler callbacks.

The transport is one class assembled from :class:`~phalanx_aio.transport._outbound.Outbound`
(streams and snapshots to peers) and :class:`~phalanx_aio.transport._inbound.Inbound` (calls from
peers); both derive from :class:`Shared`, which declares the state the constructor in
:mod:`phalanx_aio.transport.grpc` sets up.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import ssl
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from grpclib.config import Configuration
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from phalanx_aio._budget import BufferBudget
from phalanx_aio._entry_batch import BatchCache
from phalanx_aio.core.types import Message
from phalanx_aio.transport.base import TransportHandler
from phalanx_aio.transport.codec import Limits

log = logging.getLogger("phalanx_aio.transport.grpc")


class StreamEnded(Exception):
    """The peer ended our stream (normally only with an error status)."""


class Peer:
    """Sending state for one peer: its queue, its stream task, its snapshot transfers."""

    __slots__ = (
        "address",
        "established_at",
        "failures",
        "id",
        "queue",
        "snap_pending",
        "snap_task",
        "task",
        "unreachable",
        "wake",
    )

    def __init__(self, peer_id: str, address: str) -> None:
        self.id = peer_id
        self.address = address
        self.queue: deque[Message] = deque()
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.snap_pending: Message | None = None
        self.snap_task: asyncio.Task[None] | None = None
        self.unreachable = False
        """True from a failure until the next stream the peer accepts (one failure episode)."""
        self.failures = 0
        """Failed attempts since the last healthy stream, for the backoff."""
        self.established_at: float | None = None
        """When the current (or last) stream was accepted, loop time."""


_REMOVED = re.compile(r"removed at index (\d+): ")


def removal_index(exc: BaseException) -> int | None:
    """The index in a peer's "you were removed" refusal (``NOT_FOUND``), or None."""
    if isinstance(exc, GRPCError) and exc.status is Status.NOT_FOUND:
        found = _REMOVED.match(exc.message or "")
    elif isinstance(exc, StreamEnded):
        found = _REMOVED.search(str(exc)) if "NOT_FOUND" in str(exc) else None
    else:
        found = None
    return int(found.group(1)) if found else None


def describe(exc: BaseException) -> str:
    if isinstance(exc, GRPCError):
        return f"{exc.status.name} {exc.message or ''}".rstrip()
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Shared:
    """The state both directions of the transport use (set by ``GrpcTransport.__init__``)."""

    node_id: str
    cluster_id: str
    _handler: TransportHandler | None
    _stats: Counter[str]
    _closed: bool
    _started: bool
    _limits: Limits
    batch_cache: BatchCache | None  # the owning node's (Transport.batch_cache)
    _peers: dict[str, Peer]
    _removed: dict[str, int]
    _budget: BufferBudget
    _bind_node_ids: bool
    _hello: bytes
    _client_ssl: ssl.SSLContext | None
    _channel_config: Configuration
    _backoff: tuple[float, float, float]
    _rng: random.Random
    _connect_timeout: float
    _send_timeout: float
    _chunk_bytes: int

    def _notify(self, what: str, fn: Callable[..., None], peer: str, *args: Any) -> None:
        try:
            fn(peer, *args)
        except Exception:
            self._stats["handler_errors"] += 1
            log.exception("%s: transport handler %s failed (peer %s)", self.node_id, what, peer)

    def _unreachable(self, peer: Peer, exc: BaseException) -> None:
        self._stats["stream_failures"] += 1
        removed_at = removal_index(exc)
        if removed_at is not None and self._handler is not None and not self._closed:
            on_removed = getattr(self._handler, "on_removed", None)  # optional for handlers
            if on_removed is not None:
                self._notify("on_removed", on_removed, peer.id, removed_at)
        if peer.unreachable:
            log.debug("%s: peer %s at %s still unreachable: %r", self.node_id, peer.id, peer.address, exc)
            return
        peer.unreachable = True
        log.warning("%s: peer %s at %s unreachable: %s", self.node_id, peer.id, peer.address, describe(exc))
        if self._handler is not None and not self._closed:
            self._notify("on_unreachable", self._handler.on_unreachable, peer.id)
