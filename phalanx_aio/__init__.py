"""phalanx_aio: an asyncio-native Raft consensus framework.

The public API is exactly what ``__all__`` lists; everything else is private or lives in a
documented subpackage (``phalanx_aio.core`` for the sans-IO core, ``phalanx_aio.sim`` for the
deterministic simulator).
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
    "Message",
    "MessageType",
    "NotApplied",
    "NotLeader",
    "OutcomeUnknown",
    "PhalanxError",
    "ProposalDropped",
    "ProtocolError",
    "Raft",
    "ReadState",
    "Ready",
    "RemoteError",
    "Role",
    "Snapshot",
    "SnapshotMeta",
    "Status",
    "StorageError",
    "Timeout",
    "__version__",
]
