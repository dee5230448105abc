"""The replicated key-value service: a state machine with exactly-once client sessions, its gRPC
service (:class:`KVService`) and an asyncio client (:class:`KVClient`). See ``docs/kv.md``.

The service and the client are imported on first use: the wire codec imports
:mod:`phalanx_aio.kv.messages`, and importing them here eagerly would make that a cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from phalanx_aio.kv.messages import ErrorCode, Member, ReadConsistency, StatusResponse
from phalanx_aio.kv.state_machine import (
    KVCommand,
    KVOp,
    KVStateMachine,
    SessionExpired,
    SessionLimits,
    decode_command,
    encode_command,
)

if TYPE_CHECKING:
    from phalanx_aio.kv.client import KVClient, QuotaExceeded, RequestRefused, Unavailable
    from phalanx_aio.kv.service import KVService

__all__ = [
    "ErrorCode",
    "KVClient",
    "KVCommand",
    "KVOp",
    "KVService",
    "KVStateMachine",
    "Member",
    "QuotaExceeded",
    "ReadConsistency",
    "RequestRefused",
    "SessionExpired",
    "SessionLimits",
    "StatusResponse",
    "Unavailable",
    "decode_command",
    "encode_command",
]

_LAZY = {
    "KVClient": "phalanx_aio.kv.client",
    "QuotaExceeded": "phalanx_aio.kv.client",
    "RequestRefused": "phalanx_aio.kv.client",
    "Unavailable": "phalanx_aio.kv.client",
    "KVService": "phalanx_aio.kv.service",
}


def __getattr__(name: str) -> Any:
    """Import :class:`KVService`, :class:`KVClient` and the client's errors on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
