"""How :class:`~phalanx_aio.RaftNode` takes its ``state_machine`` argument (private).

The typed command layer (:mod:`phalanx_aio.commands`) sits above the node: it registers here its
group type (which a list or tuple of replicated objects becomes) and the types whose objects
must learn their node. The node never imports it; importing :mod:`phalanx_aio` imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from phalanx_aio.errors import LocalError

if TYPE_CHECKING:
    from phalanx_aio.node.raft_node import RaftNode
    from phalanx_aio.node.state_machine import StateMachine

_group: Callable[[Sequence[Any]], StateMachine] | None = None
_node_aware: tuple[type, ...] = ()


def register_state_types(
    group: Callable[[Sequence[Any]], StateMachine], node_aware: tuple[type, ...]
) -> None:
    """Called once by :mod:`phalanx_aio.commands`: ``group`` builds the state machine of a list
    of replicated objects; objects of the ``node_aware`` types get ``_rs_attach(node)``."""
    global _group, _node_aware
    _group, _node_aware = group, node_aware


def attach_state(state_machine: Any, node: RaftNode) -> StateMachine:
    """What the node stores as its state machine: a list or tuple of
    :class:`~phalanx_aio.ReplicatedState` becomes a :class:`~phalanx_aio.commands.ReplicatedGroup`;
    replicated objects learn their node. Any other state machine is returned as it is."""
    sm: Any = state_machine
    if isinstance(sm, list | tuple):
        if _group is None:  # pragma: no cover - importing phalanx_aio registers it
            raise LocalError("a list of state machines needs phalanx_aio.commands")
        sm = _group(sm)
    aware: Any = sm if _node_aware and isinstance(sm, _node_aware) else None
    if aware is not None:
        aware._rs_attach(node)
    result: StateMachine = sm
    return result
