"""The ``Stream`` call of :class:`~phalanx_aio.kv.KVService` (private): requests read in batches,
writes of a batch proposed together, answers sent back in batches as they complete, all within
the call's buffer budget.

A mixin of ``KVService``, which holds the settings and implements the operations it calls.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, NoReturn

import grpclib.const
import grpclib.server
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from phalanx_aio._budget import BufferBudget, Call
from phalanx_aio._grpc import Malformed, TooLarge, WireBytes, recv_bounded
from phalanx_aio.errors import (
    ProtocolError,
)
from phalanx_aio.kv.messages import (
    KV_METHODS,
    CompareAndSetRequest,
    DeleteRequest,
    ErrorCode,
    KVRequest,
    KVResponse,
    PutRequest,
    ResponseHeader,
)
from phalanx_aio.kv.state_machine import KVCommand
from phalanx_aio.kv.stream_codec import KVStreamCodec

__all__ = ["RESPONSE_TYPES", "WRITE_TYPES", "ServerStream", "StreamServing", "WriteRequest", "answer_within"]

log = logging.getLogger("phalanx_aio.kv")

WriteRequest = PutRequest | DeleteRequest | CompareAndSetRequest
ServerStream = grpclib.server.Stream[WireBytes, WireBytes]
RESPONSE_TYPES: dict[type[Any], type[Any]] = dict(KV_METHODS.values())
"""Request type -> its response type."""
WRITE_TYPES = (PutRequest, DeleteRequest, CompareAndSetRequest)


class StreamServing:
    """Serving the ``Stream`` call (see ``KVService`` for the settings it reads)."""

    max_request_bytes: int
    max_stream_inflight: int
    max_stream_buffer_bytes: int
    rejections: dict[str, int]
    _budget: BufferBudget
    _batch_writes: bool

    if TYPE_CHECKING:

        async def handle(self, request: KVRequest, *, timeout: float | None = None) -> KVResponse: ...

        def _check_write(self, req: WriteRequest) -> KVCommand | KVResponse: ...

        async def _write_batch(
            self, writes: list[tuple[WriteRequest, KVCommand, int]]
        ) -> list[KVResponse]: ...

        def _malformed(self, text: str) -> NoReturn: ...

        def _too_large(self, length: int) -> NoReturn: ...

    async def _serve_stream(self, stream: ServerStream) -> None:
        """The ``Stream`` call: answer every request of every batch concurrently, and send the
        answers in batches (whatever completed since the last send, once per loop turn).

        Answers wait unencoded (they refer to values the state machine holds) until the sender
        takes them; it encodes at most ``max_stream_buffer_bytes`` (or one answer) per message,
        held against the buffer budget while it is written. Requests count as under way until
        their answers are taken, so a client that does not read stops being read."""
        with self._budget.call(stream) as call:
            await self._stream_loop(stream, call)

    async def _stream_loop(self, stream: ServerStream, call: Call) -> None:
        pending: list[tuple[int, KVResponse]] = []  # answers not yet encoded, in completion order
        wake = asyncio.Event()
        room = asyncio.Event()  # set when fewer than max_stream_inflight requests are under way
        tasks: set[asyncio.Task[None]] = set()
        under_way = 0  # requests read whose answers the sender has not taken yet
        finished = False
        batch_limit = self.max_stream_buffer_bytes
        codec = KVStreamCodec()  # this call's: what repeats between its items

        def spawn(work: Coroutine[Any, Any, None]) -> None:
            task = asyncio.create_task(work)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        async def answer(rid: int, timeout_ms: int, request: KVRequest) -> None:
            timeout = answer_within(timeout_ms / 1000) if timeout_ms else None
            pending.append((rid, await self.handle(request, timeout=timeout)))
            wake.set()

        async def answer_writes(ids: list[int], writes: list[tuple[WriteRequest, KVCommand, int]]) -> None:
            try:
                responses = await self._write_batch(writes)
            except Exception:
                log.exception("KV service: unexpected error answering a batch of writes")
                internal = ResponseHeader(ErrorCode.INTERNAL, "internal server error")
                responses = [RESPONSE_TYPES[type(req)](internal) for req, _, _ in writes]
            pending.extend(zip(ids, responses, strict=True))
            wake.set()

        async def sender() -> None:
            nonlocal under_way
            while True:
                await wake.wait()
                wake.clear()
                while pending:
                    parts: list[bytes] = []
                    size = taken = 0
                    for rid, response in pending:
                        item = _encode_answer(codec, rid, response)
                        parts.append(item)
                        size += len(item)
                        taken += 1
                        if size >= batch_limit:
                            break
                    del pending[:taken]
                    under_way -= taken
                    if under_way < self.max_stream_inflight:
                        room.set()
                    batch = b"".join(parts)
                    del parts
                    call.take(len(batch))
                    await stream.send_message(WireBytes(batch))
                    call.give(len(batch))
                if finished and not tasks and not pending:
                    return

        send_task = asyncio.create_task(sender())
        try:
            while True:
                data = await self._recv(stream, call)
                if data is None:
                    break
                if send_task.done():  # the answers cannot be sent: end the call
                    break
                try:
                    items = codec.decode_requests(data, max_bytes=self.max_request_bytes)
                except ProtocolError as exc:
                    self.rejections["malformed"] += 1
                    raise GRPCError(Status.INVALID_ARGUMENT, f"malformed stream batch: {exc}"[:300]) from None
                del data
                under_way += len(items)
                writes: list[tuple[WriteRequest, KVCommand, int]] = []
                write_ids: list[int] = []
                for rid, timeout_ms, request in items:
                    if self._batch_writes and isinstance(request, WRITE_TYPES):
                        checked = self._check_write(request)
                        if isinstance(checked, KVCommand):
                            writes.append((request, checked, timeout_ms))
                            write_ids.append(rid)
                        else:
                            pending.append((rid, checked))
                            wake.set()
                        continue
                    spawn(answer(rid, timeout_ms, request))
                if writes:
                    spawn(answer_writes(write_ids, writes))
                while under_way >= self.max_stream_inflight:  # read no more until some are sent
                    room.clear()
                    await room.wait()
            if tasks:
                await asyncio.wait(list(tasks))
            finished = True
            wake.set()
            await send_task
        finally:
            for task in (*tasks, send_task):
                task.cancel()

    async def _recv(self, stream: ServerStream, call: Call) -> bytes | None:
        """The next request message of ``stream`` (``None`` once the client ended it), refused
        with ``RESOURCE_EXHAUSTED`` before it is buffered if it is over ``max_request_bytes``;
        its length is held against the buffer budget while it arrives."""
        try:
            return await recv_bounded(stream, self.max_request_bytes, call)
        except TooLarge as exc:
            self._too_large(exc.length)
        except Malformed as exc:
            self._malformed(str(exc))


def _encode_answer(codec: KVStreamCodec, rid: int, response: KVResponse) -> bytes:
    """One ``StreamResponse`` item (an ``INTERNAL`` answer if ``response`` cannot be encoded)."""
    try:
        return codec.encode_response(rid, response)
    except Exception:
        log.exception("KV service: cannot encode a %s", type(response).__name__)
        failed = type(response)(ResponseHeader(ErrorCode.INTERNAL, "internal server error"))
        return codec.encode_response(rid, failed)


def answer_within(left: float) -> float:
    """The time to work on a request whose client waits ``left`` seconds: answer just before
    the client gives up."""
    return max(left - min(0.1, left / 10), 0.001)
