"""Ready-made replicated objects: a counter, containers, queues and a lock manager.

Each is a :class:`~phalanx_aio.ReplicatedState`: host it on a node (``state_machine=obj``, or
several in a list, each with its own ``name``), then ``await`` its commands and read it locally.
Local reads (``d.get(key)``, ``d[key]``, ``len(q)``, ...) show this member's state, which may
lag the leader's; wrap them in ``await obj.read(lambda o: ...)`` for a linearizable read.
Values go through the object's codec (:class:`~phalanx_aio.commands.SafeCodec` by default).
"""

from phalanx_aio.batteries.containers import (
    ReplicatedCounter,
    ReplicatedDict,
    ReplicatedList,
    ReplicatedPriorityQueue,
    ReplicatedQueue,
    ReplicatedSet,
)
from phalanx_aio.batteries.locks import LockManager

__all__ = [
    "LockManager",
    "ReplicatedCounter",
    "ReplicatedDict",
    "ReplicatedList",
    "ReplicatedPriorityQueue",
    "ReplicatedQueue",
    "ReplicatedSet",
]
