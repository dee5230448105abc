"""The replicated key-value service: a state machine with exactly-once client sessions, its gRPC
service (:class:`KVService`, and :class:`MeteredKVService` that reports to a node's metrics), its
wire format (:mod:`phalanx_aio.kv.codec`) and an asyncio client (:class:`KVClient`). See
``docs/kv.md``.
"""

from __future__ import annotations

from phalanx_aio.kv.client import KVClient, QuotaExceeded, RequestRefused, Unavailable
from phalanx_aio.kv.messages import ErrorCode, Member, ReadConsistency, StatusResponse
from phalanx_aio.kv.metered import MeteredKVService
from phalanx_aio.kv.service import KVService
from phalanx_aio.kv.state_machine import (
    KVCommand,
    KVOp,
    KVStateMachine,
    SessionExpired,
    SessionLimits,
    decode_command,
    encode_command,
)

__all__ = [
    "ErrorCode",
    "KVClient",
    "KVCommand",
    "KVOp",
    "KVService",
    "KVStateMachine",
    "Member",
    "MeteredKVService",
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
