"""The sans-IO Raft core: standard library only, deterministic, driven by ticks and messages.

Nothing here performs I/O, reads a clock or uses global randomness; drivers (the asyncio
``RaftNode``, the simulator, tests) feed inputs and carry out each :class:`Ready`.
"""

from phalanx_aio.core.config import Config, ReadMode
from phalanx_aio.core.membership import ConfChange, ConfChangeType
from phalanx_aio.core.raft import InitialState, ProgressInfo, Raft, Role, Status
from phalanx_aio.core.ready import Ready
from phalanx_aio.core.types import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Placement,
    PlacementOutcome,
    ReadState,
    Snapshot,
    SnapshotMeta,
)

__all__ = [
    "ConfChange",
    "ConfChangeType",
    "ConfState",
    "Config",
    "Entry",
    "EntryType",
    "HardState",
    "InitialState",
    "Message",
    "MessageType",
    "Placement",
    "PlacementOutcome",
    "ProgressInfo",
    "Raft",
    "ReadMode",
    "ReadState",
    "Ready",
    "Role",
    "Snapshot",
    "SnapshotMeta",
    "Status",
]
