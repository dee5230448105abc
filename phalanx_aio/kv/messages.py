"""The messages of the client-facing KV service (``protos/phalanx/v1/kv.proto``) as plain dataclasses.

:class:`~phalanx_aio.kv.service.KVService` and :class:`~phalanx_aio.kv.client.KVClient` work with
these; :func:`phalanx_aio.kv.codec.encode_kv_message` and
:func:`~phalanx_aio.kv.codec.decode_kv_message` put them on the wire and take them off.
Optional protobuf pairs become ``None``: ``had_previous``/``previous`` is ``previous: bytes | None``,
``expect_absent``/``expected`` is ``expected: bytes | None``, ``found``/``value`` is
``value: bytes | None``.

This module imports only the standard library (and :mod:`phalanx_aio.kv._quick`, which gives each
class a faster ``__init__``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Final

from phalanx_aio.kv._quick import quick_init

__all__ = [
    "KV_METHODS",
    "CompareAndSetRequest",
    "CompareAndSetResponse",
    "DeleteRequest",
    "DeleteResponse",
    "ErrorCode",
    "GetRequest",
    "GetResponse",
    "KVRequest",
    "KVResponse",
    "Member",
    "MemberAddRequest",
    "MemberChangeRequest",
    "MemberChangeResponse",
    "MemberListRequest",
    "MemberListResponse",
    "MemberPromoteRequest",
    "MemberRemoveRequest",
    "PutRequest",
    "PutResponse",
    "ReadConsistency",
    "RequestHeader",
    "ResponseHeader",
    "StatusRequest",
    "StatusResponse",
    "TransferLeaderRequest",
    "TransferLeaderResponse",
]


class ErrorCode(enum.IntEnum):
    """What went wrong, from the client's point of view (``ResponseHeader.error``)."""

    OK = 0
    """The operation took effect (or, for reads and Status, the answer is valid)."""
    NOT_LEADER = 1
    """The node is not the leader: certainly not applied; retry on the leader hint."""
    NOT_APPLIED = 2
    """Certainly not applied and never will be: safe to retry."""
    UNKNOWN = 3
    """May or may not take effect: retry only with the same client id and sequence."""
    WRONG_CLUSTER = 4
    """The request names another cluster. Not applied."""
    INVALID_ARGUMENT = 5
    """The request is malformed. Not applied."""
    SESSION_EXPIRED = 6
    """The session no longer remembers this sequence: its outcome cannot be told."""
    REJECTED = 7
    """A membership change or transfer was refused. Not applied."""
    INTERNAL = 8
    """A bug or a storage failure on the server. Outcome unknown."""
    QUOTA_EXCEEDED = 9
    """The cluster holds as much as its quota allows: a write that adds data is refused,
    certainly not applied (deletes go on)."""


class ReadConsistency(enum.IntEnum):
    """How fresh a read must be."""

    LINEARIZABLE = 0
    """ReadIndex through the leader (the default)."""
    LEASE = 1
    """The node's configured read path: a lease read if the cluster runs ``read_mode="lease"``."""
    STALE = 2
    """The answering node's applied state, whatever its role: possibly stale."""


@quick_init
@dataclass(frozen=True, slots=True)
class RequestHeader:
    """Sent with every request: the cluster, and the session of a write."""

    cluster_id: str
    client_id: str = ""
    """The session's id (empty: no session, as for reads)."""
    sequence: int = 0
    """The write's number in the session, from 1; a retry repeats it. 0: no session."""
    acked_sequence: int = 0
    """Every sequence at or below this one has been answered: the server may forget them."""


@quick_init
@dataclass(frozen=True, slots=True)
class ResponseHeader:
    """Sent with every response: the outcome and the answering node's view of the leader."""

    error: ErrorCode = ErrorCode.OK
    message: str = ""
    """A human-readable explanation when ``error`` is not OK."""
    leader_hint: str = ""
    """The leader the answering node knows of (empty if none)."""
    leader_address: str = ""
    """That leader's address (host:port), if known."""
    term: int = 0
    """The answering node's term."""
    index: int = 0
    """The answering node's applied index when it answered (0 if not applicable)."""


@quick_init
@dataclass(frozen=True, slots=True)
class Member:
    """One member of the cluster."""

    node_id: str
    address: str = ""
    """Its peer (and client) address, host:port."""
    learner: bool = False
    match_index: int = 0
    """In a leader's :class:`StatusResponse`: the highest log index the member acknowledged to
    this leader (0 elsewhere, and for members it has not heard from)."""


@quick_init
@dataclass(frozen=True, slots=True)
class PutRequest:
    """Set ``key`` to ``value`` (a write)."""

    header: RequestHeader
    key: bytes
    value: bytes


@quick_init
@dataclass(frozen=True, slots=True)
class PutResponse:
    """The answer to a :class:`PutRequest`."""

    header: ResponseHeader = ResponseHeader()
    previous: bytes | None = None
    """The value before the write (``None``: the key was absent)."""


@quick_init
@dataclass(frozen=True, slots=True)
class GetRequest:
    """Read ``key``."""

    header: RequestHeader
    key: bytes
    consistency: ReadConsistency = ReadConsistency.LINEARIZABLE


@quick_init
@dataclass(frozen=True, slots=True)
class GetResponse:
    """The answer to a :class:`GetRequest`."""

    header: ResponseHeader = ResponseHeader()
    value: bytes | None = None
    """``None``: the key is absent."""


@quick_init
@dataclass(frozen=True, slots=True)
class DeleteRequest:
    """Remove ``key`` (a write)."""

    header: RequestHeader
    key: bytes


@quick_init
@dataclass(frozen=True, slots=True)
class DeleteResponse:
    """The answer to a :class:`DeleteRequest`."""

    header: ResponseHeader = ResponseHeader()
    deleted: bool = False
    """Whether the key existed."""


@quick_init
@dataclass(frozen=True, slots=True)
class CompareAndSetRequest:
    """Set ``key`` to ``value`` if it holds ``expected`` (``None``: if it is absent). A write."""

    header: RequestHeader
    key: bytes
    expected: bytes | None
    value: bytes


@quick_init
@dataclass(frozen=True, slots=True)
class CompareAndSetResponse:
    """The answer to a :class:`CompareAndSetRequest`; a failed comparison is not an error."""

    header: ResponseHeader = ResponseHeader()
    swapped: bool = False
    current: bytes | None = None
    """The value the comparison found (``None``: absent)."""


@quick_init
@dataclass(frozen=True, slots=True)
class StatusRequest:
    """Ask one node for its view of the cluster."""

    header: RequestHeader


@quick_init
@dataclass(frozen=True, slots=True)
class StatusResponse:
    """One node's view of the cluster."""

    header: ResponseHeader = ResponseHeader()
    node_id: str = ""
    role: str = ""
    """``"leader"``, ``"follower"``, ``"candidate"`` or ``"pre-candidate"``."""
    term: int = 0
    leader_id: str = ""
    """Empty if no leader is known."""
    commit_index: int = 0
    applied_index: int = 0
    last_index: int = 0
    members: tuple[Member, ...] = ()
    quota_alarm: bool = False
    """True while the node refuses writes that add data (``QUOTA_EXCEEDED``)."""
    quota_used_bytes: int = 0
    """What counts against the quota: keys and values held, and the log since the last snapshot."""


@quick_init
@dataclass(frozen=True, slots=True)
class MemberListRequest:
    """Ask the leader for the configuration."""

    header: RequestHeader


@quick_init
@dataclass(frozen=True, slots=True)
class MemberListResponse:
    """The configuration, as the leader knows it."""

    header: ResponseHeader = ResponseHeader()
    members: tuple[Member, ...] = ()


@quick_init
@dataclass(frozen=True, slots=True)
class MemberAddRequest:
    """Add ``node_id`` at ``address``, as a learner unless ``learner`` is false."""

    header: RequestHeader
    node_id: str
    address: str
    learner: bool = True


@quick_init
@dataclass(frozen=True, slots=True)
class MemberRemoveRequest:
    """Remove a voter or a learner."""

    header: RequestHeader
    node_id: str


@quick_init
@dataclass(frozen=True, slots=True)
class MemberPromoteRequest:
    """Turn a learner into a voter."""

    header: RequestHeader
    node_id: str


@quick_init
@dataclass(frozen=True, slots=True)
class MemberChangeRequest:
    """Several changes in one step (joint consensus when the voters change): members to add
    (``learner`` says how), learners to promote, members to remove."""

    header: RequestHeader
    add: tuple[Member, ...] = ()
    promote: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()


@quick_init
@dataclass(frozen=True, slots=True)
class MemberChangeResponse:
    """The answer to a membership change: the configuration once the change committed."""

    header: ResponseHeader = ResponseHeader()
    members: tuple[Member, ...] = ()


@quick_init
@dataclass(frozen=True, slots=True)
class TransferLeaderRequest:
    """Hand leadership to ``target`` (empty: the leader picks the most up-to-date voter)."""

    header: RequestHeader
    target: str = ""


@quick_init
@dataclass(frozen=True, slots=True)
class TransferLeaderResponse:
    """The answer to a :class:`TransferLeaderRequest`."""

    header: ResponseHeader = ResponseHeader()
    leader_id: str = ""
    """The leader after the transfer."""


KVRequest = (
    PutRequest
    | GetRequest
    | DeleteRequest
    | CompareAndSetRequest
    | StatusRequest
    | MemberListRequest
    | MemberAddRequest
    | MemberRemoveRequest
    | MemberPromoteRequest
    | MemberChangeRequest
    | TransferLeaderRequest
)
"""Any request of the KV service."""

KVResponse = (
    PutResponse
    | GetResponse
    | DeleteResponse
    | CompareAndSetResponse
    | StatusResponse
    | MemberListResponse
    | MemberChangeResponse
    | TransferLeaderResponse
)
"""Any response of the KV service."""

_SERVICE: Final = "/phalanx.v1.KV/"

KV_METHODS: Final[dict[str, tuple[type[Any], type[Any]]]] = {
    _SERVICE + "Put": (PutRequest, PutResponse),
    _SERVICE + "Get": (GetRequest, GetResponse),
    _SERVICE + "Delete": (DeleteRequest, DeleteResponse),
    _SERVICE + "CompareAndSet": (CompareAndSetRequest, CompareAndSetResponse),
    _SERVICE + "Status": (StatusRequest, StatusResponse),
    _SERVICE + "MemberList": (MemberListRequest, MemberListResponse),
    _SERVICE + "MemberAdd": (MemberAddRequest, MemberChangeResponse),
    _SERVICE + "MemberRemove": (MemberRemoveRequest, MemberChangeResponse),
    _SERVICE + "MemberPromote": (MemberPromoteRequest, MemberChangeResponse),
    _SERVICE + "MemberChange": (MemberChangeRequest, MemberChangeResponse),
    _SERVICE + "TransferLeader": (TransferLeaderRequest, TransferLeaderResponse),
}
"""gRPC method path -> (request type, response type), for every method of the KV service."""
