"""The receiving half of :class:`~phalanx_aio.transport.grpc.GrpcTransport` (private): the
``RaftPeer`` calls from peers, every frame checked before any message reaches the node."""

from __future__ import annotations

import operator

import grpclib.server
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from phalanx_aio._budget import Call
from phalanx_aio._grpc import Malformed, TooLarge, WireBytes, certificate_names, join_address, recv_bounded
from phalanx_aio.core.types import Message, MessageType
from phalanx_aio.errors import ProtocolError
from phalanx_aio.transport._shared import Shared, log
from phalanx_aio.transport.chunks import SnapshotAssembler
from phalanx_aio.transport.codec import (
    Frame,
    decode_frame,
    encode_snapshot_ack,
    encode_stream_ack,
)

MAX_ACCEPTED_INT = (1 << 62) - 1
"""The largest term or index accepted from a peer (the codec's wire limit is ``2**63 - 1``).

A message carrying more is refused (``rejected_invalid``): a term of ``2**63 - 1``, adopted from
one bad message, left no room for the next election (the cluster stayed leaderless, and a node
told to campaign overflowed SQLite's 64-bit integers and stopped). The headroom of ``2**62``
elections or entries is never reached by a correct cluster.
"""

_MAX_STATUS_TEXT = 300

_ServerStream = grpclib.server.Stream[WireBytes, WireBytes]


class _Reject(Exception):
    """Bad input on an inbound call: counted under ``rejected_<reason>``, answered with ``status``."""

    def __init__(self, reason: str, status: Status, text: str) -> None:
        super().__init__(text)
        self.reason = reason
        self.status = status
        self.text = text[:_MAX_STATUS_TEXT]


async def _recv_bounded(stream: _ServerStream, limit: int, call: Call) -> bytes | None:
    """The next gRPC message of ``stream`` (``None`` once the client ended it), refused before it
    is buffered if it is over ``limit`` bytes (see :func:`phalanx_aio._grpc.recv_bounded`)."""
    try:
        return await recv_bounded(stream, limit, call)
    except TooLarge as exc:
        raise _Reject(
            "too_large",
            Status.RESOURCE_EXHAUSTED,
            f"message of {exc.length} bytes, over the limit of {limit}",
        ) from None
    except Malformed as exc:
        raise _Reject("malformed", Status.INVALID_ARGUMENT, str(exc)) from None


def _peer_name(stream: _ServerStream) -> str:
    try:
        addr = stream.peer.addr()
    except Exception:  # pragma: no cover - defensive
        addr = None
    if isinstance(addr, tuple) and len(addr) >= 2:
        return join_address(str(addr[0]), int(addr[1]))
    return "?"


_term_of = operator.attrgetter("term")
_index_of = operator.attrgetter("index")


def _impossible(m: Message) -> str | None:
    """Why no correct peer sends ``m`` (``None`` if one could): a term or index above
    :data:`MAX_ACCEPTED_INT`, or an append whose entries do not follow ``index`` one by one with
    terms from ``log_term`` up to the message's term, never going down."""
    top = MAX_ACCEPTED_INT
    if max(m.term, m.log_term, m.index, m.commit, m.reject_hint) > top:
        return f"a term or index above {top}"
    snap = m.snapshot
    if snap is not None and max(snap.meta.index, snap.meta.term) > top:
        return f"a snapshot index or term above {top}"
    entries = m.entries
    if not entries or m.type is not MessageType.APP:
        return None
    index, prev, term = m.index, m.log_term, m.term
    if index + len(entries) > top:
        return f"an entry index above {top}"
    # The usual case checked in C: consecutive indexes, terms that never decrease, within
    # [log_term, term]. The loop below finds the first culprit when that fails.
    terms = list(map(_term_of, entries))
    if (
        list(map(_index_of, entries)) == list(range(index + 1, index + 1 + len(entries)))
        and prev <= terms[0]
        and terms[-1] <= term
        and all(map(operator.le, terms, terms[1:]))
    ):
        return None
    for i, e in enumerate(entries, 1):
        if e.index != index + i:
            return f"entry {i - 1} has index {e.index}, not {index + i}"
        if not prev <= e.term <= term:
            return f"entry {i - 1} has term {e.term}, outside [{prev}, {term}]"
        prev = e.term
    return None


class Inbound(Shared):
    """The calls from peers: the stream of frames and snapshot transfers."""

    # ----------------------------------------------------------------- inbound

    def _reject(self, rej: _Reject, stream: _ServerStream, sender: str | None) -> GRPCError:
        self._stats[f"rejected_{rej.reason}"] += 1
        who = f"{sender!r} at {_peer_name(stream)}" if sender else _peer_name(stream)
        log.warning("%s: rejected a call from %s (%s): %s", self.node_id, who, rej.reason, rej.text)
        return GRPCError(rej.status, rej.text)

    def _check_sender(self, cluster_id: str, sender: str, bound: str | None) -> None:
        if cluster_id != self.cluster_id:
            raise _Reject(
                "cluster",
                Status.FAILED_PRECONDITION,
                f"cluster {cluster_id!r:.100} is not this node's cluster {self.cluster_id!r}",
            )
        if bound is not None and sender != bound:
            raise _Reject("sender", Status.PERMISSION_DENIED, f"sender changed from {bound!r} within a call")
        if sender not in self._peers:
            index = self._removed.get(sender)
            if index is not None:
                raise _Reject(
                    "removed",
                    Status.NOT_FOUND,
                    f"removed at index {index}: {sender!r} is no longer a member of {self.cluster_id!r}",
                )
            raise _Reject(
                "sender", Status.PERMISSION_DENIED, f"{sender!r:.100} is not a peer of {self.node_id!r}"
            )

    def _check_identity(self, sender: str, stream: _ServerStream) -> None:
        """With ``bind_node_ids``, the client certificate must name ``sender``."""
        if not self._bind_node_ids:
            return
        names = certificate_names(stream.peer.cert())
        if sender not in names:
            shown = ", ".join(repr(n) for n in sorted(names)[:8]) or "no names"
            raise _Reject(
                "identity",
                Status.PERMISSION_DENIED,
                f"the client certificate names {shown}, not the sender {sender!r:.100}",
            )

    def _check_message(self, m: Message, sender: str) -> None:
        if m.to != self.node_id:
            raise _Reject(
                "destination",
                Status.FAILED_PRECONDITION,
                f"message for {m.to!r:.100} delivered to {self.node_id!r}",
            )
        if m.frm != sender:
            raise _Reject(
                "origin", Status.PERMISSION_DENIED, f"message from {m.frm!r:.100} in a frame from {sender!r}"
            )
        problem = _impossible(m)
        if problem is not None:
            raise _Reject(
                "invalid", Status.INVALID_ARGUMENT, f"{m.type.name} message from {sender!r}: {problem}"
            )

    def _check_frame(self, frame: Frame, bound: str | None) -> None:
        self._check_sender(frame.cluster_id, frame.sender, bound)
        for m in frame.messages:
            self._check_message(m, frame.sender)

    def _deliver(self, sender: str, messages: list[Message]) -> None:
        handler = self._handler
        if handler is not None and not self._closed:
            self._notify("on_messages", handler.on_messages, sender, messages)

    async def _serve_stream(self, stream: _ServerStream) -> None:
        """RaftPeer.Stream: validate each frame, hand its messages over, ack at the end."""
        with self._budget.call(stream) as call:
            await self._serve_frames(stream, call)

    async def _serve_frames(self, stream: _ServerStream, call: Call) -> None:
        stats = self._stats
        stats["inbound_streams"] += 1
        limits = self._limits
        sender: str | None = None
        frames = messages = 0
        try:
            while True:
                data = await _recv_bounded(stream, limits.max_frame_bytes, call)
                if data is None:
                    break
                try:
                    frame = decode_frame(data, limits=limits, cache=self.batch_cache)
                except ProtocolError as exc:
                    raise _Reject("malformed", Status.INVALID_ARGUMENT, str(exc)) from None
                self._check_frame(frame, sender)
                if sender is None:
                    self._check_identity(frame.sender, stream)
                    sender = frame.sender
                    await stream.send_initial_metadata()  # accepted: the peer's connect completes
                frames += 1
                stats["frames_received"] += 1
                stats["bytes_received"] += len(data)
                if frame.messages:
                    messages += len(frame.messages)
                    stats["messages_received"] += len(frame.messages)
                    self._deliver(sender, frame.messages)
            await stream.send_message(WireBytes(encode_stream_ack(frames, messages)))
        except _Reject as rej:
            raise self._reject(rej, stream, sender) from None
        finally:
            stats["inbound_streams_ended"] += 1

    async def _serve_snapshot(self, stream: _ServerStream) -> None:
        """RaftPeer.InstallSnapshot: reassemble and check, hand the SNAP over, ack."""
        with self._budget.call(stream) as call:
            await self._serve_chunks(stream, call)

    async def _serve_chunks(self, stream: _ServerStream, call: Call) -> None:
        limits = self._limits
        assembler = SnapshotAssembler(limits=limits)
        sender: str | None = None
        result: Message | None = None
        try:
            while True:
                data = await _recv_bounded(stream, limits.max_frame_bytes, call)
                if data is None:
                    break
                try:
                    result = assembler.feed(data)
                except ProtocolError as exc:
                    raise _Reject("malformed", Status.INVALID_ARGUMENT, str(exc)) from None
                if sender is None:
                    self._check_sender(assembler.cluster_id, assembler.sender, None)
                    self._check_identity(assembler.sender, stream)
                    header = assembler.header
                    assert header is not None
                    self._check_message(header, assembler.sender)
                    sender = assembler.sender
            if result is None or sender is None:
                raise _Reject(
                    "snapshot_incomplete",
                    Status.INVALID_ARGUMENT,
                    f"snapshot ended after {assembler.received} of {assembler.total} bytes",
                )
            assert result.snapshot is not None
            size = len(result.snapshot.data)
            self._stats["snapshots_received"] += 1
            log.info("%s: snapshot of %d bytes received from %s", self.node_id, size, sender)
            self._deliver(sender, [result])
            await stream.send_message(WireBytes(encode_snapshot_ack(size)))
        except _Reject as rej:
            raise self._reject(rej, stream, sender) from None
