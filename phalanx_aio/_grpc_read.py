"""Reading one gRPC message with a size limit checked before it is buffered (private).

grpclib reads a whole message into memory whatever its announced length; :func:`recv_bounded`
reads the 5-byte prefix first and refuses a message over the limit before buffering any of
it. The peer transport and the KV service both read their requests through it; each turns
:class:`TooLarge` and :class:`Malformed` into its own answer and counter. With a
:class:`~phalanx_aio._budget.Call`, the announced length is held against the service's
buffer budget until the message has arrived in full.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from phalanx_aio._budget import Call

_PREFIX = struct.Struct(">BI")  # a gRPC message's prefix: compressed flag, length


class Malformed(Exception):
    """The message is truncated or compressed (the text says which)."""


class TooLarge(Exception):
    """The message announces (or has) ``length`` bytes, over the limit."""

    def __init__(self, length: int) -> None:
        super().__init__(f"message of {length} bytes")
        self.length = length


async def recv_bounded(stream: Any, limit: int, call: Call | None = None) -> bytes | None:
    """The next message of the grpclib server ``stream`` as bytes (``None`` once the client
    ended it); :class:`TooLarge` if it is over ``limit`` bytes, :class:`Malformed` if it is
    truncated or compressed. ``call`` holds the message's length while its body arrives."""
    raw = getattr(stream, "_stream", None)
    if raw is None or not hasattr(raw, "recv_data"):  # pragma: no cover - another grpclib
        message = await stream.recv_message()
        if message is None:
            return None
        if len(message.data) > limit:
            raise TooLarge(len(message.data))
        return bytes(message.data)
    try:
        prefix = await raw.recv_data(5)
        if not prefix:
            return None
        if len(prefix) != 5:
            raise Malformed("truncated gRPC message prefix")
        compressed, length = _PREFIX.unpack(prefix)
        if compressed:
            raise Malformed("compressed messages are not supported")
        if length > limit:
            raise TooLarge(length)
        if call is None:
            data = await raw.recv_data(length) if length else b""
        else:
            call.take(length)
            try:
                data = await raw.recv_data(length) if length else b""
            finally:
                call.give(length)
    except AssertionError:  # grpclib's buffer: the stream ended inside a message
        raise Malformed("truncated gRPC message") from None
    if len(data) != length:
        raise Malformed("truncated gRPC message")
    return bytes(data)
