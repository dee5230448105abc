"""The transport interface: how a node's driver hands core messages to peers and gets theirs.

A transport is owned by one :class:`~phalanx_aio.node.RaftNode`. Sending never blocks and never
raises for network trouble: messages are queued per peer and the transport reports a peer it
cannot reach through :meth:`TransportHandler.on_unreachable`. Everything a transport receives
is handed to :meth:`TransportHandler.on_messages` from the event loop thread; the handler only
enqueues, so a slow node never stalls a connection's reader for long.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Protocol

from phalanx_aio._entry_batch import BatchCache
from phalanx_aio.core.types import Message

__all__ = ["Transport", "TransportHandler"]


class TransportHandler(Protocol):
    """What a transport calls back into (implemented by the node driver)."""

    def on_messages(self, sender: str, messages: Sequence[Message]) -> None:
        """Messages arrived from ``sender`` (already validated: right cluster, known sender)."""

    def on_unreachable(self, peer: str) -> None:
        """Sending to ``peer`` failed; the core should stop streaming to it optimistically."""

    def on_snapshot_status(self, peer: str, ok: bool) -> None:
        """A snapshot sent to ``peer`` was fully delivered (``ok``) or failed."""

    def on_removed(self, peer: str, index: int) -> None:
        """``peer`` refused this node's messages: it applied a committed membership change, at
        log index ``index``, that removed this node. (Transports call it only if the handler
        defines it.)"""


class Transport(abc.ABC):
    """Carries core messages between the members of one cluster."""

    batch_cache: BatchCache | None = None
    """The batch cache of the node that owns this transport (set by ``RaftNode``, shared with
    its store): a transport that encodes entries may use it, so that a batch sent to several
    followers, then stored, is encoded once."""

    @abc.abstractmethod
    async def start(self, handler: TransportHandler) -> None:
        """Begin receiving (bind the listening socket, if any) and sending."""

    @abc.abstractmethod
    def send(self, messages: Sequence[Message]) -> None:
        """Queue ``messages`` for their destinations (``Message.to``); never blocks."""

    @abc.abstractmethod
    def set_peers(self, peers: Mapping[str, str]) -> None:
        """The current members other than this node, id -> address. Streams to members no
        longer listed are closed; messages to unknown ids are dropped and counted."""

    @abc.abstractmethod
    def set_removed(self, removed: Mapping[str, int]) -> None:
        """Former members this node knows were removed (id -> the index of the committed change
        that removed them): their messages are refused, and their transport calls their
        node's ``on_removed`` (see :class:`TransportHandler`)."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop sending and receiving and release every resource. Idempotent."""

    @property
    @abc.abstractmethod
    def stats(self) -> Mapping[str, int]:
        """Counters: frames and messages sent and received, rejections by reason, reconnects."""
