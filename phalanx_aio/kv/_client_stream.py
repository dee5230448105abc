"""The ``Stream`` call of :class:`~phalanx_aio.kv.KVClient` to one node (private): many requests
in flight on one gRPC call, batched both ways, and the failure of an attempt.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final

from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.exceptions import GRPCError

from phalanx_aio._grpc import WireBytes
from phalanx_aio.errors import (
    ProtocolError,
)
from phalanx_aio.kv.stream_codec import KV_STREAM_METHOD, KVStreamCodec

__all__ = ["STREAM_BATCH_BYTES", "AttemptFailed", "StreamConn", "StreamItem"]

STREAM_BATCH_BYTES: Final = 60 << 10
"""A stream message holds at most this much (or one item): below any node's smallest
``max_request_bytes`` (:data:`phalanx_aio.kv.service.MIN_REQUEST_BYTES`)."""


class AttemptFailed(Exception):
    """One call did not produce an answer; ``delivered`` if the server may have acted on it.
    ``refused``: the request can never be served as it is (too large), so do not retry it."""

    def __init__(self, delivered: bool, text: str, refused: bool = False) -> None:
        super().__init__(text)
        self.delivered = delivered
        self.refused = refused


class StreamItem:
    """One request on a stream: its encoded item and the future of its answer."""

    __slots__ = ("cancelled", "data", "future", "rid", "sent")

    def __init__(self, rid: int, data: bytes, future: asyncio.Future[Any]) -> None:
        self.rid = rid
        self.data = data
        self.future = future
        self.sent = False
        """Handed to the connection: the server may act on it."""
        self.cancelled = False
        """Given up before it was sent: it must never be sent."""


class StreamConn:
    """One ``Stream`` call to one node, run by its own task until it fails or is closed.

    :meth:`submit` queues an item; the writer sends whatever is queued as one message per loop
    turn (split at ``STREAM_BATCH_BYTES``), the reader resolves the answers by request id.
    When the call ends, every unanswered item fails with :class:`AttemptFailed`, ``delivered``
    if it had been sent.
    """

    def __init__(self, address: str, channel: Channel, on_end: Callable[[StreamConn, bool], None]) -> None:
        self.address = address
        self.ended = False
        self._pending: dict[int, StreamItem] = {}
        self._outbox: list[StreamItem] = []
        self._wake = asyncio.Event()
        self._on_end = on_end
        self._error: str | None = None
        self._broken_connection = False
        self._codec = KVStreamCodec()  # decodes this connection's answers
        self.task = asyncio.get_running_loop().create_task(self._run(channel))

    def submit(self, rid: int, data: bytes) -> StreamItem:
        item = StreamItem(rid, data, asyncio.get_running_loop().create_future())
        self._pending[rid] = item
        self._outbox.append(item)
        self._wake.set()
        return item

    def forget(self, item: StreamItem) -> None:
        """The caller stopped waiting for ``item``: never send it if not sent yet."""
        item.cancelled = True
        self._pending.pop(item.rid, None)

    async def _run(self, channel: Channel) -> None:
        try:
            async with channel.request(
                KV_STREAM_METHOD, Cardinality.STREAM_STREAM, WireBytes, WireBytes
            ) as stream:
                await stream.send_request()
                writer = asyncio.get_running_loop().create_task(self._write(stream))
                try:
                    while True:
                        reply = await stream.recv_message()
                        if reply is None:
                            raise ConnectionError("the server ended the stream")
                        for rid, response in self._codec.decode_responses(reply.data):
                            item = self._pending.pop(rid, None)
                            if item is not None and not item.future.done():
                                item.future.set_result(response)
                finally:
                    writer.cancel()
        except asyncio.CancelledError:
            self._error = self._error or "the stream was closed"
        except GRPCError as exc:
            self._error = f"gRPC {exc.status.name} {exc.message or ''}".rstrip()
        except Exception as exc:  # connection refused or lost, h2 errors, an unreadable answer
            text = str(exc)
            self._error = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
            self._broken_connection = not isinstance(exc, ProtocolError)
        finally:
            self.ended = True
            self._on_end(self, self._broken_connection)
            pending, self._pending = self._pending, {}
            self._outbox.clear()
            for item in pending.values():
                if not item.future.done():
                    item.future.set_exception(AttemptFailed(item.sent, self._error or "the stream ended"))

    async def _write(self, stream: Any) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._outbox:
                    parts: list[bytes] = []
                    size = 0
                    taken = 0
                    for item in self._outbox:
                        if parts and size + len(item.data) > STREAM_BATCH_BYTES:
                            break
                        taken += 1
                        if item.cancelled:
                            continue
                        item.sent = True
                        parts.append(item.data)
                        size += len(item.data)
                    del self._outbox[:taken]
                    if parts:
                        await stream.send_message(WireBytes(b"".join(parts)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            text = str(exc)
            self._error = f"sending failed: {type(exc).__name__}: {text}" if text else type(exc).__name__
            self._broken_connection = True
            self.task.cancel()
