"""The KV service's ``Stream`` call on the wire: batches of requests and answers.

A batch message (``StreamRequestBatch``, ``StreamResponseBatch``) is a concatenation of framed
items, so a sender encodes each item once and joins them, and a receiver decodes the whole
batch at once. Every operation of a busy client travels here, so it is written and read by
hand, like the peer frames; each item's body is the unary message of
:mod:`phalanx_aio.kv.codec`, encoded by the same functions. :class:`KVStreamCodec` owns what
repeats between items.

Decoding never trusts its input and raises only :class:`~phalanx_aio.errors.ProtocolError`;
encoding raises only :class:`~phalanx_aio.kv.codec.EncodeError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Final

from phalanx_aio._protowire import (
    LEN,
    MAX_U32,
    MAX_U64,
    VARINT,
    bad,
    cannot,
    fields,
    put_len,
    read_varint,
    tag,
    uvarint,
    wrong_wire,
)
from phalanx_aio.errors import ProtocolError
from phalanx_aio.kv.codec import (
    MAX_MESSAGE_BYTES,
    RQ_ACKED_SEQUENCE,
    RQ_CLIENT_ID,
    RQ_CLUSTER_ID,
    RQ_SEQUENCE,
    enum_value,
    put_checked_uint,
    put_str,
    request_body,
    response_body,
    response_header,
)
from phalanx_aio.kv.messages import (
    CompareAndSetRequest,
    CompareAndSetResponse,
    DeleteRequest,
    DeleteResponse,
    GetRequest,
    GetResponse,
    KVRequest,
    KVResponse,
    PutRequest,
    PutResponse,
    ReadConsistency,
)
from phalanx_aio.kv.messages import ErrorCode as KVErrorCode
from phalanx_aio.kv.messages import RequestHeader as KVRequestHeader
from phalanx_aio.kv.messages import ResponseHeader as KVResponseHeader

__all__ = [
    "KV_STREAM_MAX_ITEMS",
    "KV_STREAM_METHOD",
    "KVStreamCodec",
    "decode_kv_stream_requests",
    "decode_kv_stream_responses",
    "encode_kv_stream_request",
    "encode_kv_stream_response",
]

KV_STREAM_METHOD = "/phalanx.v1.KV/Stream"
"""The gRPC path of the KV service's streaming call (StreamRequestBatch in, StreamResponseBatch out)."""

KV_STREAM_MAX_ITEMS = 1 << 16
"""The most requests or answers a decoder accepts in one Stream message."""

# StreamRequest, StreamResponse, and the batches of them
_ITEM_ID: Final = tag(1, VARINT)
_ITEM_TIMEOUT_MS: Final = tag(2, VARINT)
_BATCH_ITEM: Final = tag(1, LEN)
_PUT_ITEM: Final = tag(3, LEN)
_BODY_HEADER: Final = tag(1, LEN)  # the header of every request and response body
_BODY_KEY: Final = tag(2, LEN)
_PUT_VALUE: Final = tag(3, LEN)
_PUT_ANSWER: Final = tag(2, LEN)
_HAD_PREVIOUS_TRUE: Final = tag(2, VARINT) + b"\x01" + tag(3, LEN)  # had_previous, then previous
_STREAM_REQUEST_TAGS: Final[dict[type[Any], bytes]] = {
    PutRequest: tag(3, LEN),
    GetRequest: tag(4, LEN),
    DeleteRequest: tag(5, LEN),
    CompareAndSetRequest: tag(6, LEN),
}
_STREAM_RESPONSE_TAGS: Final[dict[type[Any], bytes]] = {
    PutResponse: tag(2, LEN),
    GetResponse: tag(3, LEN),
    DeleteResponse: tag(4, LEN),
    CompareAndSetResponse: tag(5, LEN),
}


# ---------------------------------------------------------------------------------------------
# Hand-written decoding of the Stream items


def _r_str(data: bytes, wire: int, a: int, b: int, what: str) -> str:
    if wire != LEN:
        wrong_wire("KV stream", what, wire)
    try:
        return data[a:b].decode("utf-8")
    except UnicodeDecodeError:
        bad(f"KV stream: {what} is not valid UTF-8")


def _r_bytes(data: bytes, wire: int, a: int, b: int, what: str) -> bytes:
    if wire != LEN:
        wrong_wire("KV stream", what, wire)
    return data[a:b]


def _r_uint(wire: int, value: int, what: str) -> int:
    if wire != VARINT:
        wrong_wire("KV stream", what, wire)
    return value


def _dec_request_header(data: bytes, a: int, b: int) -> KVRequestHeader:
    cluster = client = ""
    seq = acked = 0
    for number, wire, x, y in fields(data, a, b, "RequestHeader"):
        if number == 1:
            cluster = _r_str(data, wire, x, y, "cluster_id")
        elif number == 2:
            client = _r_str(data, wire, x, y, "client_id")
        elif number == 3:
            seq = _r_uint(wire, x, "sequence")
        elif number == 4:
            acked = _r_uint(wire, x, "acked_sequence")
    return KVRequestHeader(cluster, client, seq, acked)


def _dec_response_header(data: bytes, a: int, b: int) -> KVResponseHeader:
    error = KVErrorCode.OK
    message = hint = address = ""
    term = index = 0
    for number, wire, x, y in fields(data, a, b, "ResponseHeader"):
        if number == 1:
            error = enum_value(KVErrorCode, _r_uint(wire, x, "error"), "error code")
        elif number == 2:
            message = _r_str(data, wire, x, y, "message")
        elif number == 3:
            hint = _r_str(data, wire, x, y, "leader_hint")
        elif number == 4:
            address = _r_str(data, wire, x, y, "leader_address")
        elif number == 5:
            term = _r_uint(wire, x, "term")
        elif number == 6:
            index = _r_uint(wire, x, "index")
    return KVResponseHeader(error, message, hint, address, term, index)


def _dec_stream_request_body(data: bytes, a: int, b: int, kind: int) -> KVRequest:
    header = KVRequestHeader("")
    key = value = expected = b""
    absent = False
    consistency = ReadConsistency.LINEARIZABLE
    for number, wire, x, y in fields(data, a, b, "stream request"):
        if number == 1:
            if wire != LEN:
                wrong_wire("KV stream", "header", wire)
            header = _dec_request_header(data, x, y)
        elif number == 2:
            key = _r_bytes(data, wire, x, y, "key")
        elif kind == 3 and number == 3:  # PutRequest.value
            value = _r_bytes(data, wire, x, y, "value")
        elif kind == 4 and number == 3:  # GetRequest.consistency
            consistency = enum_value(ReadConsistency, _r_uint(wire, x, "consistency"), "read consistency")
        elif kind == 6 and number == 3:  # CompareAndSetRequest.expected
            expected = _r_bytes(data, wire, x, y, "expected")
        elif kind == 6 and number == 4:
            absent = _r_uint(wire, x, "expect_absent") != 0
        elif kind == 6 and number == 5:
            value = _r_bytes(data, wire, x, y, "value")
    if kind == 3:
        return PutRequest(header, key, value)
    if kind == 4:
        return GetRequest(header, key, consistency)
    if kind == 5:
        return DeleteRequest(header, key)
    return CompareAndSetRequest(header, key, None if absent else expected, value)


def _dec_stream_response_body(
    data: bytes, a: int, b: int, kind: int, header_of: Callable[[bytes, int, int], KVResponseHeader]
) -> KVResponse:
    header = KVResponseHeader()
    flag = swapped = False
    payload = b""
    for number, wire, x, y in fields(data, a, b, "stream response"):
        if number == 1:
            if wire != LEN:
                wrong_wire("KV stream", "header", wire)
            header = header_of(data, x, y)
        elif kind == 5:  # CompareAndSetResponse: swapped, found, current
            if number == 2:
                swapped = _r_uint(wire, x, "swapped") != 0
            elif number == 3:
                flag = _r_uint(wire, x, "found") != 0
            elif number == 4:
                payload = _r_bytes(data, wire, x, y, "current")
        elif number == 2:  # had_previous, found, deleted
            flag = _r_uint(wire, x, "flag") != 0
        elif number == 3 and kind != 4:  # previous, value
            payload = _r_bytes(data, wire, x, y, "value")
    if kind == 2:
        return PutResponse(header, payload if flag else None)
    if kind == 3:
        return GetResponse(header, payload if flag else None)
    if kind == 4:
        return DeleteResponse(header, flag)
    return CompareAndSetResponse(header, swapped, payload if flag else None)


# ---------------------------------------------------------------------------------------------
# Fast paths: the layout this library's encoders produce, read without the field walker.
# Each returns None at the first byte that differs from that layout (another encoder's field
# order, an unknown field, a malformed input); the caller then decodes the item with the
# walker above, which accepts or refuses it. So a fast path never accepts what the walker
# refuses, and never reads an accepted item differently (tests/kv/test_stream_codec.py checks
# both against mutated inputs).

_REQUEST_KINDS: Final = {0x1A: 3, 0x22: 4, 0x2A: 5}  # Put, Get, Delete (CAS: the walker)
_RESPONSE_KINDS: Final = {0x12: 2, 0x1A: 3, 0x22: 4}  # Put, Get, Delete (CAS: the walker)
_CONSISTENCIES: Final = {int(c): c for c in ReadConsistency}


def _fast_len(data: bytes, tag_byte: int, p: int, end: int) -> tuple[int, int] | None:
    """If a field ``tag_byte`` (length-delimited) starts at ``p``: its payload's span."""
    if p + 1 >= end or data[p] != tag_byte:
        return None
    n = data[p + 1]
    if n < 0x80:
        p += 2
    else:
        n, p = read_varint(data, p + 1, end)
    stop = p + n
    return None if stop > end else (p, stop)


def _fast_body(data: bytes, p: int, b: int, kinds: dict[int, int]) -> tuple[int, tuple[int, int]] | None:
    """At ``p``, the item's message (a tag in ``kinds``) running to ``b``: its kind and the span
    of its header, the message's first field."""
    kind = kinds.get(data[p]) if p < b else None
    if kind is None:
        return None
    span = _fast_len(data, data[p], p, b)
    if span is None or span[1] != b:
        return None
    header = _fast_len(data, 0x0A, span[0], b)
    return None if header is None else (kind, header)


class _FastIds:
    """The last (cluster id, client id) pair read, by its bytes: a client's requests repeat it."""

    __slots__ = ("client", "cluster", "raw")

    def __init__(self) -> None:
        self.raw = b""
        self.cluster = ""
        self.client = ""


def _fast_request_header(data: bytes, p: int, end: int, ids: _FastIds) -> KVRequestHeader | None:
    start = p
    if p < end and data[p] == 0x0A:
        span = _fast_len(data, 0x0A, p, end)
        if span is None:
            return None
        p = span[1]
    if p < end and data[p] == 0x12:
        span = _fast_len(data, 0x12, p, end)
        if span is None:
            return None
        p = span[1]
    raw = data[start:p]
    if raw != ids.raw:
        cluster = client = ""
        q = start
        try:
            if q < p and data[q] == 0x0A:
                x, q = read_varint(data, q + 1, p)
                cluster = data[q : q + x].decode("utf-8")
                q += x
            if q < p:
                x, q = read_varint(data, q + 1, p)
                client = data[q : q + x].decode("utf-8")
        except UnicodeDecodeError:
            return None
        ids.raw, ids.cluster, ids.client = raw, cluster, client
    seq = acked = 0
    if p < end and data[p] == 0x18:
        seq, p = read_varint(data, p + 1, end)
    if p < end and data[p] == 0x20:
        acked, p = read_varint(data, p + 1, end)
    if p != end:
        return None
    return KVRequestHeader(ids.cluster, ids.client, seq, acked)


def _fast_request(data: bytes, a: int, b: int, ids: _FastIds) -> tuple[int, int, KVRequest] | None:
    """One ``StreamRequest`` item (a Put, Get or Delete) in ``data[a:b]``, or None."""
    if a >= b or data[a] != 0x08:
        return None
    rid, p = read_varint(data, a + 1, b)
    timeout_ms = 0
    if p < b and data[p] == 0x10:
        timeout_ms, p = read_varint(data, p + 1, b)
        if timeout_ms > MAX_U32:
            return None
    body = _fast_body(data, p, b, _REQUEST_KINDS)
    if body is None:
        return None
    kind, (x, y) = body
    header = _fast_request_header(data, x, y, ids)
    if header is None:
        return None
    span = _fast_len(data, 0x12, y, b)
    if span is None:
        return None
    key = data[span[0] : span[1]]
    p = span[1]
    request: KVRequest
    if kind == 3:
        value = b""
        if p < b:
            span = _fast_len(data, 0x1A, p, b)
            if span is None or span[1] != b:
                return None
            value = data[span[0] : b]
        request = PutRequest(header, key, value)
    elif kind == 4:
        consistency = ReadConsistency.LINEARIZABLE
        if p < b:
            if data[p] != 0x18:
                return None
            level, p = read_varint(data, p + 1, b)
            found = _CONSISTENCIES.get(level)
            if found is None or p != b:
                return None
            consistency = found
        request = GetRequest(header, key, consistency)
    else:
        if p != b:
            return None
        request = DeleteRequest(header, key)
    return rid, timeout_ms, request


def _fast_response(
    data: bytes, a: int, b: int, header_of: Callable[[bytes, int, int], KVResponseHeader]
) -> tuple[int, KVResponse] | None:
    """One ``StreamResponse`` item (to a Put, Get or Delete) in ``data[a:b]``, or None."""
    if a >= b or data[a] != 0x08:
        return None
    rid, p = read_varint(data, a + 1, b)
    body = _fast_body(data, p, b, _RESPONSE_KINDS)
    if body is None:
        return None
    kind, (x, y) = body
    header = header_of(data, x, y)
    p = y
    flag = False
    if p < b and data[p] == 0x10:
        value, p = read_varint(data, p + 1, b)
        flag = value != 0
    if kind == 4:
        return (rid, DeleteResponse(header, flag)) if p == b else None
    payload = b""
    if p < b:
        span = _fast_len(data, 0x1A, p, b)
        if span is None or span[1] != b:
            return None
        payload = data[span[0] : b]
    found = payload if flag else None
    return rid, (PutResponse(header, found) if kind == 2 else GetResponse(header, found))


# ---------------------------------------------------------------------------------------------
# The Stream call


def _item(key: bytes, body: bytes | bytearray) -> bytes:
    return b"".join((key, uvarint(len(body)), body))


def _stream_items(data: bytes, max_bytes: int, what: str) -> Iterator[tuple[int, int]]:
    """The spans of the items (field 1) of a stream batch message."""
    if len(data) > max_bytes:
        bad(f"{what} of {len(data)} bytes, over the limit of {max_bytes}")
    for number, wire, a, b in fields(data, 0, len(data), what, KV_STREAM_MAX_ITEMS):
        if number == 1:
            if wire != LEN:
                wrong_wire(what, "items", wire)
            yield a, b


class KVStreamCodec:
    """Encodes and decodes the items of the ``Stream`` call for one client or one service.

    It remembers what repeats from one item to the next: a client's requests share their
    cluster and session ids, and the answers of one batch usually share one header object (and
    so its bytes). The memory is this object's, so two clients or services in one process
    never share it. One task uses it at a time.
    """

    __slots__ = ("_fast_ids", "_request_ids", "_response_header_decoded", "_response_header_encoded")

    def __init__(self) -> None:
        self._fast_ids = _FastIds()
        self._request_ids: tuple[object, object, bytes] = (None, None, b"")
        self._response_header_encoded: tuple[object, bytes] = (None, b"")
        self._response_header_decoded: tuple[bytes | None, KVResponseHeader] = (None, KVResponseHeader())

    def _request_header(self, h: object) -> bytes:
        if not isinstance(h, KVRequestHeader):
            cannot(f"header must be a RequestHeader, not {type(h).__name__}")
        cluster, client, ids = self._request_ids
        if h.cluster_id != cluster or h.client_id != client or type(h.client_id) is not str:
            first = bytearray()
            put_str(first, RQ_CLUSTER_ID, h.cluster_id, "cluster_id")
            put_str(first, RQ_CLIENT_ID, h.client_id, "client_id")
            ids = bytes(first)
            self._request_ids = (h.cluster_id, h.client_id, ids)
        out = bytearray(ids)
        put_checked_uint(out, RQ_SEQUENCE, h.sequence, "sequence")
        put_checked_uint(out, RQ_ACKED_SEQUENCE, h.acked_sequence, "acked_sequence")
        return bytes(out)

    def _response_header(self, h: object) -> bytes:
        last, raw = self._response_header_encoded
        if h is last:  # ResponseHeader is frozen: the same object means the same bytes
            return raw
        raw = response_header(h)
        self._response_header_encoded = (h, raw)
        return raw

    def _decode_response_header(self, data: bytes, a: int, b: int) -> KVResponseHeader:
        raw = data[a:b]
        last, header = self._response_header_decoded
        if raw == last:
            return header
        header = _dec_response_header(data, a, b)
        self._response_header_decoded = (raw, header)
        return header

    def encode_request(self, request_id: int, timeout_ms: int, request: KVRequest) -> bytes:
        """One framed item of a ``StreamRequestBatch``: ``request`` (a Put, Get, Delete or
        CompareAndSet request) with the id its answer will carry and the time the client waits
        for it (milliseconds, 0: the node's default). A batch is the concatenation of such
        items. :class:`EncodeError` if a field is out of range or of the wrong type."""
        if type(request) is PutRequest and type(request_id) is int and type(timeout_ms) is int:
            k, v = request.key, request.value
            if type(k) is bytes and type(v) is bytes and k and v and 0 < request_id <= MAX_U64:
                if 0 < timeout_ms <= MAX_U32:
                    head = b"".join((_ITEM_ID, uvarint(request_id), _ITEM_TIMEOUT_MS, uvarint(timeout_ms)))
                elif timeout_ms == 0:
                    head = _ITEM_ID + uvarint(request_id)
                else:
                    head = b""
                if head:  # the layout the general path below produces, joined at once
                    h = self._request_header(request.header)
                    body = b"".join(
                        (
                            _BODY_HEADER,
                            uvarint(len(h)),
                            h,
                            _BODY_KEY,
                            uvarint(len(k)),
                            k,
                            _PUT_VALUE,
                            uvarint(len(v)),
                            v,
                        )
                    )
                    item = b"".join((head, _PUT_ITEM, uvarint(len(body)), body))
                    return b"".join((_BATCH_ITEM, uvarint(len(item)), item))
        return self._encode_request(request_id, timeout_ms, request)

    def _encode_request(self, request_id: int, timeout_ms: int, request: KVRequest) -> bytes:
        key = _STREAM_REQUEST_TAGS.get(type(request))
        if key is None:
            cannot(f"{type(request).__name__} cannot travel on the Stream call")
        out = bytearray()
        put_checked_uint(out, _ITEM_ID, request_id, "request id")
        put_checked_uint(out, _ITEM_TIMEOUT_MS, timeout_ms, "timeout_ms", MAX_U32)
        put_len(out, key, request_body(request, self._request_header(getattr(request, "header", None))))
        return _item(_BATCH_ITEM, out)

    def encode_response(self, request_id: int, response: KVResponse) -> bytes:
        """One framed item of a ``StreamResponseBatch``: the answer to the request
        ``request_id`` (a Put, Get, Delete or CompareAndSet response). A batch is the
        concatenation of such items. :class:`EncodeError` if a field is out of range or of the
        wrong type."""
        if type(response) is PutResponse and type(request_id) is int and 0 < request_id <= MAX_U64:
            previous = response.previous
            if previous is None or (type(previous) is bytes and previous):
                # the layout the general path below produces, joined at once
                h = self._response_header(response.header)
                if previous is None:
                    body = b"".join((_BODY_HEADER, uvarint(len(h)), h))
                else:
                    body = b"".join(
                        (
                            _BODY_HEADER,
                            uvarint(len(h)),
                            h,
                            _HAD_PREVIOUS_TRUE,
                            uvarint(len(previous)),
                            previous,
                        )
                    )
                item = b"".join((_ITEM_ID, uvarint(request_id), _PUT_ANSWER, uvarint(len(body)), body))
                return b"".join((_BATCH_ITEM, uvarint(len(item)), item))
        return self._encode_response(request_id, response)

    def _encode_response(self, request_id: int, response: KVResponse) -> bytes:
        key = _STREAM_RESPONSE_TAGS.get(type(response))
        if key is None:
            cannot(f"{type(response).__name__} cannot travel on the Stream call")
        out = bytearray()
        put_checked_uint(out, _ITEM_ID, request_id, "request id")
        put_len(out, key, response_body(response, self._response_header(getattr(response, "header", None))))
        return _item(_BATCH_ITEM, out)

    def decode_requests(
        self, data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES
    ) -> list[tuple[int, int, KVRequest]]:
        """The items of a ``StreamRequestBatch``: ``(request id, timeout_ms, request)`` each.
        :class:`ProtocolError` if any part is malformed, an item holds no request, or the
        message is over ``max_bytes`` or holds more than :data:`KV_STREAM_MAX_ITEMS` items."""
        data = bytes(data)
        out: list[tuple[int, int, KVRequest]] = []
        ids = self._fast_ids
        for a, b in _stream_items(data, max_bytes, "StreamRequestBatch"):
            try:
                fast = _fast_request(data, a, b, ids)
            except ProtocolError:
                fast = None  # the walker says what is wrong
            if fast is not None:
                out.append(fast)
                continue
            rid = timeout_ms = kind = 0
            span = (0, 0)
            for number, wire, x, y in fields(data, a, b, "StreamRequest"):
                if number == 1:
                    rid = _r_uint(wire, x, "id")
                elif number == 2:
                    timeout_ms = _r_uint(wire, x, "timeout_ms")
                    if timeout_ms > MAX_U32:
                        bad(f"KV stream: timeout_ms {timeout_ms} is over 2**32")
                elif 3 <= number <= 6:
                    if wire != LEN:
                        wrong_wire("StreamRequest", "request", wire)
                    kind, span = number, (x, y)
            if not kind:
                bad(f"StreamRequest {rid} holds no request")
            out.append((rid, timeout_ms, _dec_stream_request_body(data, span[0], span[1], kind)))
        return out

    def decode_responses(
        self, data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES
    ) -> list[tuple[int, KVResponse]]:
        """The items of a ``StreamResponseBatch``: ``(request id, response)`` each.
        :class:`ProtocolError` if any part is malformed, an item holds no response, or the
        message is over ``max_bytes`` or holds more than :data:`KV_STREAM_MAX_ITEMS` items."""
        data = bytes(data)
        out: list[tuple[int, KVResponse]] = []
        header_of = self._decode_response_header
        for a, b in _stream_items(data, max_bytes, "StreamResponseBatch"):
            try:
                fast = _fast_response(data, a, b, header_of)
            except ProtocolError:
                fast = None  # the walker says what is wrong
            if fast is not None:
                out.append(fast)
                continue
            rid = kind = 0
            span = (0, 0)
            for number, wire, x, y in fields(data, a, b, "StreamResponse"):
                if number == 1:
                    rid = _r_uint(wire, x, "id")
                elif 2 <= number <= 5:
                    if wire != LEN:
                        wrong_wire("StreamResponse", "response", wire)
                    kind, span = number, (x, y)
            if not kind:
                bad(f"StreamResponse {rid} holds no response")
            out.append((rid, _dec_stream_response_body(data, span[0], span[1], kind, header_of)))
        return out


def encode_kv_stream_request(request_id: int, timeout_ms: int, request: KVRequest) -> bytes:
    """:meth:`KVStreamCodec.encode_request` with a fresh codec (nothing remembered)."""
    return KVStreamCodec().encode_request(request_id, timeout_ms, request)


def encode_kv_stream_response(request_id: int, response: KVResponse) -> bytes:
    """:meth:`KVStreamCodec.encode_response` with a fresh codec (nothing remembered)."""
    return KVStreamCodec().encode_response(request_id, response)


def decode_kv_stream_requests(
    data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES
) -> list[tuple[int, int, KVRequest]]:
    """:meth:`KVStreamCodec.decode_requests` with a fresh codec."""
    return KVStreamCodec().decode_requests(data, max_bytes=max_bytes)


def decode_kv_stream_responses(
    data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES
) -> list[tuple[int, KVResponse]]:
    """:meth:`KVStreamCodec.decode_responses` with a fresh codec."""
    return KVStreamCodec().decode_responses(data, max_bytes=max_bytes)
