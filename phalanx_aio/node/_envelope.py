"""How the driver wraps a command in a log entry so the proposer can recognise its own.

Layout: version byte 1, origin length (1 byte), origin (UTF-8), request id (8 bytes,
big-endian), then the application's command. Entries written by other tools (or malformed)
decode as ``(None, 0, data)``: applied as plain commands, matched to no caller.

The origin names the proposing node *and its run*: the node id, ``#``, then the 16 hex digits
of a random nonce the node draws each time it starts (:func:`run_origin`). Request ids count
from 1 again in every run, so the nonce is what tells this run's request 7 from the previous
run's request 7, whose entry may still commit after a restart: a node recognises its own
entries by the whole origin, never by the request id alone. Entries of earlier releases name
the bare node id; they match no running node, and their commands unwrap as before. The layout
itself is unchanged, so nodes of earlier releases apply these entries' commands correctly
during a rolling upgrade.
"""

from __future__ import annotations

import struct

_REQ = struct.Struct(">Q")
_VERSION = 1
NONCE_BYTES = 8
"""Length of a run nonce."""
MAX_NODE_ID_BYTES = 255 - 1 - 2 * NONCE_BYTES
"""The longest node id (UTF-8 bytes) that fits the envelope's origin with its run nonce."""

pack_request = _REQ.pack
"""The request id's 8 bytes, as they follow :func:`prefix`."""
unpack_request = _REQ.unpack_from
"""``(request_id,)`` from the 8 bytes at an offset."""


def run_origin(node_id: str, nonce: bytes) -> str:
    """The origin naming ``node_id`` in the run whose nonce is ``nonce``."""
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"a run nonce is {NONCE_BYTES} bytes, not {len(nonce)}")
    return f"{node_id}#{nonce.hex()}"


def prefix(origin: str) -> bytes:
    """The bytes every envelope from ``origin`` starts with (version, length, origin): a node
    computes them once per run, and recognises its own entries by them."""
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


def command_of(data: bytes) -> bytes:
    """The state machine command in the data of a NORMAL log entry written by a
    :class:`~phalanx_aio.RaftNode` (the node wraps each command with who proposed it; data with
    no wrapping is returned as it is). For tools that replay a log, such as ``restore``."""
    return unwrap(data)[2]
