"""How :class:`~phalanx_aio.RaftNode` takes its ``state_machine`` argument (imported by the node
module, so it imports the command layer only when called: no import cycle)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from phalanx_aio.node.raft_node import RaftNode
    from phalanx_aio.node.state_machine import StateMachine


def attach_state(state_machine: Any, node: RaftNode) -> StateMachine:
    """What the node stores as its state machine: a list or tuple of
    :class:`~phalanx_aio.ReplicatedState` becomes a :class:`~phalanx_aio.commands.ReplicatedGroup`;
    replicated objects learn their node. Any other state machine is returned as it is."""
    from phalanx_aio.commands.state import ReplicatedGroup, ReplicatedState

    sm = ReplicatedGroup(state_machine) if isinstance(state_machine, list | tuple) else state_machine
    if isinstance(sm, ReplicatedState | ReplicatedGroup):
        sm._rs_attach(node)
    result: StateMachine = sm
    return result
