"""The KV service's wire codec: every message round-trips, agrees with the generated classes, and
malformed input is a ProtocolError."""

from __future__ import annotations

from typing import Any

import pytest

from phalanx_aio._proto.phalanx import v1 as pb
from phalanx_aio.errors import LocalError, ProtocolError
from phalanx_aio.kv import messages as m
from phalanx_aio.kv.codec import EncodeError, decode_kv_message, encode_kv_message
from phalanx_aio.kv.stream_codec import KV_STREAM_METHOD
from tests.proto_services import proto_methods

RQ = m.RequestHeader("c1", "client-7", 2**64 - 1, 41)
RS = m.ResponseHeader(m.ErrorCode.NOT_LEADER, "not me", "n2", "127.0.0.1:7002", 9, 2**63)
MEMBERS = (m.Member("n1", "[::1]:7001", match_index=1 << 40), m.Member("n4", "h:1", learner=True))

SAMPLES: list[Any] = [
    m.PutRequest(RQ, b"k", b"v"),
    m.PutRequest(RQ, b"\x00", b""),
    m.PutResponse(RS, None),
    m.PutResponse(RS, b""),  # an empty previous value is not "absent"
    m.PutResponse(RS, b"old"),
    m.GetRequest(RQ, b"k", m.ReadConsistency.STALE),
    m.GetRequest(m.RequestHeader("x"), b"k"),
    m.GetResponse(RS, None),
    m.GetResponse(m.ResponseHeader(), b""),
    m.DeleteRequest(RQ, b"k"),
    m.DeleteResponse(RS, True),
    m.CompareAndSetRequest(RQ, b"k", None, b"v"),
    m.CompareAndSetRequest(RQ, b"k", b"", b"v"),
    m.CompareAndSetResponse(RS, False, b"cur"),
    m.CompareAndSetResponse(RS, True, None),
    m.StatusRequest(RQ),
    m.StatusResponse(RS, "n1", "leader", 3, "n1", 10, 9, 11, MEMBERS),
    m.MemberListRequest(RQ),
    m.MemberListResponse(RS, MEMBERS),
    m.MemberAddRequest(RQ, "n4", "h:1", learner=False),
    m.MemberRemoveRequest(RQ, "n4"),
    m.MemberPromoteRequest(RQ, "n4"),
    m.MemberChangeRequest(RQ, (m.Member("n4", "h:4", True), m.Member("n5", "h:5")), ("n6",), ("n1", "n2")),
    m.MemberChangeRequest(RQ),
    m.MemberChangeResponse(RS, ()),
    m.TransferLeaderRequest(RQ, ""),
    m.TransferLeaderResponse(m.ResponseHeader(m.ErrorCode.INTERNAL), "n3"),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda x: type(x).__name__)
def test_round_trip(message: Any) -> None:
    data = encode_kv_message(message)
    assert decode_kv_message(type(message), data) == message


def test_every_method_type_is_covered_and_paths_match_the_proto() -> None:
    covered = {type(x) for x in SAMPLES}
    for req, resp in m.KV_METHODS.values():
        assert req in covered and resp in covered
    generated = set(proto_methods("KV"))
    assert set(m.KV_METHODS) | {KV_STREAM_METHOD} == generated


def test_agrees_with_the_generated_classes() -> None:
    data = encode_kv_message(m.CompareAndSetRequest(RQ, b"k", None, b"v"))
    parsed = pb.CompareAndSetRequest().parse(data)
    assert (
        parsed.expect_absent and parsed.header.client_id == "client-7" and parsed.header.acked_sequence == 41
    )
    theirs = pb.PutResponse(
        header=pb.ResponseHeader(error=pb.ErrorCode.SESSION_EXPIRED, leader_hint="n2"),
        had_previous=True,
        previous=b"",
    )
    ours = decode_kv_message(m.PutResponse, bytes(theirs))
    assert ours.previous == b"" and ours.header.error is m.ErrorCode.SESSION_EXPIRED
    assert ours.header.leader_hint == "n2"


def test_unknown_enum_values_and_garbage_are_protocol_errors() -> None:
    with pytest.raises(ProtocolError, match="consistency"):
        decode_kv_message(m.GetRequest, b"\x18\x09")  # consistency = 9
    with pytest.raises(ProtocolError, match="error code"):
        decode_kv_message(m.GetResponse, b"\x0a\x02\x08\x63")  # header.error = 99
    bad_utf8 = bytes(pb.StatusRequest(header=pb.RequestHeader(cluster_id="x"))).replace(b"x", b"\xff")
    with pytest.raises(ProtocolError):
        decode_kv_message(m.StatusRequest, bad_utf8)
    with pytest.raises(ProtocolError):
        decode_kv_message(m.PutRequest, b"\x12\x05ab")  # key longer than the message
    with pytest.raises(ProtocolError, match="over the limit"):
        decode_kv_message(m.PutRequest, b"\x00" * 100, max_bytes=10)


def test_encoding_refuses_bad_values() -> None:
    with pytest.raises(EncodeError):
        encode_kv_message(m.PutRequest(RQ, "text", b"v"))  # type: ignore[arg-type]
    with pytest.raises(EncodeError):
        encode_kv_message(m.PutRequest(m.RequestHeader("c", "id", -1), b"k", b"v"))
    with pytest.raises(EncodeError):
        encode_kv_message(m.StatusResponse(RS, members=("n1",)))  # type: ignore[arg-type]
    with pytest.raises(EncodeError):
        encode_kv_message(object())  # type: ignore[arg-type]
    with pytest.raises(LocalError):
        decode_kv_message(dict, b"")
