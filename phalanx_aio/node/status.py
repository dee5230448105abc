"""A report of one node's state (:meth:`RaftNode.status() <phalanx_aio.RaftNode.status>`)."""

from __future__ import annotations

from dataclasses import dataclass

from phalanx_aio.core.raft import Status

__all__ = ["NodeStatus"]


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """A report of one node's state (``RaftNode.status()``)."""

    id: str
    role: str
    term: int
    leader: str | None
    commit: int
    applied: int
    first_index: int
    last_index: int
    voters: tuple[str, ...]
    learners: tuple[str, ...]
    healthy: bool
    """False while storage refuses writes (disk full); the node then acknowledges nothing."""
    pending_proposals: int
    core: Status
    """The core's own status (per-follower progress on a leader)."""
    removed_at: int | None = None
    """The log index of the committed change that removed this node, once a member said so
    (see :class:`~phalanx_aio.node.events.RemovedFromCluster`); None otherwise."""
    voters_outgoing: tuple[str, ...] = ()
    """In a joint configuration, the voters being left (empty otherwise)."""
