"""The KV service's wire format (``protos/phalanx/v1/kv.proto``): the dataclasses of
:mod:`phalanx_aio.kv.messages` to protobuf bytes and back.

This module holds the unary methods (:func:`encode_kv_message`, :func:`decode_kv_message`) and
the one hand-written encoder of the Put, Get, Delete and CompareAndSet requests and responses,
which both paths use (their unary bytes are the body of a ``Stream`` item). The other unary
messages (Status, the membership calls, the leadership transfer) are few and small and go
through the generated classes. The ``Stream`` call, which carries every operation of a busy
client in batches, is :mod:`phalanx_aio.kv.stream_codec`.

Decoding never trusts its input and raises only :class:`~phalanx_aio.errors.ProtocolError`;
encoding raises only :class:`EncodeError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final, TypeVar

from phalanx_aio._proto.phalanx import v1 as _pb
from phalanx_aio._protowire import (
    LEN,
    MAX_U64,
    VARINT,
    EncodeError,
    bad,
    cannot,
    fields,
    put_len,
    put_uint,
    tag,
)
from phalanx_aio.errors import LocalError, ProtocolError
from phalanx_aio.kv.messages import (
    CompareAndSetRequest,
    CompareAndSetResponse,
    DeleteRequest,
    DeleteResponse,
    GetRequest,
    GetResponse,
    KVRequest,
    KVResponse,
    MemberAddRequest,
    MemberChangeRequest,
    MemberChangeResponse,
    MemberListRequest,
    MemberListResponse,
    MemberPromoteRequest,
    MemberRemoveRequest,
    PutRequest,
    PutResponse,
    ReadConsistency,
    StatusRequest,
    StatusResponse,
    TransferLeaderRequest,
    TransferLeaderResponse,
)
from phalanx_aio.kv.messages import ErrorCode as KVErrorCode
from phalanx_aio.kv.messages import Member as KVMember
from phalanx_aio.kv.messages import RequestHeader as KVRequestHeader
from phalanx_aio.kv.messages import ResponseHeader as KVResponseHeader

__all__ = [
    "MAX_MESSAGE_BYTES",
    "EncodeError",
    "decode_kv_message",
    "encode_kv_message",
]

MAX_MESSAGE_BYTES: Final = 64 << 20
"""The default bound on one received message (the peer codec's default frame bound)."""

_KV = TypeVar("_KV")
_E = TypeVar("_E", KVErrorCode, ReadConsistency)
_TRUE: Final = b"\x01"  # a bool field's value

# RequestHeader
RQ_CLUSTER_ID: Final = tag(1, LEN)
RQ_CLIENT_ID: Final = tag(2, LEN)
RQ_SEQUENCE: Final = tag(3, VARINT)
RQ_ACKED_SEQUENCE: Final = tag(4, VARINT)
# ResponseHeader
_RS_ERROR: Final = tag(1, VARINT)
_RS_MESSAGE: Final = tag(2, LEN)
_RS_LEADER_HINT: Final = tag(3, LEN)
_RS_LEADER_ADDRESS: Final = tag(4, LEN)
_RS_TERM: Final = tag(5, VARINT)
_RS_INDEX: Final = tag(6, VARINT)
# Put, Get, Delete, CompareAndSet: requests and responses
BODY_REQUESTS: Final = frozenset((PutRequest, GetRequest, DeleteRequest, CompareAndSetRequest))
BODY_RESPONSES: Final = frozenset((PutResponse, GetResponse, DeleteResponse, CompareAndSetResponse))
"""The messages of the hand-written encoder (:func:`request_body`, :func:`response_body`)."""
_HEADER: Final = tag(1, LEN)
_KEY: Final = tag(2, LEN)
_PUT_VALUE: Final = tag(3, LEN)
_GET_CONSISTENCY: Final = tag(3, VARINT)
_CAS_EXPECTED: Final = tag(3, LEN)
_CAS_EXPECT_ABSENT: Final = tag(4, VARINT)
_CAS_VALUE: Final = tag(5, LEN)
_PUT_HAD_PREVIOUS: Final = tag(2, VARINT)
_PUT_PREVIOUS: Final = tag(3, LEN)
_GET_FOUND: Final = tag(2, VARINT)
_GET_VALUE: Final = tag(3, LEN)
_DELETE_DELETED: Final = tag(2, VARINT)
_CAS_SWAPPED: Final = tag(2, VARINT)
_CAS_FOUND: Final = tag(3, VARINT)
_CAS_CURRENT: Final = tag(4, LEN)


# ---------------------------------------------------------------------------------------------
# Field checks and writers


def _kv_u64(value: object, what: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_U64:
        cannot(f"{what} must be an int in [0, 2**64), not {value!r:.50}")
    return value


def _kv_str(value: object, what: str) -> str:
    if type(value) is not str:
        cannot(f"{what} must be a str, not {type(value).__name__}")
    return value


def _kv_bytes(value: object, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray):
        cannot(f"{what} must be bytes, not {type(value).__name__}")
    return bytes(value)


def enum_value(enum_type: type[_E], value: object, what: str) -> _E:
    try:
        return enum_type(int(value))  # type: ignore[call-overload]
    except (TypeError, ValueError):
        bad(f"unknown {what} {value!r:.50}")


def _put_bytes(out: bytearray, key: bytes, value: object, what: str) -> None:
    raw = _kv_bytes(value, what)
    if raw:
        put_len(out, key, raw)


def put_str(out: bytearray, key: bytes, value: object, what: str) -> None:
    if value:
        try:
            raw = _kv_str(value, what).encode("utf-8")
        except UnicodeEncodeError:
            cannot(f"{what} cannot be encoded as UTF-8")
        put_len(out, key, raw)
    elif type(value) is not str:
        cannot(f"{what} must be a str, not {type(value).__name__}")


def put_checked_uint(out: bytearray, key: bytes, value: object, what: str, top: int = MAX_U64) -> None:
    if type(value) is not int or not 0 <= value <= top:
        cannot(f"{what} must be an int in [0, {top}], not {value!r:.50}")
    put_uint(out, key, value)


def _put_true(out: bytearray, key: bytes, value: object) -> None:
    if value:
        out += key
        out += _TRUE


def _put_optional(out: bytearray, flag: bytes, key: bytes, value: object, what: str) -> None:
    """An optional bytes value as a (flag, bytes) pair of fields."""
    if value is not None:
        out += flag
        out += _TRUE
        _put_bytes(out, key, value, what)


# ---------------------------------------------------------------------------------------------
# Put, Get, Delete and CompareAndSet: one encoder for both paths


def request_header(h: object) -> bytes:
    if not isinstance(h, KVRequestHeader):
        cannot(f"header must be a RequestHeader, not {type(h).__name__}")
    out = bytearray()
    put_str(out, RQ_CLUSTER_ID, h.cluster_id, "cluster_id")
    put_str(out, RQ_CLIENT_ID, h.client_id, "client_id")
    put_checked_uint(out, RQ_SEQUENCE, h.sequence, "sequence")
    put_checked_uint(out, RQ_ACKED_SEQUENCE, h.acked_sequence, "acked_sequence")
    return bytes(out)


def response_header(h: object) -> bytes:
    if not isinstance(h, KVResponseHeader):
        cannot(f"header must be a ResponseHeader, not {type(h).__name__}")
    if not isinstance(h.error, KVErrorCode):
        cannot(f"error must be an ErrorCode, not {h.error!r:.50}")
    out = bytearray()
    put_checked_uint(out, _RS_ERROR, int(h.error), "error")
    put_str(out, _RS_MESSAGE, h.message, "message")
    put_str(out, _RS_LEADER_HINT, h.leader_hint, "leader_hint")
    put_str(out, _RS_LEADER_ADDRESS, h.leader_address, "leader_address")
    put_checked_uint(out, _RS_TERM, h.term, "term")
    put_checked_uint(out, _RS_INDEX, h.index, "index")
    return bytes(out)


def request_body(m: object, header: bytes) -> bytes:
    """A Put, Get, Delete or CompareAndSet request whose header encodes as ``header``."""
    out = bytearray()
    put_len(out, _HEADER, header)
    if isinstance(m, PutRequest):
        _put_bytes(out, _KEY, m.key, "key")
        _put_bytes(out, _PUT_VALUE, m.value, "value")
    elif isinstance(m, GetRequest):
        _put_bytes(out, _KEY, m.key, "key")
        if not isinstance(m.consistency, ReadConsistency):
            cannot(f"consistency must be a ReadConsistency, not {m.consistency!r:.50}")
        put_checked_uint(out, _GET_CONSISTENCY, int(m.consistency), "consistency")
    elif isinstance(m, DeleteRequest):
        _put_bytes(out, _KEY, m.key, "key")
    else:
        assert isinstance(m, CompareAndSetRequest)
        _put_bytes(out, _KEY, m.key, "key")
        if m.expected is None:
            _put_true(out, _CAS_EXPECT_ABSENT, True)
        else:
            _put_bytes(out, _CAS_EXPECTED, m.expected, "expected")
        _put_bytes(out, _CAS_VALUE, m.value, "value")
    return bytes(out)


def response_body(m: object, header: bytes) -> bytes:
    """A Put, Get, Delete or CompareAndSet response whose header encodes as ``header``."""
    out = bytearray()
    put_len(out, _HEADER, header)
    if isinstance(m, PutResponse):
        _put_optional(out, _PUT_HAD_PREVIOUS, _PUT_PREVIOUS, m.previous, "previous")
    elif isinstance(m, GetResponse):
        _put_optional(out, _GET_FOUND, _GET_VALUE, m.value, "value")
    elif isinstance(m, DeleteResponse):
        _put_true(out, _DELETE_DELETED, m.deleted)
    else:
        assert isinstance(m, CompareAndSetResponse)
        _put_true(out, _CAS_SWAPPED, m.swapped)
        _put_optional(out, _CAS_FOUND, _CAS_CURRENT, m.current, "current")
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# The unary methods


def encode_kv_message(message: KVRequest | KVResponse) -> bytes:
    """The protobuf bytes of a KV service request or response (a dataclass of
    :mod:`phalanx_aio.kv.messages`); :class:`EncodeError` if a field is out of range or of the
    wrong type."""
    kind = type(message)
    try:
        if kind in BODY_REQUESTS:
            return request_body(message, request_header(getattr(message, "header", None)))
        if kind in BODY_RESPONSES:
            return response_body(message, response_header(getattr(message, "header", None)))
        encoder = _KV_ENCODERS.get(kind)
        if encoder is None:
            cannot(f"{kind.__name__} is not a KV service message")
        return bytes(encoder(message))
    except EncodeError:
        raise
    except Exception as exc:  # betterproto on a value of the wrong type
        raise EncodeError(f"{kind.__name__}: {type(exc).__name__}: {exc}") from exc


def decode_kv_message(kind: type[_KV], data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> _KV:
    """Decode ``data`` as the KV service message ``kind`` (a dataclass of
    :mod:`phalanx_aio.kv.messages`); :class:`ProtocolError` if it is malformed, over
    ``max_bytes``, or holds an unknown enum value. No other exception escapes."""
    entry = _KV_DECODERS.get(kind)
    if entry is None:
        raise LocalError(f"{getattr(kind, '__name__', kind)!r} is not a KV service message type")
    pb_type, convert = entry
    if len(data) > max_bytes:
        bad(f"{kind.__name__} of {len(data)} bytes, over the limit of {max_bytes}")
    data = bytes(data)
    # betterproto quietly truncates a field that runs past the end: check the framing first.
    _kv_walk(data, 0, len(data), kind.__name__, _KV_NESTED.get(kind, (1,)))
    try:
        parsed = pb_type().parse(data)
    except Exception as exc:
        raise ProtocolError(f"malformed {kind.__name__}: {type(exc).__name__}: {exc}") from exc
    try:
        result: _KV = convert(parsed)
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"malformed {kind.__name__}: {type(exc).__name__}: {exc}") from exc
    return result


def _kv_walk(data: bytes, pos: int, end: int, what: str, nested: tuple[int, ...]) -> None:
    """Check that ``data[pos:end]`` is well-framed protobuf, and so are its sub-messages
    (the field numbers in ``nested``: the header, and the members of a configuration)."""
    for number, wire, a, b in fields(data, pos, end, what, max_fields=1 << 20):
        if number in nested and wire == LEN:
            _kv_walk(data, a, b, what, ())


def _to_pb_request_header(h: KVRequestHeader) -> _pb.RequestHeader:
    if not isinstance(h, KVRequestHeader):
        cannot(f"header must be a RequestHeader, not {type(h).__name__}")
    return _pb.RequestHeader(
        cluster_id=_kv_str(h.cluster_id, "cluster_id"),
        client_id=_kv_str(h.client_id, "client_id"),
        sequence=_kv_u64(h.sequence, "sequence"),
        acked_sequence=_kv_u64(h.acked_sequence, "acked_sequence"),
    )


def _to_pb_response_header(h: KVResponseHeader) -> _pb.ResponseHeader:
    if not isinstance(h, KVResponseHeader):
        cannot(f"header must be a ResponseHeader, not {type(h).__name__}")
    if not isinstance(h.error, KVErrorCode):
        cannot(f"error must be an ErrorCode, not {h.error!r:.50}")
    return _pb.ResponseHeader(
        error=_pb.ErrorCode(int(h.error)),
        message=_kv_str(h.message, "message"),
        leader_hint=_kv_str(h.leader_hint, "leader_hint"),
        leader_address=_kv_str(h.leader_address, "leader_address"),
        term=_kv_u64(h.term, "term"),
        index=_kv_u64(h.index, "index"),
    )


def _to_pb_members(members: Iterable[KVMember]) -> list[_pb.Member]:
    out = []
    for m in members:
        if not isinstance(m, KVMember):
            cannot(f"members must be Member, not {type(m).__name__}")
        out.append(
            _pb.Member(
                node_id=_kv_str(m.node_id, "node_id"),
                address=_kv_str(m.address, "address"),
                learner=bool(m.learner),
                match_index=_kv_u64(m.match_index, "match_index"),
            )
        )
    return out


def _from_pb_request_header(h: _pb.RequestHeader) -> KVRequestHeader:
    return KVRequestHeader(h.cluster_id, h.client_id, h.sequence, h.acked_sequence)


def _from_pb_response_header(h: _pb.ResponseHeader) -> KVResponseHeader:
    return KVResponseHeader(
        enum_value(KVErrorCode, h.error, "error code"),
        h.message,
        h.leader_hint,
        h.leader_address,
        h.term,
        h.index,
    )


def _from_pb_members(members: Iterable[_pb.Member]) -> tuple[KVMember, ...]:
    return tuple(KVMember(m.node_id, m.address, m.learner, m.match_index) for m in members)


def _enc_status_response(m: StatusResponse) -> _pb.StatusResponse:
    return _pb.StatusResponse(
        header=_to_pb_response_header(m.header),
        node_id=_kv_str(m.node_id, "node_id"),
        role=_kv_str(m.role, "role"),
        term=_kv_u64(m.term, "term"),
        leader_id=_kv_str(m.leader_id, "leader_id"),
        commit_index=_kv_u64(m.commit_index, "commit_index"),
        applied_index=_kv_u64(m.applied_index, "applied_index"),
        last_index=_kv_u64(m.last_index, "last_index"),
        members=_to_pb_members(m.members),
        quota_alarm=bool(m.quota_alarm),
        quota_used_bytes=_kv_u64(m.quota_used_bytes, "quota_used_bytes"),
    )


def _enc_member_add(m: MemberAddRequest) -> _pb.MemberAddRequest:
    return _pb.MemberAddRequest(
        header=_to_pb_request_header(m.header),
        node_id=_kv_str(m.node_id, "node_id"),
        address=_kv_str(m.address, "address"),
        learner=bool(m.learner),
    )


def _enc_member_change(m: MemberChangeRequest) -> _pb.MemberChangeRequest:
    return _pb.MemberChangeRequest(
        header=_to_pb_request_header(m.header),
        add=_to_pb_members(m.add),
        promote=[_kv_str(n, "promote") for n in m.promote],
        remove=[_kv_str(n, "remove") for n in m.remove],
    )


_KV_NESTED: dict[type[Any], tuple[int, ...]] = {
    StatusResponse: (1, 9),
    MemberListResponse: (1, 2),
    MemberChangeResponse: (1, 2),
    MemberChangeRequest: (1, 2),
}

_KV_ENCODERS: dict[type[Any], Callable[[Any], Any]] = {
    StatusRequest: lambda m: _pb.StatusRequest(header=_to_pb_request_header(m.header)),
    StatusResponse: _enc_status_response,
    MemberListRequest: lambda m: _pb.MemberListRequest(header=_to_pb_request_header(m.header)),
    MemberListResponse: lambda m: _pb.MemberListResponse(
        header=_to_pb_response_header(m.header), members=_to_pb_members(m.members)
    ),
    MemberAddRequest: _enc_member_add,
    MemberRemoveRequest: lambda m: _pb.MemberRemoveRequest(
        header=_to_pb_request_header(m.header), node_id=_kv_str(m.node_id, "node_id")
    ),
    MemberPromoteRequest: lambda m: _pb.MemberPromoteRequest(
        header=_to_pb_request_header(m.header), node_id=_kv_str(m.node_id, "node_id")
    ),
    MemberChangeRequest: _enc_member_change,
    MemberChangeResponse: lambda m: _pb.MemberChangeResponse(
        header=_to_pb_response_header(m.header), members=_to_pb_members(m.members)
    ),
    TransferLeaderRequest: lambda m: _pb.TransferLeaderRequest(
        header=_to_pb_request_header(m.header), target=_kv_str(m.target, "target")
    ),
    TransferLeaderResponse: lambda m: _pb.TransferLeaderResponse(
        header=_to_pb_response_header(m.header), leader_id=_kv_str(m.leader_id, "leader_id")
    ),
}

_KV_DECODERS: dict[type[Any], tuple[type[Any], Callable[[Any], Any]]] = {
    PutRequest: (_pb.PutRequest, lambda p: PutRequest(_from_pb_request_header(p.header), p.key, p.value)),
    PutResponse: (
        _pb.PutResponse,
        lambda p: PutResponse(_from_pb_response_header(p.header), p.previous if p.had_previous else None),
    ),
    GetRequest: (
        _pb.GetRequest,
        lambda p: GetRequest(
            _from_pb_request_header(p.header),
            p.key,
            enum_value(ReadConsistency, p.consistency, "read consistency"),
        ),
    ),
    GetResponse: (
        _pb.GetResponse,
        lambda p: GetResponse(_from_pb_response_header(p.header), p.value if p.found else None),
    ),
    DeleteRequest: (_pb.DeleteRequest, lambda p: DeleteRequest(_from_pb_request_header(p.header), p.key)),
    DeleteResponse: (
        _pb.DeleteResponse,
        lambda p: DeleteResponse(_from_pb_response_header(p.header), p.deleted),
    ),
    CompareAndSetRequest: (
        _pb.CompareAndSetRequest,
        lambda p: CompareAndSetRequest(
            _from_pb_request_header(p.header), p.key, None if p.expect_absent else p.expected, p.value
        ),
    ),
    CompareAndSetResponse: (
        _pb.CompareAndSetResponse,
        lambda p: CompareAndSetResponse(
            _from_pb_response_header(p.header), p.swapped, p.current if p.found else None
        ),
    ),
    StatusRequest: (_pb.StatusRequest, lambda p: StatusRequest(_from_pb_request_header(p.header))),
    StatusResponse: (
        _pb.StatusResponse,
        lambda p: StatusResponse(
            _from_pb_response_header(p.header),
            p.node_id,
            p.role,
            p.term,
            p.leader_id,
            p.commit_index,
            p.applied_index,
            p.last_index,
            _from_pb_members(p.members),
            p.quota_alarm,
            p.quota_used_bytes,
        ),
    ),
    MemberListRequest: (
        _pb.MemberListRequest,
        lambda p: MemberListRequest(_from_pb_request_header(p.header)),
    ),
    MemberListResponse: (
        _pb.MemberListResponse,
        lambda p: MemberListResponse(_from_pb_response_header(p.header), _from_pb_members(p.members)),
    ),
    MemberAddRequest: (
        _pb.MemberAddRequest,
        lambda p: MemberAddRequest(_from_pb_request_header(p.header), p.node_id, p.address, p.learner),
    ),
    MemberRemoveRequest: (
        _pb.MemberRemoveRequest,
        lambda p: MemberRemoveRequest(_from_pb_request_header(p.header), p.node_id),
    ),
    MemberPromoteRequest: (
        _pb.MemberPromoteRequest,
        lambda p: MemberPromoteRequest(_from_pb_request_header(p.header), p.node_id),
    ),
    MemberChangeRequest: (
        _pb.MemberChangeRequest,
        lambda p: MemberChangeRequest(
            _from_pb_request_header(p.header), _from_pb_members(p.add), tuple(p.promote), tuple(p.remove)
        ),
    ),
    MemberChangeResponse: (
        _pb.MemberChangeResponse,
        lambda p: MemberChangeResponse(_from_pb_response_header(p.header), _from_pb_members(p.members)),
    ),
    TransferLeaderRequest: (
        _pb.TransferLeaderRequest,
        lambda p: TransferLeaderRequest(_from_pb_request_header(p.header), p.target),
    ),
    TransferLeaderResponse: (
        _pb.TransferLeaderResponse,
        lambda p: TransferLeaderResponse(_from_pb_response_header(p.header), p.leader_id),
    ),
}
