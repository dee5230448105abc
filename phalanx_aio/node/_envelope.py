"""How the driver wraps a command in a log entry so the proposer can recognise its own.

Layout: version byte 1, origin id length (1 byte), origin id (UTF-8), request id (8 bytes,
big-endian), then the application's command. Entries written by other tools (or malformed)
decode as ``(None, 0, data)``: applied as plain commands, matched to no caller.
"""

from __future__ import annotations

import struct

_REQ = struct.Struct(">Q")
_VERSION = 1


pack_request = _REQ.pack
"""The request id's 8 bytes, as they follow :func:`prefix`."""
unpack_request = _REQ.unpack_from
"""``(request_id,)`` from the 8 bytes at an offset."""


def prefix(origin: str) -> bytes:
    """The bytes every envelope from ``origin`` starts with (version, id length, id): a node
    computes them once, and recognises its own entries by them."""
    oid = origin.encode()
    return bytes((_VERSION, len(oid))) + oid


def wrap(origin: str, request_id: int, command: bytes) -> bytes:
    """The entry data for ``command`` proposed by ``origin`` as ``request_id``."""
    return prefix(origin) + _REQ.pack(request_id) + command


def unwrap(data: bytes) -> tuple[str | None, int, bytes]:
    """``(origin, request_id, command)``; ``(None, 0, data)`` if ``data`` is no envelope."""
    if len(data) < 10 or data[0] != _VERSION:
        return None, 0, data
    n = data[1]
    end = 2 + n + 8
    if len(data) < end:
        return None, 0, data
    try:
        origin = data[2 : 2 + n].decode()
    except UnicodeDecodeError:
        return None, 0, data
    return origin, _REQ.unpack_from(data, 2 + n)[0], data[end:]
