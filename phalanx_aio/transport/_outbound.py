"""The sending half of :class:`~phalanx_aio.transport.grpc.GrpcTransport` (private): one
long-lived stream per peer, fed from the peer's queue, reconnected with backoff; snapshots on
calls of their own."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from grpclib.client import Channel
from grpclib.client import Stream as ClientStream
from grpclib.const import Cardinality, Status

from phalanx_aio._grpc import WireBytes, parse_address, raw_stream
from phalanx_aio.core.types import Message
from phalanx_aio.errors import ProtocolError
from phalanx_aio.transport._shared import Peer, Shared, StreamEnded, describe, log
from phalanx_aio.transport.chunks import snapshot_chunks
from phalanx_aio.transport.codec import (
    INSTALL_SNAPSHOT_METHOD,
    STREAM_METHOD,
    EncodeError,
    decode_snapshot_ack,
    encode_frames,
)

_ClientStream = ClientStream[WireBytes, WireBytes]


def _end_status(call: _ClientStream) -> str:
    """What the server's trailers say about a call it ended (for logs)."""
    trailers = getattr(raw_stream(call), "trailers", None)
    if not trailers:
        return "peer ended the stream"
    fields = dict(trailers)
    code = fields.get("grpc-status", "?")
    with contextlib.suppress(ValueError):
        code = Status(int(code)).name
    return f"peer ended the stream: {code} {fields.get('grpc-message', '')}".rstrip()


async def _finish(task: asyncio.Task[Any]) -> None:
    """Wait until the cancelled ``task`` has finished (its cleanup closes its channel), even if
    the caller is cancelled again meanwhile; what it raised is retrieved and dropped."""
    while not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({task})
    if not task.cancelled():
        task.exception()


def _failure(attempt: asyncio.Task[None]) -> BaseException | None:
    """Why a connection attempt ended: what it raised (a ``CancelledError`` if it was cancelled
    on its own, which only grpclib does). An exception that is not an error (``SystemExit``,
    ``KeyboardInterrupt``) is raised again."""
    if attempt.cancelled():
        return asyncio.CancelledError("the connection attempt was cancelled")
    exc = attempt.exception()
    if exc is not None and not isinstance(exc, Exception):
        raise exc
    return exc


class Outbound(Shared):
    """Streams and snapshot transfers to the peers."""

    # ----------------------------------------------------------------- outbound: the stream

    def _spawn_sender(self, peer: Peer) -> None:
        peer.task = asyncio.get_running_loop().create_task(
            self._run_sender(peer), name=f"phalanx-send-{self.node_id}-{peer.id}"
        )

    def _channel(self, address: str) -> Channel:
        host, port = parse_address(address)
        return Channel(host, port, ssl=self._client_ssl, config=self._channel_config)

    def _backoff_delay(self, failures: int) -> float:
        initial, maximum, jitter = self._backoff
        base = min(maximum, initial * 2.0 ** min(failures, 62))
        return base * (1.0 - jitter * self._rng.random())

    async def _run_sender(self, peer: Peer) -> None:
        """Keep one stream to ``peer`` open and fed until cancelled.

        Each connection attempt (connect, then pump) runs in a task of its own, and this task
        only waits for it. grpclib cancels the task that is awaiting a call when the call's
        connection is lost, then raises ``StreamTerminatedError`` in place of the
        ``CancelledError``; if a cancellation of ours arrives in the same turn of the loop (the
        transport's shutdown while the peer closes too), that one is swallowed with it. Were
        the attempt run here, the swallowed cancellation would read as a connection failure,
        the loop would back off and reconnect for ever, and :meth:`aclose` would wait for it
        for ever. Here it reaches this task in :func:`asyncio.wait`, which nothing turns into
        anything else; grpclib's cancellations stay in the attempt's task, whose cancellation
        count they would otherwise leave raised for good.
        """
        loop = asyncio.get_running_loop()
        while True:
            peer.established_at = None
            attempt = loop.create_task(self._stream_to(peer), name=f"phalanx-stream-{self.node_id}-{peer.id}")
            try:
                await asyncio.wait({attempt})
            except asyncio.CancelledError:
                attempt.cancel()
                await _finish(attempt)
                raise
            exc = _failure(attempt)
            if exc is not None:
                self._unreachable(peer, exc)
            # A stream that lived a while resets the backoff; one that the peer accepts and then
            # ends at once (a misconfiguration) must not make us reconnect in a tight loop.
            if peer.established_at is not None and loop.time() - peer.established_at >= self._backoff[1]:
                peer.failures = 0
            delay = self._backoff_delay(peer.failures)
            peer.failures += 1
            await asyncio.sleep(delay)

    async def _stream_to(self, peer: Peer) -> None:
        """Open a stream to ``peer`` and pump its queue into it; returns only by raising."""
        channel = self._channel(peer.address)
        try:
            call = channel.request(STREAM_METHOD, Cardinality.STREAM_UNARY, WireBytes, WireBytes)
            async with call:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                # that arrives as the awaited call completes, and aclose would wait forever.
                async with asyncio.timeout(self._connect_timeout):
                    await self._open_stream(call)
                self._stats["streams_opened"] += 1
                if peer.unreachable:
                    self._stats["reconnects"] += 1
                    log.info("%s: stream to %s at %s re-established", self.node_id, peer.id, peer.address)
                peer.unreachable = False
                peer.established_at = asyncio.get_running_loop().time()
                watcher = asyncio.get_running_loop().create_task(
                    self._watch(call), name=f"phalanx-watch-{self.node_id}-{peer.id}"
                )
                watcher.add_done_callback(lambda _: peer.wake.set())
                try:
                    await self._pump(peer, call, channel, watcher)
                finally:
                    watcher.cancel()
                    await asyncio.wait({watcher})
                    if not watcher.cancelled():
                        watcher.exception()  # retrieved: the pump already reported it
        finally:
            channel.close()

    async def _open_stream(self, call: _ClientStream) -> None:
        """Send the hello frame and wait until the peer accepts it (its response headers)."""
        await call.send_message(WireBytes(self._hello))
        await call.recv_initial_metadata()

    @staticmethod
    async def _watch(call: _ClientStream) -> None:
        """Finish when the peer ends the call (it only does on error) or the connection breaks."""
        await call.recv_message()
        raise StreamEnded(_end_status(call))

    async def _pump(
        self, peer: Peer, call: _ClientStream, channel: Channel, watcher: asyncio.Task[None]
    ) -> None:
        loop = asyncio.get_running_loop()
        stats = self._stats
        queue = peer.queue
        wake = peer.wake
        while True:
            while not queue:
                if watcher.done():
                    break
                wake.clear()
                await wake.wait()
            if watcher.done():
                watcher.result()  # raises what ended the call
                raise StreamEnded("peer ended the stream")  # pragma: no cover - _watch raises
            batch = list(queue)
            queue.clear()
            for data in self._encode(batch):
                # A frame that cannot be written within send_timeout (flow control) means the
                # peer or the path is stuck: closing the channel fails the call and we reconnect.
                timer = loop.call_later(self._send_timeout, channel.close)
                try:
                    await call.send_message(WireBytes(data))
                finally:
                    timer.cancel()
                stats["frames_sent"] += 1
                stats["bytes_sent"] += len(data)
            stats["messages_sent"] += len(batch)

    def _encode(self, batch: list[Message]) -> list[bytes]:
        try:
            return encode_frames(
                self.cluster_id, self.node_id, batch, limits=self._limits, cache=self.batch_cache
            )
        except EncodeError:
            pass
        # Rare: find and drop the messages that cannot be encoded, keep the rest in order.
        good: list[Message] = []
        for m in batch:
            try:
                encode_frames(self.cluster_id, self.node_id, [m], limits=self._limits)
            except EncodeError as exc:
                self._stats["dropped_encode_error"] += 1
                log.error("%s: dropping a message to %s that cannot be encoded: %s", self.node_id, m.to, exc)
            else:
                good.append(m)
        batch[:] = good
        if not good:
            return []
        return encode_frames(self.cluster_id, self.node_id, good, limits=self._limits, cache=self.batch_cache)

    # ----------------------------------------------------------------- outbound: snapshots

    def _queue_snapshot(self, peer: Peer, m: Message) -> None:
        if peer.snap_pending is not None:
            self._stats["dropped_snapshot_superseded"] += 1
            self._report_snapshot_soon(peer.id, False)
        peer.snap_pending = m
        if self._started and (peer.snap_task is None or peer.snap_task.done()):
            self._spawn_snapshot(peer)

    def _report_snapshot_soon(self, peer_id: str, ok: bool) -> None:
        handler = self._handler
        if handler is not None:
            asyncio.get_running_loop().call_soon(
                self._notify, "on_snapshot_status", handler.on_snapshot_status, peer_id, ok
            )

    def _spawn_snapshot(self, peer: Peer) -> None:
        peer.snap_task = asyncio.get_running_loop().create_task(
            self._run_snapshots(peer), name=f"phalanx-snapshot-{self.node_id}-{peer.id}"
        )

    async def _run_snapshots(self, peer: Peer) -> None:
        while peer.snap_pending is not None:
            m = peer.snap_pending
            peer.snap_pending = None
            try:
                ok = await self._transfer(peer, m)
            except Exception as exc:
                ok = False
                log.warning(
                    "%s: snapshot to %s at %s failed: %s", self.node_id, peer.id, peer.address, describe(exc)
                )
            self._stats["snapshots_sent" if ok else "snapshots_failed"] += 1
            if self._handler is not None and not self._closed:
                self._notify("on_snapshot_status", self._handler.on_snapshot_status, peer.id, ok)

    async def _transfer(self, peer: Peer, m: Message) -> bool:
        """Send one snapshot on its own InstallSnapshot call and connection."""
        assert m.snapshot is not None
        total = len(m.snapshot.data)
        loop = asyncio.get_running_loop()
        channel = self._channel(peer.address)
        try:
            call = channel.request(INSTALL_SNAPSHOT_METHOD, Cardinality.STREAM_UNARY, WireBytes, WireBytes)
            async with call:
                async with asyncio.timeout(self._connect_timeout):
                    await call.send_request()
                chunks = snapshot_chunks(
                    self.cluster_id, self.node_id, m, chunk_bytes=self._chunk_bytes, limits=self._limits
                )
                for chunk in chunks:
                    timer = loop.call_later(self._send_timeout, channel.close)
                    try:
                        await call.send_message(WireBytes(chunk))
                    finally:
                        timer.cancel()
                await call.end()
                async with asyncio.timeout(self._send_timeout):
                    reply = await call.recv_message()
            if reply is None:
                raise ProtocolError("no SnapshotAck")
            received = decode_snapshot_ack(reply.data)
        finally:
            channel.close()
        if received != total:
            raise ProtocolError(f"peer acknowledged {received} of {total} snapshot bytes")
        log.info("%s: snapshot of %d bytes delivered to %s", self.node_id, total, peer.id)
        return True
