"""The hand-written codec of the KV ``Stream`` call: batches round-trip, agree with the generated
(betterproto) classes in both directions, and malformed input is a ProtocolError."""

from __future__ import annotations

import contextlib
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phalanx_aio._proto.phalanx import v1 as pb
from phalanx_aio.errors import ProtocolError
from phalanx_aio.kv import messages as m
from phalanx_aio.kv import stream_codec
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


# --------------------------------------------------------------- the fast paths agree with the walker

MUTATIONS = st.lists(
    st.tuples(st.sampled_from(["set", "insert", "delete"]), st.integers(0, 10_000), st.integers(0, 255)),
    max_size=3,
)


def _mutate(data: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for op, at, byte in mutations:
        if not out:
            break
        i = at % len(out)
        if op == "set":
            out[i] = byte
        elif op == "insert":
            out.insert(i, byte)
        else:
            del out[i]
    return bytes(out)


def _outcome(decode: Any, data: bytes) -> Any:
    try:
        return decode(data)
    except ProtocolError:
        return ProtocolError


@settings(max_examples=300, deadline=None)
@given(REQ_ITEMS, MUTATIONS)
def test_fast_request_decoding_reads_what_the_field_walker_reads(
    items: list[Any], mutations: list[tuple[str, int, int]]
) -> None:
    """Valid or mutated, a batch decodes to the same requests (or the same refusal) with and
    without the fast path: it never accepts what the walker refuses, nor reads it otherwise."""
    data = _mutate(b"".join(encode_kv_stream_request(rid, t, r) for rid, t, r in items), mutations)
    fast = _outcome(decode_kv_stream_requests, data)
    with mock.patch.object(stream_codec, "_fast_request", lambda *_: None):
        walked = _outcome(decode_kv_stream_requests, data)
    assert fast == walked


@settings(max_examples=300, deadline=None)
@given(RESP_ITEMS, MUTATIONS)
def test_fast_response_decoding_reads_what_the_field_walker_reads(
    items: list[Any], mutations: list[tuple[str, int, int]]
) -> None:
    data = _mutate(b"".join(encode_kv_stream_response(rid, r) for rid, r in items), mutations)
    fast = _outcome(decode_kv_stream_responses, data)
    with mock.patch.object(stream_codec, "_fast_response", lambda *_: None):
        walked = _outcome(decode_kv_stream_responses, data)
    assert fast == walked


def test_the_fast_paths_are_taken_for_a_client_s_puts_gets_and_deletes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The common requests and answers do not fall back to the walker (else the fast paths
    would be dead code that the agreement tests above cannot tell from a working one)."""
    h = m.RequestHeader("c1", "client-1", 7, 6)
    requests = [
        m.PutRequest(h, b"k", b"v" * 200),
        m.GetRequest(h, b"k", m.ReadConsistency.LEASE),
        m.DeleteRequest(h, b"k"),
    ]
    rh = m.ResponseHeader(term=3, index=9)
    responses = [
        m.PutResponse(rh, b"old"),
        m.PutResponse(rh),
        m.GetResponse(rh, b"v"),
        m.DeleteResponse(rh, True),
    ]
    req_data = b"".join(encode_kv_stream_request(i + 1, 1000, r) for i, r in enumerate(requests))
    resp_data = b"".join(encode_kv_stream_response(i + 1, r) for i, r in enumerate(responses))

    def walker(*_: Any) -> Any:
        raise AssertionError("fell back to the field walker")

    monkeypatch.setattr(stream_codec, "_dec_stream_request_body", walker)
    monkeypatch.setattr(stream_codec, "_dec_stream_response_body", walker)
    assert [r for _, _, r in decode_kv_stream_requests(req_data)] == requests
    assert [r for _, r in decode_kv_stream_responses(resp_data)] == responses


@settings(max_examples=200, deadline=None)
@given(
    U64 | st.integers(-2, 2**64 + 1),
    st.integers(-1, 2**32 + 1) | st.just(0),
    REQUESTS
    | st.builds(
        m.PutRequest,
        REQ_HEADERS,
        st.binary(min_size=1, max_size=300) | st.just(bytearray(b"x")),
        st.binary(max_size=300),
    ),
)
def test_the_fast_put_encoder_writes_what_the_general_encoder_writes(
    rid: int, timeout_ms: int, request: Any
) -> None:
    codec, general = stream_codec.KVStreamCodec(), stream_codec.KVStreamCodec()

    def encoded(encode: Any) -> Any:
        try:
            return encode(rid, timeout_ms, request)
        except EncodeError as exc:
            return type(exc)

    assert encoded(codec.encode_request) == encoded(general._encode_request)


def test_every_single_byte_change_reads_the_same_with_and_without_the_fast_paths() -> None:
    """Exhaustive over positions, with the byte values where varints, tags and flags change
    meaning: a fast path that checks less than the walker shows up here."""
    h = m.RequestHeader("c1", "client-1", 300, 299)
    requests = b"".join(
        encode_kv_stream_request(i + 1, t, r)
        for i, (t, r) in enumerate(
            [
                (0, m.PutRequest(h, b"k", b"v")),
                (5, m.GetRequest(h, b"k", m.ReadConsistency.STALE)),
                (0, m.DeleteRequest(h, b"k")),
            ]
        )
    )
    rh = m.ResponseHeader(term=3, index=9)
    responses = b"".join(
        encode_kv_stream_response(i + 1, r)
        for i, r in enumerate(
            [m.PutResponse(rh, b"old"), m.GetResponse(rh, None), m.DeleteResponse(rh, True)]
        )
    )
    cases = [
        (requests, decode_kv_stream_requests, "_fast_request"),
        (responses, decode_kv_stream_responses, "_fast_response"),
    ]
    for data, decode, fast_name in cases:
        for i in range(len(data)):
            for value in {
                0,
                1,
                2,
                0x7F,
                0x80,
                0xFF,
                (data[i] + 1) % 256,
                (data[i] - 1) % 256,
                data[i] ^ 0x80,
            }:
                changed = data[:i] + bytes((value,)) + data[i + 1 :]
                fast = _outcome(decode, changed)
                with mock.patch.object(stream_codec, fast_name, lambda *_: None):
                    assert fast == _outcome(decode, changed), (fast_name, i, value)


@settings(max_examples=200, deadline=None)
@given(
    U64 | st.integers(-2, 2**64 + 1),
    RESPONSES
    | st.builds(m.PutResponse, RESP_HEADERS, st.none() | st.binary(max_size=300) | st.just(bytearray(b"x"))),
)
def test_the_fast_put_answer_encoder_writes_what_the_general_encoder_writes(rid: int, response: Any) -> None:
    codec, general = stream_codec.KVStreamCodec(), stream_codec.KVStreamCodec()

    def encoded(encode: Any) -> Any:
        try:
            return encode(rid, response)
        except EncodeError as exc:
            return type(exc)

    assert encoded(codec.encode_response) == encoded(general._encode_response)
