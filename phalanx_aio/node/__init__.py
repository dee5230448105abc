"""The asyncio driver: :class:`RaftNode` runs one core in one task and serves applications."""

from phalanx_aio.node.raft_node import NodeStatus, RaftNode
from phalanx_aio.node.runner import run, uvloop_available
from phalanx_aio.node.state_machine import StateMachine

__all__ = ["NodeStatus", "RaftNode", "StateMachine", "run", "uvloop_available"]
