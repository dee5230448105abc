"""Protobuf wire primitives shared by the hand-written codecs (private).

The peer codec (:mod:`phalanx_aio.transport.codec`, :mod:`phalanx_aio.transport.chunks`), the
KV codec (:mod:`phalanx_aio.kv.codec`) and the gRPC health answer write and read standard
protobuf by hand with these: varints, field tags as named constants built by :func:`tag`, a
field walker that refuses what the schema never uses, and the checks every encoder applies.

One style throughout: a message is built in a ``bytearray`` by appending a tag constant, then
the value (:func:`put_len`, :func:`put_uint`, or the same three appends written inline on the
hottest paths). Decoders walk fields with :func:`fields` and raise only
:class:`~phalanx_aio.errors.ProtocolError`; encoders raise only :class:`EncodeError`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final, NoReturn

from phalanx_aio.errors import LocalError, ProtocolError

__all__ = [
    "I32",
    "I64",
    "LEN",
    "MAX_FIELDS",
    "MAX_INT",
    "MAX_U32",
    "MAX_U64",
    "SMALL_VARINTS",
    "VARINT",
    "EncodeError",
    "bad",
    "cannot",
    "check_bytes",
    "check_int",
    "decode_id",
    "encode_id",
    "fields",
    "put_len",
    "put_uint",
    "read_varint",
    "tag",
    "uvarint",
    "wrong_wire",
]

VARINT: Final = 0
I64: Final = 1
LEN: Final = 2
I32: Final = 5
"""The protobuf wire types this library meets (groups, 3 and 4, are refused)."""

_WIRE_NAMES: Final = {
    0: "varint", 1: "fixed64", 2: "length-delimited", 3: "group", 4: "group end", 5: "fixed32",
}  # fmt: skip

MAX_INT = (1 << 63) - 1
"""The largest term, index or counter on the wire: they live in SQLite's signed 64-bit integers."""


class EncodeError(LocalError, ValueError):
    """A message cannot be put on the wire: a value out of range, an id that is empty or not
    encodable as UTF-8, or a size over the limits. The text names the field."""


MAX_FIELDS: Final = 256
"""Fields in one message, beyond the repeated fields that a caller bounds itself."""
MAX_U32: Final = (1 << 32) - 1
MAX_U64: Final = (1 << 64) - 1

SMALL_VARINTS: Final = tuple(bytes((i,)) for i in range(128))
"""The one-byte varints, by value."""


def bad(what: str) -> NoReturn:
    """Raise :class:`~phalanx_aio.errors.ProtocolError`: the received bytes are malformed."""
    raise ProtocolError(what)


def cannot(what: str) -> NoReturn:
    """Raise :class:`EncodeError`: a value to be sent is out of range or of the wrong type."""
    raise EncodeError(what)


def uvarint(value: int) -> bytes:
    """The base-128 varint of a non-negative int (callers check the range)."""
    if value < 0x80:
        return SMALL_VARINTS[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def tag(number: int, wire: int) -> bytes:
    """The encoded key of field ``number`` with wire type ``wire`` (for named tag constants)."""
    return uvarint(number << 3 | wire)


def put_len(out: bytearray, key: bytes, payload: bytes | bytearray) -> None:
    """Append a length-delimited field: ``key`` (a :func:`tag`), the length, the payload."""
    out += key
    out += uvarint(len(payload))
    out += payload


def put_uint(out: bytearray, key: bytes, value: int) -> None:
    """Append a varint field unless ``value`` is 0 (proto3 leaves defaults out)."""
    if value:
        out += key
        out += uvarint(value)


def read_varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """Read a varint at ``pos`` that must end by ``end``; return it and the position after it."""
    if pos >= end:
        bad("truncated varint")
    byte = data[pos]
    pos += 1
    if byte < 0x80:
        return byte, pos
    result = byte & 0x7F
    shift = 7
    while True:
        if pos >= end:
            bad("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
        if shift >= 70:
            bad("varint longer than 10 bytes")
    if result >> 64:
        bad("varint above 2**64")
    return result, pos


def fields(
    data: bytes, pos: int, end: int, what: str, max_fields: int = MAX_FIELDS
) -> Iterator[tuple[int, int, int, int]]:
    """Walk the fields of a message in ``data[pos:end]``.

    Yields ``(number, wire_type, a, b)``: for a varint ``a`` is its value; for a length-delimited
    field ``data[a:b]`` is its payload; fixed-width fields (which these schemas never use) are
    yielded with their span for the caller to reject or skip. Groups are refused, and so is a
    message of more than ``max_fields`` fields (which bounds the work any input can cause).
    """
    count = 0
    while pos < end:
        count += 1
        if count > max_fields:
            bad(f"{what}: more than {max_fields} fields")
        key, pos = read_varint(data, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            bad(f"{what}: field number 0")
        if wire == VARINT:
            value, pos = read_varint(data, pos, end)
            yield number, wire, value, 0
            continue
        if wire == LEN:
            length, pos = read_varint(data, pos, end)
            stop = pos + length
        elif wire == I64:
            stop = pos + 8
        elif wire == I32:
            stop = pos + 4
        else:
            bad(f"{what}: field {number} has unsupported wire type {_WIRE_NAMES.get(wire, wire)}")
        if stop > end:
            bad(f"{what}: field {number} runs past the end of its message")
        yield number, wire, pos, stop
        pos = stop


def wrong_wire(what: str, field: str, wire: int) -> NoReturn:
    """Raise :class:`~phalanx_aio.errors.ProtocolError` for a known field of the wrong wire type."""
    bad(f"{what}: field {field} has wire type {_WIRE_NAMES.get(wire, wire)}")


def decode_id(data: bytes, a: int, b: int, max_bytes: int, what: str) -> str:
    """A non-empty UTF-8 id of at most ``max_bytes`` in ``data[a:b]``."""
    if a == b:
        bad(f"{what} is empty")
    if b - a > max_bytes:
        bad(f"{what} is {b - a} bytes, over the limit of {max_bytes}")
    try:
        return data[a:b].decode("utf-8")
    except UnicodeDecodeError:
        bad(f"{what} is not valid UTF-8")


def encode_id(value: object, max_bytes: int, what: str) -> bytes:
    """The UTF-8 bytes of a non-empty str id of at most ``max_bytes``."""
    if type(value) is not str:
        cannot(f"{what} must be a str, not {type(value).__name__}")
    if not value:
        cannot(f"{what} is empty")
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        cannot(f"{what} {value!r} cannot be encoded as UTF-8")
    if len(raw) > max_bytes:
        cannot(f"{what} is {len(raw)} bytes, over the limit of {max_bytes}")
    return raw


def check_int(value: object, what: str) -> int:
    """``value`` if it is an int in [0, 2**63), else :class:`EncodeError`."""
    if type(value) is not int or not 0 <= value <= MAX_INT:
        cannot(f"{what} must be an int in [0, 2**63), not {value!r}")
    return value


def check_bytes(value: object, limit: int, what: str) -> bytes:
    """``value`` as bytes if it is bytes or bytearray of at most ``limit``, else :class:`EncodeError`."""
    if not isinstance(value, bytes | bytearray):
        cannot(f"{what} must be bytes, not {type(value).__name__}")
    if len(value) > limit:
        cannot(f"{what} is {len(value)} bytes, over the limit of {limit}")
    return bytes(value)
