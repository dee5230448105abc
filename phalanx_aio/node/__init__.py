"""The asyncio driver: :class:`RaftNode` runs one core in one task and serves applications."""

from phalanx_aio.node._envelope import command_of
from phalanx_aio.node._leader_work import EventStream, LeaderWork
from phalanx_aio.node.events import (
    ElectionStarted,
    ElectionWon,
    EventListener,
    LeaderChanged,
    MembershipChanged,
    NodeEvent,
    RemovedFromCluster,
    RoleChanged,
    SnapshotRestored,
    SnapshotSent,
    SnapshotTaken,
    TermChanged,
)
from phalanx_aio.node.raft_node import NodeStatus, RaftNode
from phalanx_aio.node.runner import GC_THRESHOLDS, run, tune_gc, uvloop_available
from phalanx_aio.node.state_machine import StateMachine

__all__ = [
    "GC_THRESHOLDS",
    "ElectionStarted",
    "ElectionWon",
    "EventListener",
    "EventStream",
    "LeaderChanged",
    "LeaderWork",
    "MembershipChanged",
    "NodeEvent",
    "NodeStatus",
    "RaftNode",
    "RemovedFromCluster",
    "RoleChanged",
    "SnapshotRestored",
    "SnapshotSent",
    "SnapshotTaken",
    "StateMachine",
    "TermChanged",
    "command_of",
    "run",
    "tune_gc",
    "uvloop_available",
]
