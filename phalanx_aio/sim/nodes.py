"""The simulated nodes of a :class:`~phalanx_aio.sim.cluster.Cluster`: what a node has persisted
(:class:`SimStore`, which survives crashes), its background writes in flight, and the node
itself (:class:`SimNode`: its core, if up, and what the checks remember of it); with the event
kinds and message-type aliases the cluster and its driver share.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field

from phalanx_aio.core.raft import InitialState, Raft, Role
from phalanx_aio.core.types import Entry, HardState, MessageType, Snapshot

__all__ = ["SimNode", "SimStore"]

_SM = struct.Struct(">QQ")
_TICK, _DELIVER, _CALL, _DISK = 0, 1, 2, 3
_TYPE_NAMES = {t: t.name for t in MessageType}
_LEADER = Role.LEADER
_CANDIDATE = Role.CANDIDATE
_APP = MessageType.APP
_HEARTBEAT = MessageType.HEARTBEAT
_HEARTBEAT_RESP = MessageType.HEARTBEAT_RESP
_READ_INDEX_RESP = MessageType.READ_INDEX_RESP
_VOTE_REQS = {MessageType.VOTE: MessageType.VOTE_RESP, MessageType.PRE_VOTE: MessageType.PRE_VOTE_RESP}


@dataclass(slots=True)
class SimStore:
    """What a node has persisted: it survives crashes. ``chains[i]`` hashes the prefix to
    ``entries[i]``; ``base_chain`` hashes the prefix to the snapshot."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot = field(default_factory=Snapshot)
    entries: list[Entry] = field(default_factory=list)
    chains: list[int] = field(default_factory=list)
    base_chain: int = 0
    drop_vote: bool = False
    """Planted bug for tests: the vote is never persisted."""
    early_hard_state: bool = False
    """Planted driver bug for tests: a hard state is saved at once even while the leader's
    entries it may commit are still being written in the background."""

    def last_index(self) -> int:
        """Index of the last persisted entry."""
        return self.snapshot.meta.index + len(self.entries)

    def holds(self, index: int, term: int) -> bool:
        """True if the persisted log holds ``(term, index)`` (or a snapshot covering it)."""
        off = index - self.snapshot.meta.index
        if off <= 0:
            return True
        return off <= len(self.entries) and self.entries[off - 1].term == term

    def chain_at(self, index: int) -> int:
        """Prefix hash at ``index`` (which must be held)."""
        off = index - self.snapshot.meta.index
        return self.base_chain if off == 0 else self.chains[off - 1]

    def initial_state(self) -> InitialState:
        """What a restarting core loads."""
        return InitialState(self.hard_state, self.snapshot, tuple(self.entries))


@dataclass(slots=True)
class _Write:
    """A leader's own entries handed to storage in the background, not yet durable."""

    seq: int
    entries: tuple[Entry, ...]
    chains: list[int]
    """Prefix hash at each entry (what the store will hold once the write is done)."""
    hard_state: HardState | None
    """Saved with the entries, atomically: its commit index may cover them."""


class SimNode:
    """One simulated server: its persistent store and, while up, its core and state machine.

    The state machine is a digest of every command applied, so nodes can be compared at any
    index and a snapshot is just ``(index, digest)``.
    """

    def __init__(self, node_id: str) -> None:
        self.id = node_id
        self.store = SimStore()
        self.core: Raft | None = None
        self.incarnation = 0
        self.applied_index = 0
        self.digest = 0
        self.applied_cmds: dict[int, bytes] = {}
        """Commands applied in this incarnation (not those restored from a snapshot)."""
        self.last_commit_checked = 0
        self.commit_seen = 0
        """Commit index up to which this node's commits were checked for agreement."""
        self.led_term = 0
        """The last term in which this node was seen leading (for :attr:`Cluster.on_leader`)."""
        self.background = False
        """Write a leader's own entries in the background (``advance(entries_durable=False)``)."""
        self.disk_ms: tuple[float, float] = (0.2, 2.0)
        """Range of the simulated time one background write takes."""
        self.pending: deque[_Write] = deque()
        """Background writes not yet durable, oldest first: a crash loses them."""
        self.write_seq = 0
        self.batch_start = 0.0
        self.batch_end = 0.0
        """The last background write batch the disk started (or will start) and finishes."""
        self.campaigned = 0
        """The last term in which this node was seen campaigning (for :attr:`Cluster.on_campaign`)."""

    @property
    def up(self) -> bool:
        """True while the node runs."""
        return self.core is not None
