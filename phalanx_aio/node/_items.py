"""What the tasks around :class:`~phalanx_aio.RaftNode` hand its loop (private).

The node's one loop task owns the core; everything else (the ticker, the transport's callbacks,
the public operations, the background writer, a snapshot being built) only enqueues one of
these small named items, and the loop dispatches on the item's type.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from phalanx_aio.core.membership import ConfChange
from phalanx_aio.core.types import Message

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "STOP",
    "TICK",
    "WAKE",
    "ConfRequest",
    "Item",
    "Messages",
    "Persisted",
    "ProposalsWaiting",
    "ReadRequest",
    "Removed",
    "SnapshotBuilt",
    "SnapshotStatus",
    "Stop",
    "Tick",
    "TransferRequest",
    "Unreachable",
    "WriteFailed",
]


class Tick(NamedTuple):
    """The ticker's beat: one tick of the core's clock."""


class ProposalsWaiting(NamedTuple):
    """Proposals wait in the node's queue of proposals; this only wakes the loop (one item for
    many proposals)."""


class Stop(NamedTuple):
    """Close: the loop drains the background writer and ends."""


class Messages(NamedTuple):
    """Messages from a peer, to step into the core."""

    sender: str
    messages: Sequence[Message]


class ReadRequest(NamedTuple):
    """A linearizable read registered under ``context``, to ask the core's ReadIndex for."""

    context: bytes


class ConfRequest(NamedTuple):
    """A membership change to propose (several at once: a joint change); ``future`` gets its
    outcome."""

    change: ConfChange | tuple[ConfChange, ...]
    future: asyncio.Future[Any]


class TransferRequest(NamedTuple):
    """Hand leadership to ``target`` (the best voter if ``None``); ``future`` gets the target."""

    target: str | None
    future: asyncio.Future[Any]


class Unreachable(NamedTuple):
    """The transport lost its stream to ``peer``."""

    peer: str


class SnapshotStatus(NamedTuple):
    """A snapshot sent to ``peer`` arrived (``ok``) or failed."""

    peer: str
    ok: bool


class Persisted(NamedTuple):
    """The background writer made the leader's entries up to ``log_index`` (of ``term``) durable."""

    log_index: int
    term: int


class WriteFailed(NamedTuple):
    """The background writer failed for good: the node stops."""

    error: BaseException


class Removed(NamedTuple):
    """``peer`` says a committed change at ``log_index`` removed this node."""

    peer: str
    log_index: int


class SnapshotBuilt(NamedTuple):
    """A snapshot built off the loop at ``log_index``: its data, or what building it raised."""

    log_index: int
    result: bytes | BaseException


TICK = Tick()
WAKE = ProposalsWaiting()
STOP = Stop()

Item = (
    Tick
    | ProposalsWaiting
    | Stop
    | Messages
    | ReadRequest
    | ConfRequest
    | TransferRequest
    | Unreachable
    | SnapshotStatus
    | Persisted
    | WriteFailed
    | Removed
    | SnapshotBuilt
)
"""Every kind of item the loop's queue carries."""
