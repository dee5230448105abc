"""The hand-written codec of the KV ``Stream`` call: batches round-trip, agree with the generated
(betterproto) classes in both directions, and malformed input is a ProtocolError."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phalanx_aio._proto.phalanx import v1 as pb
from phalanx_aio.errors import ProtocolError
from phalanx_aio.kv import messages as m
from phalanx_aio.kv.codec import EncodeError, decode_kv_message, encode_kv_message
from phalanx_aio.kv.stream_codec import (
    KV_STREAM_MAX_ITEMS,
    decode_kv_stream_requests,
    decode_kv_stream_responses,
    encode_kv_stream_request,
    encode_kv_stream_response,
)

U64 = st.integers(0, 2**64 - 1)
TEXT = st.text(max_size=12)
DATA = st.binary(max_size=24)
REQ_HEADERS = st.builds(m.RequestHeader, TEXT, TEXT, U64, U64)
RESP_HEADERS = st.builds(m.ResponseHeader, st.sampled_from(m.ErrorCode), TEXT, TEXT, TEXT, U64, U64)
REQUESTS = st.one_of(
    st.builds(m.PutRequest, REQ_HEADERS, DATA, DATA),
    st.builds(m.GetRequest, REQ_HEADERS, DATA, st.sampled_from(m.ReadConsistency)),
    st.builds(m.DeleteRequest, REQ_HEADERS, DATA),
    st.builds(m.CompareAndSetRequest, REQ_HEADERS, DATA, st.none() | DATA, DATA),
)
RESPONSES = st.one_of(
    st.builds(m.PutResponse, RESP_HEADERS, st.none() | DATA),
    st.builds(m.GetResponse, RESP_HEADERS, st.none() | DATA),
    st.builds(m.DeleteResponse, RESP_HEADERS, st.booleans()),
    st.builds(m.CompareAndSetResponse, RESP_HEADERS, st.booleans(), st.none() | DATA),
)
REQ_ITEMS = st.lists(st.tuples(U64, st.integers(0, 2**32 - 1), REQUESTS), max_size=5)
RESP_ITEMS = st.lists(st.tuples(U64, RESPONSES), max_size=5)
_ONEOF = {
    m.PutRequest: "put",
    m.GetRequest: "get",
    m.DeleteRequest: "delete",
    m.CompareAndSetRequest: "compare_and_set",
    m.PutResponse: "put",
    m.GetResponse: "get",
    m.DeleteResponse: "delete",
    m.CompareAndSetResponse: "compare_and_set",
}


@settings(max_examples=50, deadline=None)
@given(REQ_ITEMS)
def test_request_batches_round_trip_and_agree_with_the_generated_classes(items: list[Any]) -> None:
    data = b"".join(encode_kv_stream_request(rid, t, r) for rid, t, r in items)
    assert decode_kv_stream_requests(data) == items
    # The generated classes read our batch, and each request is the unary method's message.
    parsed = pb.StreamRequestBatch().parse(data)
    assert len(parsed.requests) == len(items)
    theirs = []
    for (rid, timeout_ms, request), p in zip(items, parsed.requests, strict=True):
        assert (p.id, p.timeout_ms) == (rid, timeout_ms)
        inner = getattr(p, _ONEOF[type(request)])
        assert decode_kv_message(type(request), bytes(inner)) == request
        kwargs: dict[str, Any] = {"id": rid, "timeout_ms": timeout_ms}
        kwargs[_ONEOF[type(request)]] = type(inner)().parse(encode_kv_message(request))
        theirs.append(pb.StreamRequest(**kwargs))
    # And we read theirs.
    assert decode_kv_stream_requests(bytes(pb.StreamRequestBatch(requests=theirs))) == items


@settings(max_examples=50, deadline=None)
@given(RESP_ITEMS)
def test_response_batches_round_trip_and_agree_with_the_generated_classes(items: list[Any]) -> None:
    data = b"".join(encode_kv_stream_response(rid, r) for rid, r in items)
    assert decode_kv_stream_responses(data) == items
    parsed = pb.StreamResponseBatch().parse(data)
    theirs = []
    for (rid, response), p in zip(items, parsed.responses, strict=True):
        assert p.id == rid
        inner = getattr(p, _ONEOF[type(response)])
        assert decode_kv_message(type(response), bytes(inner)) == response
        kwargs: dict[str, Any] = {"id": rid}
        kwargs[_ONEOF[type(response)]] = type(inner)().parse(encode_kv_message(response))
        theirs.append(pb.StreamResponse(**kwargs))
    assert decode_kv_stream_responses(bytes(pb.StreamResponseBatch(responses=theirs))) == items


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64))
def test_garbage_is_a_protocol_error_or_a_batch(data: bytes) -> None:
    for decode in (decode_kv_stream_requests, decode_kv_stream_responses):
        with contextlib.suppress(ProtocolError):
            decode(data)


def test_malformed_batches_are_refused() -> None:
    put = encode_kv_stream_request(1, 0, m.PutRequest(m.RequestHeader("c"), b"k", b"v"))
    with pytest.raises(ProtocolError, match="over the limit"):
        decode_kv_stream_requests(put * 10, max_bytes=len(put) * 9)
    with pytest.raises(ProtocolError, match="holds no request"):
        decode_kv_stream_requests(bytes(pb.StreamRequestBatch(requests=[pb.StreamRequest(id=5)])))
    with pytest.raises(ProtocolError, match="holds no response"):
        decode_kv_stream_responses(bytes(pb.StreamResponseBatch(responses=[pb.StreamResponse(id=5)])))
    with pytest.raises(ProtocolError):
        decode_kv_stream_requests(put[:-1])  # truncated
    with pytest.raises(ProtocolError, match="error code"):
        item = b"\x08\x01\x1a\x04\x0a\x02\x08\x63"  # id 1, get: header.error = 99
        decode_kv_stream_responses(b"\x0a\x08" + item)
    with pytest.raises(ProtocolError, match="UTF-8"):
        request = m.GetRequest(m.RequestHeader("x"), b"k")
        decode_kv_stream_requests(encode_kv_stream_request(1, 0, request).replace(b"\x01x", b"\x01\xff"))
    with pytest.raises(ProtocolError, match="more than"):
        decode_kv_stream_requests(b"\x10\x00" * (KV_STREAM_MAX_ITEMS + 1))  # unknown fields count too


def test_encoding_refuses_bad_values() -> None:
    header = m.RequestHeader("c")
    with pytest.raises(EncodeError):
        encode_kv_stream_request(1, 0, m.StatusRequest(header))
    with pytest.raises(EncodeError):
        encode_kv_stream_request(-1, 0, m.PutRequest(header, b"k", b"v"))
    with pytest.raises(EncodeError):
        encode_kv_stream_request(1, 2**32, m.PutRequest(header, b"k", b"v"))
    with pytest.raises(EncodeError):
        encode_kv_stream_request(1, 0, m.PutRequest(header, "k", b"v"))  # type: ignore[arg-type]
    with pytest.raises(EncodeError):
        encode_kv_stream_request(1, 0, m.PutRequest(m.RequestHeader("\udc80"), b"k", b"v"))
    with pytest.raises(EncodeError):
        encode_kv_stream_response(1, m.StatusResponse())
    with pytest.raises(EncodeError):
        encode_kv_stream_response(1, m.GetResponse(m.ResponseHeader(error=3), None))  # type: ignore[arg-type]
