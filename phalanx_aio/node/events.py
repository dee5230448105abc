"""Events a :class:`~phalanx_aio.node.RaftNode` reports to its listeners.

Register a listener with ``RaftNode(..., on_event=fn)`` or :meth:`RaftNode.add_listener
<phalanx_aio.node.RaftNode.add_listener>`. The node calls it synchronously, from its one loop
task, once per event, in the order things happened; every event is a frozen dataclass carrying
the node's id and its term when the event happened. A listener must be quick and must not
block (queue the event if there is real work to do); an exception it raises is logged and
otherwise ignored. A node nobody listens to builds no events at all.

The node observes its core after every input (a tick, a batch of messages from one peer, a
request), so the role, term and leader events are exact: nothing is sampled.

* :class:`TermChanged`, :class:`RoleChanged`, :class:`LeaderChanged`: the core's term, role or
  known leader differ from what they were after the previous input.
* :class:`ElectionStarted`: this node became a candidate for a new term (pre-votes are not
  elections); :class:`ElectionWon`: it became the leader.
* :class:`MembershipChanged`: a configuration entry was applied on this node.
* :class:`SnapshotTaken` (this node compacted its log), :class:`SnapshotRestored` (a snapshot
  was installed into the state machine, from storage at start or from the leader),
  :class:`SnapshotSent` (the transport finished sending a snapshot to a follower).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeAlias

from phalanx_aio.core.membership import ConfChange

__all__ = [
    "ElectionStarted",
    "ElectionWon",
    "EventListener",
    "LeaderChanged",
    "MembershipChanged",
    "NodeEvent",
    "RemovedFromCluster",
    "RoleChanged",
    "SnapshotRestored",
    "SnapshotSent",
    "SnapshotTaken",
    "TermChanged",
]


@dataclass(frozen=True, slots=True)
class NodeEvent:
    """The base of every node event: which node, and its term when the event happened."""

    node_id: str
    term: int


@dataclass(frozen=True, slots=True)
class TermChanged(NodeEvent):
    """The node's term moved from ``previous`` to ``term`` (by its own campaign, or on hearing
    of a higher term)."""

    previous: int


@dataclass(frozen=True, slots=True)
class RoleChanged(NodeEvent):
    """The node's role changed (``follower``, ``pre-candidate``, ``candidate``, ``leader``)."""

    role: str
    previous: str


@dataclass(frozen=True, slots=True)
class ElectionStarted(NodeEvent):
    """This node started an election for ``term``: it became a candidate and voted for itself."""


@dataclass(frozen=True, slots=True)
class ElectionWon(NodeEvent):
    """This node became the leader of ``term``."""


@dataclass(frozen=True, slots=True)
class LeaderChanged(NodeEvent):
    """The leader this node knows of changed from ``previous`` to ``leader``. ``None`` means no
    leader is known (an election is under way, or this node's election timer fired)."""

    leader: str | None
    previous: str | None


@dataclass(frozen=True, slots=True)
class MembershipChanged(NodeEvent):
    """A configuration entry was applied at ``index``: ``change`` (``None`` for the founding
    configuration written at bootstrap and for the entry that leaves a joint configuration;
    the first of several for a joint change, all of which are in ``changes``) and the
    resulting ``voters`` and ``learners``. In a joint configuration ``voters_outgoing`` names
    the voters being left (see :meth:`RaftNode.change_members
    <phalanx_aio.node.RaftNode.change_members>`)."""

    index: int
    change: ConfChange | None
    voters: tuple[str, ...]
    learners: tuple[str, ...]
    changes: tuple[ConfChange, ...] = ()
    voters_outgoing: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SnapshotTaken(NodeEvent):
    """This node compacted its log into a snapshot covering up to ``index`` (``size`` bytes of
    state machine data)."""

    index: int
    size: int


@dataclass(frozen=True, slots=True)
class SnapshotRestored(NodeEvent):
    """A snapshot covering up to ``index`` was installed into the state machine; ``source`` is
    ``"storage"`` (at start) or ``"leader"`` (sent by the leader)."""

    index: int
    source: Literal["storage", "leader"]


@dataclass(frozen=True, slots=True)
class SnapshotSent(NodeEvent):
    """The transport finished sending a snapshot to ``peer``: delivered (``ok``) or failed."""

    peer: str
    ok: bool


@dataclass(frozen=True, slots=True)
class RemovedFromCluster(NodeEvent):
    """Member ``reported_by`` refused this node's messages: it applied a committed membership
    change, at log index ``index``, that removed this node, and this node knows no later
    configuration that includes it. Reported once; the node keeps running (it cannot disturb
    the cluster, see the membership page), and whoever runs it should stop it."""

    index: int
    reported_by: str


EventListener: TypeAlias = Callable[[NodeEvent], None]
"""What a listener is: a callable taking one :class:`NodeEvent` and returning nothing."""
