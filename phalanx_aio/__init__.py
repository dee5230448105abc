"""phalanx_aio: an asyncio-native Raft consensus framework.

The public API is exactly what ``__all__`` lists: the embeddable :class:`RaftNode` with its
:class:`StateMachine` and stores, the core's types and configuration, and the errors. Everything
else is private or lives in a documented subpackage (``phalanx_aio.core`` for the sans-IO core,
``phalanx_aio.sim`` for the deterministic simulator, ``phalanx_aio.transport`` for transports).
"""

from phalanx_aio.core import (
    ConfChange,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    EntryType,
    HardState,
    InitialState,
    Message,
    MessageType,
    Raft,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
    Status,
)
from phalanx_aio.errors import (
    ClosedError,
    ConfigError,
    LocalError,
    NotApplied,
    NotLeader,
    OutcomeUnknown,
    PhalanxError,
    ProposalDropped,
    ProtocolError,
    RemoteError,
    StorageError,
    Timeout,
)
from phalanx_aio.node import NodeStatus, RaftNode, StateMachine, run
from phalanx_aio.storage import MemoryStorage, SQLiteStorage, Storage, StoredState

__version__ = "0.1.0.dev0"

__all__ = [
    "ClosedError",
    "ConfChange",
    "ConfChangeType",
    "ConfState",
    "Config",
    "ConfigError",
    "Entry",
    "EntryType",
    "HardState",
    "InitialState",
    "LocalError",
    "MemoryStorage",
    "Message",
    "MessageType",
    "NodeStatus",
    "NotApplied",
    "NotLeader",
    "OutcomeUnknown",
    "PhalanxError",
    "ProposalDropped",
    "ProtocolError",
    "Raft",
    "RaftNode",
    "ReadState",
    "Ready",
    "RemoteError",
    "Role",
    "SQLiteStorage",
    "Snapshot",
    "SnapshotMeta",
    "StateMachine",
    "Status",
    "Storage",
    "StorageError",
    "StoredState",
    "Timeout",
    "__version__",
    "run",
]
