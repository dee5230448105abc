"""The log bytes of a KV write (private; public through :mod:`phalanx_aio.kv.state_machine`):
:class:`KVCommand` and its binary record, :func:`encode_command` and :func:`decode_command`, and
the in-place parse every member runs on every command it applies.

A record: a header (version, op, seq, acked), then the client id, the key and the value, each
length-prefixed, then a CAS flag and, for a CAS, the expected value.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from phalanx_aio.errors import LocalError, ProtocolError
from phalanx_aio.kv._quick import quick_init

__all__ = ["KVCommand", "KVOp", "decode_command", "encode_command"]


class KVOp(enum.IntEnum):
    """Operations of the KV state machine."""

    PUT = 1
    DELETE = 2
    CAS = 3


@quick_init
@dataclass(frozen=True, slots=True)
class KVCommand:
    """One write. ``client_id`` empty means no session (at-least-once on retries)."""

    op: KVOp
    key: bytes
    value: bytes = b""
    expected: bytes | None = None
    """CAS: the value the key must hold (``None``: the key must be absent)."""
    client_id: str = ""
    seq: int = 0
    acked: int = 0
    """The client has received every result up to this number: older ones may be forgotten."""


_HEAD = struct.Struct(">BBQQ")  # version, op, seq, acked
_pack_len = struct.Struct(">I").pack
_VERSION = 1
_MAX_FIELD = 64 << 20


def _put_field(out: list[bytes], data: bytes) -> None:
    out.append(struct.pack(">I", len(data)))
    out.append(data)


def encode_command(cmd: KVCommand) -> bytes:
    """The log bytes of ``cmd``."""
    if not isinstance(cmd.key, bytes) or not isinstance(cmd.value, bytes):
        raise LocalError("KV keys and values must be bytes")
    cid, key, value, expected = cmd.client_id.encode(), cmd.key, cmd.value, cmd.expected
    head = _HEAD.pack(_VERSION, int(cmd.op), cmd.seq, cmd.acked)
    if expected is None:
        return b"".join(
            (head, _pack_len(len(cid)), cid, _pack_len(len(key)), key, _pack_len(len(value)), value, b"\x00")
        )
    out = [head]
    _put_field(out, cid)
    _put_field(out, key)
    _put_field(out, value)
    out.append(b"\x01")
    _put_field(out, expected)
    return b"".join(out)


def _fields(data: bytes, pos: int) -> Iterator[bytes]:
    while True:
        if pos + 4 > len(data):
            raise ProtocolError("truncated KV command")
        (n,) = struct.unpack_from(">I", data, pos)
        if n > _MAX_FIELD or pos + 4 + n > len(data):
            raise ProtocolError("KV command field length out of range")
        yield data[pos + 4 : pos + 4 + n]
        pos += 4 + n


_LEN = struct.Struct(">I")

_OPS = {int(op): op for op in KVOp}


def _take(data: bytes, pos: int) -> tuple[bytes, int]:
    """The length-prefixed field at ``pos`` and the position after it."""
    if pos + 4 > len(data):
        raise ProtocolError("truncated KV command")
    (n,) = _LEN.unpack_from(data, pos)
    end = pos + 4 + n
    if n > _MAX_FIELD or end > len(data):
        raise ProtocolError("KV command field length out of range")
    return data[pos + 4 : end], end


def decode_command(data: bytes) -> KVCommand:
    """Inverse of :func:`encode_command`; raises :class:`ProtocolError` on malformed bytes."""
    return KVCommand(*_decode(data))


_Fields = tuple[KVOp, bytes, bytes, bytes | None, str, int, int]


_MIN_COMMAND = _HEAD.size + 4 + 4 + 4 + 1
CLIENT_IDS_KEPT = 1024
"""How many decoded client ids a :func:`_decode` cache holds before it starts afresh."""


def _decode(data: bytes, client_ids: dict[bytes, str] | None = None) -> _Fields:
    """The fields of the command in ``data``, in :class:`KVCommand`'s order (no object built).
    Parsed in place rather than with :func:`_take`: every member decodes every command it applies.
    ``client_ids``: the caller's cache of decoded client ids (a few sessions write most
    commands), which this fills; each state machine owns one."""
    end = len(data)
    if end < _MIN_COMMAND:
        raise ProtocolError("truncated KV command")
    version, op, seq, acked = _HEAD.unpack_from(data)
    if version != _VERSION:
        raise ProtocolError(f"unknown KV command version {version}")
    kop = _OPS.get(op)
    if kop is None:
        raise ProtocolError(f"unknown KV operation {op}")
    b = _HEAD.size
    parts: list[bytes] = []
    for after in (4, 4, 1):  # client id, key, value; then another length, the length, the CAS flag
        (n,) = _LEN.unpack_from(data, b)
        a = b + 4
        b = a + n
        if n > _MAX_FIELD or b + after > end:
            raise ProtocolError("KV command field length out of range")
        parts.append(data[a:b])
    client, key, value = parts
    flag = data[b]
    expected: bytes | None = None
    if flag == 1:
        expected, b = _take(data, b + 1)
    elif flag == 0:
        b += 1
    else:
        raise ProtocolError("malformed CAS flag in KV command")
    if b != end:
        raise ProtocolError("trailing bytes after KV command")
    client_id = client_ids.get(client) if client_ids is not None else None
    if client_id is None:
        try:
            client_id = client.decode()
        except UnicodeDecodeError:
            raise ProtocolError("KV client id is not UTF-8") from None
        if client_ids is not None:
            if len(client_ids) >= CLIENT_IDS_KEPT:
                client_ids.clear()
            client_ids[client] = client_id
    return kop, key, value, expected, client_id, seq, acked
