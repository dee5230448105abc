"""The server side of the client-facing KV service (``protos/phalanx/v1/kv.proto``).

:class:`KVService` is a grpclib servable: give it to the node's transport
(``GrpcTransport(..., extra_handlers=[service])``) so that clients reach the KV service on the
node's own port, then :meth:`~KVService.attach` the :class:`~phalanx_aio.node.RaftNode`, whose
state machine must be a :class:`~phalanx_aio.kv.state_machine.KVStateMachine`::

    service = KVService()
    transport = GrpcTransport(node_id="n1", cluster_id="phalanx", listen=addr, extra_handlers=[service])
    node = RaftNode("n1", ..., state_machine=KVStateMachine(), transport=transport)
    service.attach(node)
    await node.start()

Every answer, error or not, is a response message whose header carries an
:class:`~phalanx_aio.kv.messages.ErrorCode`: bad input, a foreign cluster, a follower asked to
write, a lost leadership, all come back as codes and never as gRPC error statuses (a gRPC error
means the transport failed). Writes go through the leader only (a follower answers
``NOT_LEADER`` with the leader's id and address); reads are served by any node. ``docs/kv.md``
describes the protocol, the sessions and the outcomes.

Besides the unary methods, the service offers ``Stream``: one long-lived call on which a client
sends batches of Put, Get, Delete and CompareAndSet requests, each with an id, and gets the
answers back in batches as they complete (see :data:`~phalanx_aio.kv.stream_codec.KV_STREAM_METHOD`).
Every request on it is handled exactly as by its unary method, concurrently with the others.

No request message may be larger than ``max_request_bytes`` (4 MiB by default): the service
reads the 5-byte gRPC length prefix first and ends a call that announces more with the gRPC
status ``RESOURCE_EXHAUSTED`` before buffering the message (grpclib itself sets no limit). The
node keeps serving; the refusal is counted in :attr:`KVService.rejections`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpclib.const
import grpclib.server
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError

from phalanx_aio._budget import SHED_REASONS, BufferBudget
from phalanx_aio._grpc import WireBytes
from phalanx_aio.errors import (
    ClosedError,
    LocalError,
    NotApplied,
    NotLeader,
    OutcomeUnknown,
    PhalanxError,
    ProposalDropped,
    ProtocolError,
)
from phalanx_aio.kv._service_stream import (
    RESPONSE_TYPES as _RESPONSE_TYPES,
)
from phalanx_aio.kv._service_stream import (
    ServerStream as _Stream,
)
from phalanx_aio.kv._service_stream import (
    StreamServing,
    answer_within,
)
from phalanx_aio.kv._service_stream import (
    WriteRequest as _WriteRequest,
)
from phalanx_aio.kv.codec import decode_kv_message, encode_kv_message
from phalanx_aio.kv.messages import (
    KV_METHODS,
    CompareAndSetRequest,
    CompareAndSetResponse,
    DeleteRequest,
    DeleteResponse,
    ErrorCode,
    GetRequest,
    GetResponse,
    KVRequest,
    KVResponse,
    Member,
    MemberAddRequest,
    MemberChangeRequest,
    MemberChangeResponse,
    MemberListRequest,
    MemberListResponse,
    MemberPromoteRequest,
    MemberRemoveRequest,
    PutRequest,
    PutResponse,
    ReadConsistency,
    RequestHeader,
    ResponseHeader,
    StatusRequest,
    StatusResponse,
    TransferLeaderRequest,
    TransferLeaderResponse,
)
from phalanx_aio.kv.state_machine import KVCommand, KVOp, KVStateMachine, SessionExpired, encode_command
from phalanx_aio.kv.stream_codec import KV_STREAM_METHOD
from phalanx_aio.node.raft_node import RaftNode

__all__ = ["DEFAULT_QUOTA_BYTES", "MIN_REQUEST_BYTES", "KVService"]

log = logging.getLogger("phalanx_aio.kv")

_R = TypeVar("_R")
_MAX_ID_BYTES = 255
MIN_REQUEST_BYTES = 64 << 10
DEFAULT_QUOTA_BYTES = 512 << 20
"""The default quota of :class:`KVService`: well under SQLite's 1 GB limit on one value, which
a snapshot of the whole state must fit."""
"""The smallest ``max_request_bytes`` a :class:`KVService` accepts (a client's stream batches
stay below it)."""


class _Refuse(Exception):
    """Answer with ``code`` and ``text`` instead of a result."""

    def __init__(self, code: ErrorCode, text: str, leader: str | None = None) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.leader = leader


class KVService(StreamServing):
    """The ``phalanx.v1.KV`` gRPC service of one node.

    ``node`` may be given now or later with :meth:`attach`; until then every request is answered
    ``NOT_APPLIED``. Keys may hold up to ``max_key_bytes`` bytes (and may not be empty), values
    up to ``max_value_bytes``; larger ones are answered ``INVALID_ARGUMENT``. A gRPC request
    message (a unary request, or one batch on the ``Stream`` call) may hold at most
    ``max_request_bytes`` (at least :data:`MIN_REQUEST_BYTES`); a larger one ends its call with
    the gRPC status ``RESOURCE_EXHAUSTED`` before it is read, and nothing of it is applied.
    One ``Stream`` call may have ``max_stream_inflight`` requests under way (read, and not yet
    answered to the client); the service reads no more of it until some are.

    Buffered bytes are bounded (see ``docs/operations.md``, "Limits and their defaults"): one
    answer message of a ``Stream`` call holds at most ``max_stream_buffer_bytes`` (or one
    answer); the calls of one connection may hold ``max_connection_buffer_bytes`` and all calls
    ``max_buffer_bytes`` of answers being written and of requests being received. Over a limit,
    the call that made no progress for the longest time (usually a client that does not read
    its answers) is ended with ``RESOURCE_EXHAUSTED``, as is a call whose buffered bytes do not
    move for ``stall_timeout`` seconds (a request body that stops arriving, answers never read);
    a unary call shed after its request was handled ends with ``UNAVAILABLE`` instead (it may
    have been applied). The node and the other calls carry on; :meth:`buffer_stats` counts it.

    Error mapping: :class:`~phalanx_aio.errors.NotLeader` -> ``NOT_LEADER`` (with the leader's
    id and address), other :class:`~phalanx_aio.errors.NotApplied` -> ``NOT_APPLIED`` (or
    ``REJECTED`` for a refused membership change or transfer),
    :class:`~phalanx_aio.kv.state_machine.SessionExpired` -> ``SESSION_EXPIRED``,
    :class:`~phalanx_aio.errors.Timeout`, other :class:`~phalanx_aio.errors.OutcomeUnknown` and
    :class:`~phalanx_aio.errors.ClosedError` -> ``UNKNOWN``, anything unexpected -> ``INTERNAL``.
    """

    def __init__(
        self,
        node: RaftNode | None = None,
        *,
        max_key_bytes: int = 64 << 10,
        max_value_bytes: int = 1 << 20,
        max_request_bytes: int = 4 << 20,
        max_stream_inflight: int = 10_000,
        max_stream_buffer_bytes: int = 4 << 20,
        max_connection_buffer_bytes: int = 64 << 20,
        max_buffer_bytes: int = 256 << 20,
        stall_timeout: float = 30.0,
        quota_bytes: int = DEFAULT_QUOTA_BYTES,
    ) -> None:
        if max_key_bytes < 1 or max_value_bytes < 0:
            raise LocalError("max_key_bytes must be >= 1 and max_value_bytes >= 0")
        if type(max_request_bytes) is not int or max_request_bytes < MIN_REQUEST_BYTES:
            raise LocalError(
                f"max_request_bytes must be an int of at least {MIN_REQUEST_BYTES}, not {max_request_bytes!r}"
            )
        self._node: RaftNode | None = None
        if type(max_stream_inflight) is not int or max_stream_inflight < 1:
            raise LocalError(f"max_stream_inflight must be a positive int, not {max_stream_inflight!r}")
        for name, value in (
            ("max_stream_buffer_bytes", max_stream_buffer_bytes),
            ("max_connection_buffer_bytes", max_connection_buffer_bytes),
            ("max_buffer_bytes", max_buffer_bytes),
        ):
            if type(value) is not int or value < 1:
                raise LocalError(f"{name} must be a positive int, not {value!r}")
        if type(quota_bytes) is not int or quota_bytes < 0:
            raise LocalError(f"quota_bytes must be an int >= 0 (0: no quota), not {quota_bytes!r}")
        self.quota_bytes = quota_bytes
        """The quota (0: none): past it, writes that add data are refused (``QUOTA_EXCEEDED``)."""
        if not isinstance(stall_timeout, int | float) or not stall_timeout > 0:
            raise LocalError(f"stall_timeout must be a positive number of seconds, not {stall_timeout!r}")
        self.max_stream_buffer_bytes = max_stream_buffer_bytes
        """The answers one ``Stream`` message carries at most, in bytes (at least one answer)."""
        self._budget = BufferBudget(
            per_connection=max_connection_buffer_bytes,
            total=max_buffer_bytes,
            stall_timeout=float(stall_timeout),
            what="KV service",
        )
        self.max_request_bytes = max_request_bytes
        """The largest gRPC request message accepted, in bytes."""
        self.max_stream_inflight = max_stream_inflight
        # The stream proposes each batch's writes together, bypassing handle(); a subclass that
        # overrides handle() (to observe requests, say) gets one handle() call per request.
        self._batch_writes = type(self).handle is KVService.handle
        """Requests one ``Stream`` call may have under way; beyond it the service stops reading
        that call (HTTP/2 flow control then holds the client back) until some finish."""
        self.rejections: dict[str, int] = {"too_large": 0, "malformed": 0}
        """Calls ended with a gRPC error status because of bad input: ``too_large`` (a message
        over ``max_request_bytes``), ``malformed`` (an unreadable ``Stream`` batch)."""
        self.max_key_bytes = max_key_bytes
        """The longest key accepted, in bytes."""
        self.max_value_bytes = max_value_bytes
        """The longest value accepted, in bytes."""
        self._handlers: dict[type[Any], Callable[[Any, float | None], Awaitable[Any]]] = {
            PutRequest: self._put,
            GetRequest: self._get,
            DeleteRequest: self._delete,
            CompareAndSetRequest: self._cas,
            StatusRequest: self._status,
            MemberListRequest: self._member_list,
            MemberAddRequest: self._member_add,
            MemberRemoveRequest: self._member_remove,
            MemberPromoteRequest: self._member_promote,
            MemberChangeRequest: self._member_change,
            TransferLeaderRequest: self._transfer,
        }
        if node is not None:
            self.attach(node)

    def buffer_stats(self) -> dict[str, int]:
        """``buffered_bytes`` (held now by every call) and ``shed_<reason>``: calls ended to
        keep the buffers bounded, by reason (``connection_bytes``, ``total_bytes``,
        ``stalled``); also ``quota_used_bytes`` and ``quota_alarm`` (1 while writes that add
        data are refused, see :attr:`quota_bytes`)."""
        budget = self._budget
        used = self.quota_used()
        out = {
            "buffered_bytes": budget.held,
            "quota_used_bytes": used,
            "quota_alarm": int(self.quota_bytes > 0 and used >= self.quota_bytes),
        }
        out.update((f"shed_{reason}", budget.shed[reason]) for reason in SHED_REASONS)
        return out

    @property
    def node(self) -> RaftNode | None:
        """The node this service answers for, once attached."""
        return self._node

    def attach(self, node: RaftNode) -> None:
        """Serve requests with ``node`` (started or not). Its state machine must be a
        :class:`~phalanx_aio.kv.state_machine.KVStateMachine`; a service serves one node."""
        if not isinstance(node.state_machine, KVStateMachine):
            raise LocalError(
                f"KVService needs a node whose state machine is a KVStateMachine, "
                f"not {type(node.state_machine).__name__}"
            )
        if self._node is not None and self._node is not node:
            raise LocalError(f"this KVService already serves node {self._node.id!r}")
        self._node = node

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        """gRPC method path -> grpclib handler (raw bytes in and out, decoded by the codec)."""
        handlers = {
            path: grpclib.const.Handler(
                functools.partial(self._serve, path), Cardinality.UNARY_UNARY, WireBytes, WireBytes
            )
            for path in KV_METHODS
        }
        handlers[KV_STREAM_METHOD] = grpclib.const.Handler(
            self._serve_stream, Cardinality.STREAM_STREAM, WireBytes, WireBytes
        )
        return handlers

    # ----------------------------------------------------------------- dispatch

    async def handle(self, request: KVRequest, *, timeout: float | None = None) -> KVResponse:
        """Answer one request (what the gRPC handlers do after decoding). Never raises for bad
        input or a failed operation: the response header says what happened. ``timeout`` bounds
        the wait for a proposal, read or membership change (default: the node's)."""
        handler = self._handlers.get(type(request))
        if handler is None:
            raise LocalError(f"{type(request).__name__} is not a KV service request")
        response_type: type[Any] = _RESPONSE_TYPES[type(request)]
        node = self._node
        try:
            if node is None:
                raise _Refuse(ErrorCode.NOT_APPLIED, "the KV service has no node attached yet")
            header = request.header
            if header.cluster_id != node.cluster_id:
                raise _Refuse(
                    ErrorCode.WRONG_CLUSTER,
                    f"cluster {header.cluster_id[:100]!r} is not this node's cluster {node.cluster_id!r}",
                )
            response: KVResponse = await handler(request, timeout)
            return response
        except _Refuse as refusal:
            result: KVResponse = response_type(
                header=self._header(refusal.code, refusal.text, leader=refusal.leader)
            )
            return result
        except Exception:
            log.exception("KV service: unexpected error answering %s", type(request).__name__)
            failed: KVResponse = response_type(
                header=self._header(ErrorCode.INTERNAL, "internal server error")
            )
            return failed

    async def _serve(self, path: str, stream: _Stream) -> None:
        """One unary call: decode, answer, encode."""
        with self._budget.call(stream) as call:
            request_type, response_type = KV_METHODS[path]
            data = await self._recv(stream, call)
            if data is None:
                self._malformed("no request message")
            timeout: float | None = None
            if stream.deadline is not None:
                timeout = answer_within(stream.deadline.time_remaining())
            response: KVResponse
            try:
                request = decode_kv_message(request_type, data, max_bytes=self.max_request_bytes)
            except ProtocolError as exc:
                self.rejections["malformed"] += 1
                response = response_type(header=self._header(ErrorCode.INVALID_ARGUMENT, str(exc)[:300]))
            else:
                response = await self.handle(request, timeout=timeout)
            answer = encode_kv_message(response)
            # Shed from here on, the request may have been applied: not RESOURCE_EXHAUSTED,
            # which tells the client that the node did nothing.
            call.status = Status.UNAVAILABLE
            call.take(len(answer))
            await stream.send_message(WireBytes(answer))
            call.give(len(answer))

    def _malformed(self, text: str) -> NoReturn:
        self.rejections["malformed"] += 1
        raise GRPCError(Status.INVALID_ARGUMENT, text)

    def _too_large(self, length: int) -> NoReturn:
        self.rejections["too_large"] += 1
        raise GRPCError(
            Status.RESOURCE_EXHAUSTED,
            f"request message of {length} bytes, over this node's limit of {self.max_request_bytes}",
        )

    # ----------------------------------------------------------------- helpers

    def _require_node(self) -> RaftNode:
        node = self._node
        if node is None:  # pragma: no cover - handle() checks first
            raise _Refuse(ErrorCode.NOT_APPLIED, "the KV service has no node attached yet")
        return node

    def _header(
        self, code: ErrorCode = ErrorCode.OK, message: str = "", *, leader: str | None = None
    ) -> ResponseHeader:
        node = self._node
        if node is None:
            return ResponseHeader(code, message)
        try:
            st = node.status()
        except PhalanxError:  # not started, or closed
            return ResponseHeader(code, message)
        hint = leader or st.leader or ""
        address = st.core.conf.context(hint).decode("utf-8", "replace") if hint else ""
        return ResponseHeader(code, message, hint, address, st.term, st.applied)

    def _members(self, *, with_match: bool = False) -> tuple[Member, ...]:
        """The configuration; ``with_match``: with each member's match index, on a leader."""
        core = self._require_node().status().core
        conf, progress = core.conf, core.progress if with_match else {}
        return tuple(
            Member(
                nid,
                conf.context(nid).decode("utf-8", "replace"),
                nid in conf.learners,
                progress[nid].match if nid in progress else 0,
            )
            for nid in sorted(conf.members())
        )

    def _check_key(self, key: bytes) -> None:
        if not key:
            raise _Refuse(ErrorCode.INVALID_ARGUMENT, "the key is empty")
        if len(key) > self.max_key_bytes:
            raise _Refuse(
                ErrorCode.INVALID_ARGUMENT,
                f"the key is {len(key)} bytes, over the limit of {self.max_key_bytes}",
            )

    def _check_value(self, value: bytes | None, what: str) -> None:
        if value is not None and len(value) > self.max_value_bytes:
            raise _Refuse(
                ErrorCode.INVALID_ARGUMENT,
                f"the {what} is {len(value)} bytes, over the limit of {self.max_value_bytes}",
            )

    @staticmethod
    def _check_session(h: RequestHeader) -> None:
        if not h.client_id:
            raise _Refuse(ErrorCode.INVALID_ARGUMENT, "a write needs a client_id (its session)")
        if len(h.client_id.encode("utf-8", "surrogatepass")) > _MAX_ID_BYTES:
            raise _Refuse(ErrorCode.INVALID_ARGUMENT, f"client_id is over {_MAX_ID_BYTES} bytes")
        if h.sequence == 0:
            raise _Refuse(ErrorCode.INVALID_ARGUMENT, "a write needs a sequence number of 1 or more")
        if h.acked_sequence >= h.sequence:
            raise _Refuse(
                ErrorCode.INVALID_ARGUMENT,
                f"acked_sequence {h.acked_sequence} must be below the request's sequence {h.sequence}",
            )

    def _require_leader(self) -> RaftNode:
        node = self._require_node()
        if not node.is_leader:
            raise _Refuse(ErrorCode.NOT_LEADER, f"{node.id} is not the leader", node.leader_id)
        return node

    async def _run(self, op: Callable[[], Awaitable[_R]], *, membership: bool = False) -> _R:
        """Await ``op`` and turn the library's outcome errors into response codes."""
        try:
            return await op()
        except Exception as exc:
            refusal = _refusal(exc, membership)
            if refusal is None:
                raise
            raise refusal from None

    def quota_used(self) -> int:
        """What counts against the quota now: the bytes of the keys and values the state
        machine holds, plus the log applied since the node's last snapshot (0 without a node)."""
        node = self._node
        if node is None:
            return 0
        return int(getattr(node.state_machine, "data_bytes", 0)) + node.log_bytes

    @property
    def quota_alarm(self) -> bool:
        """True while writes that add data are refused for the quota."""
        return self.quota_bytes > 0 and self.quota_used() >= self.quota_bytes

    def _check_quota(self) -> None:
        if self.quota_bytes:
            used = self.quota_used()
            if used >= self.quota_bytes:
                raise _Refuse(
                    ErrorCode.QUOTA_EXCEEDED,
                    f"quota exceeded: {used} of {self.quota_bytes} bytes used (data and log since the "
                    "last snapshot); not applied. Delete keys to free space; the alarm clears once "
                    "the data and the compacted log are under the quota",
                )

    def _command(self, req: _WriteRequest) -> KVCommand:
        """The state machine command of a write, once the request is found valid (else
        :class:`_Refuse`)."""
        h = req.header
        self._check_session(h)
        self._check_key(req.key)
        if not isinstance(req, DeleteRequest):
            self._check_quota()
        if isinstance(req, PutRequest):
            self._check_value(req.value, "value")
            return KVCommand(KVOp.PUT, req.key, req.value, None, h.client_id, h.sequence, h.acked_sequence)
        if isinstance(req, DeleteRequest):
            return KVCommand(KVOp.DELETE, req.key, b"", None, h.client_id, h.sequence, h.acked_sequence)
        self._check_value(req.value, "value")
        self._check_value(req.expected, "expected value")
        return KVCommand(
            KVOp.CAS, req.key, req.value, req.expected, h.client_id, h.sequence, h.acked_sequence
        )

    @staticmethod
    def _write_response(req: _WriteRequest, result: object, header: ResponseHeader) -> KVResponse:
        """The answer to a write the state machine applied with ``result``."""
        if isinstance(req, PutRequest):
            return PutResponse(header, result if isinstance(result, bytes) else None)
        if isinstance(req, DeleteRequest):
            return DeleteResponse(header, result is True)
        current = result if isinstance(result, bytes) else None
        return CompareAndSetResponse(header, current == req.expected, current)

    async def _write(self, req: _WriteRequest, timeout: float | None) -> Any:
        data = encode_command(self._command(req))
        node = self._require_leader()
        result = await self._run(lambda: node.propose(data, timeout=timeout))
        return self._write_response(req, result, self._header())

    async def _write_batch(self, writes: list[tuple[_WriteRequest, KVCommand, int]]) -> list[KVResponse]:
        """Answer valid writes (each with its command and its client's timeout in ms, 0: the
        node's default) through one :meth:`RaftNode.propose_many`: their entries are appended
        together, and each is still applied, deduplicated and answered on its own."""
        node = self._require_node()
        data = [encode_command(cmd) for _, cmd, _ in writes]
        waits = [t for _, _, t in writes if t]
        timeout = answer_within(min(waits) / 1000) if waits else None
        try:
            results = await node.propose_many(data, timeout=timeout, return_exceptions=True)
        except Exception as exc:  # the whole batch refused (not the leader, overloaded), or closed
            refusal = _refusal(exc)
            if refusal is None:
                log.exception("KV service: unexpected error proposing a batch of %d writes", len(writes))
                refusal = _Refuse(ErrorCode.INTERNAL, "internal server error")
            header = self._header(refusal.code, refusal.text, leader=refusal.leader)
            return [_RESPONSE_TYPES[type(req)](header) for req, _, _ in writes]
        ok = self._header()  # after every write was applied: its index covers them all
        out: list[KVResponse] = []
        for (req, _, _), result in zip(writes, results, strict=True):
            if isinstance(result, BaseException):
                refusal = _refusal(result)
                if refusal is None:
                    log.warning("KV service: a write failed: %r", result)
                    refusal = _Refuse(ErrorCode.INTERNAL, "internal server error")
                failed: KVResponse = _RESPONSE_TYPES[type(req)](
                    self._header(refusal.code, refusal.text, leader=refusal.leader)
                )
                out.append(failed)
            else:
                out.append(self._write_response(req, result, ok))
        return out

    def _check_write(self, req: _WriteRequest) -> KVCommand | KVResponse:
        """The command to propose for ``req`` in a batch, or the refusal to send instead (the
        checks :meth:`handle` makes before proposing)."""
        try:
            node = self._node
            if node is None:
                raise _Refuse(ErrorCode.NOT_APPLIED, "the KV service has no node attached yet")
            if req.header.cluster_id != node.cluster_id:
                raise _Refuse(
                    ErrorCode.WRONG_CLUSTER,
                    f"cluster {req.header.cluster_id[:100]!r} is not this node's cluster {node.cluster_id!r}",
                )
            cmd = self._command(req)
            self._require_leader()
        except _Refuse as refusal:
            refused: KVResponse = _RESPONSE_TYPES[type(req)](
                self._header(refusal.code, refusal.text, leader=refusal.leader)
            )
            return refused
        return cmd

    # ----------------------------------------------------------------- the methods

    async def _put(self, req: PutRequest, timeout: float | None) -> PutResponse:
        response: PutResponse = await self._write(req, timeout)
        return response

    async def _delete(self, req: DeleteRequest, timeout: float | None) -> DeleteResponse:
        response: DeleteResponse = await self._write(req, timeout)
        return response

    async def _cas(self, req: CompareAndSetRequest, timeout: float | None) -> CompareAndSetResponse:
        response: CompareAndSetResponse = await self._write(req, timeout)
        return response

    async def _get(self, req: GetRequest, timeout: float | None) -> GetResponse:
        self._check_key(req.key)
        node = self._require_node()
        key = req.key
        if req.consistency is ReadConsistency.STALE:
            try:
                node.status()  # refuses a node that is not running
            except ClosedError as exc:
                raise _Refuse(ErrorCode.NOT_APPLIED, str(exc)) from None
            sm = node.state_machine
            assert isinstance(sm, KVStateMachine)
            return GetResponse(self._header(), sm.get(key))

        def read(sm: KVStateMachine) -> bytes | None:
            return sm.get(key)

        value = await self._run(lambda: node.read(read, timeout=timeout))
        return GetResponse(self._header(), value)

    async def _status(self, req: StatusRequest, timeout: float | None) -> StatusResponse:
        node = self._require_node()
        try:
            st = node.status()
        except ClosedError as exc:
            raise _Refuse(ErrorCode.NOT_APPLIED, str(exc)) from None
        return StatusResponse(
            self._header(),
            node_id=st.id,
            role=st.role,
            term=st.term,
            leader_id=st.leader or "",
            commit_index=st.commit,
            applied_index=st.applied,
            last_index=st.last_index,
            members=self._members(with_match=True),
            quota_alarm=self.quota_alarm,
            quota_used_bytes=self.quota_used(),
        )

    async def _member_list(self, req: MemberListRequest, timeout: float | None) -> MemberListResponse:
        self._require_leader()
        return MemberListResponse(self._header(), self._members())

    async def _member_add(self, req: MemberAddRequest, timeout: float | None) -> MemberChangeResponse:
        _check_node_id(req.node_id)
        if not req.address:
            raise _Refuse(ErrorCode.INVALID_ARGUMENT, "a new member needs an address")
        node = self._require_leader()
        await self._run(
            lambda: node.add_member(req.node_id, req.address, voter=not req.learner, timeout=timeout),
            membership=True,
        )
        return MemberChangeResponse(self._header(), self._members())

    async def _member_remove(self, req: MemberRemoveRequest, timeout: float | None) -> MemberChangeResponse:
        _check_node_id(req.node_id)
        node = self._require_leader()
        await self._run(lambda: node.remove_member(req.node_id, timeout=timeout), membership=True)
        return MemberChangeResponse(self._header(), self._members())

    async def _member_promote(self, req: MemberPromoteRequest, timeout: float | None) -> MemberChangeResponse:
        _check_node_id(req.node_id)
        node = self._require_leader()
        await self._run(lambda: node.promote(req.node_id, timeout=timeout), membership=True)
        return MemberChangeResponse(self._header(), self._members())

    async def _member_change(self, req: MemberChangeRequest, timeout: float | None) -> MemberChangeResponse:
        for nid in [m.node_id for m in req.add] + list(req.promote) + list(req.remove):
            _check_node_id(nid)
        if any(not m.address for m in req.add):
            raise _Refuse(ErrorCode.INVALID_ARGUMENT, "a new member needs an address")
        if not (req.add or req.promote or req.remove):
            raise _Refuse(ErrorCode.INVALID_ARGUMENT, "a membership change needs at least one change")
        node = self._require_leader()
        voters = {m.node_id: m.address for m in req.add if not m.learner}
        learners = {m.node_id: m.address for m in req.add if m.learner}
        await self._run(
            lambda: node.change_members(
                add=voters, add_learners=learners, promote=req.promote, remove=req.remove, timeout=timeout
            ),
            membership=True,
        )
        return MemberChangeResponse(self._header(), self._members())

    async def _transfer(self, req: TransferLeaderRequest, timeout: float | None) -> TransferLeaderResponse:
        node = self._require_leader()
        target = req.target or None
        leader = await self._run(lambda: node.transfer_leadership(target, timeout=timeout), membership=True)
        return TransferLeaderResponse(self._header(leader=leader), leader)


def _refusal(exc: BaseException, membership: bool = False) -> _Refuse | None:
    """The response code for one of the library's outcome errors (``None``: not one of them)."""
    if isinstance(exc, NotLeader):
        return _Refuse(ErrorCode.NOT_LEADER, str(exc), exc.leader_id)
    if isinstance(exc, ProposalDropped):
        return _Refuse(ErrorCode.REJECTED if membership else ErrorCode.NOT_APPLIED, str(exc))
    if isinstance(exc, NotApplied):
        return _Refuse(ErrorCode.NOT_APPLIED, str(exc))
    if isinstance(exc, SessionExpired):
        return _Refuse(ErrorCode.SESSION_EXPIRED, str(exc))
    if isinstance(exc, OutcomeUnknown | ClosedError):
        return _Refuse(ErrorCode.UNKNOWN, str(exc))
    return None


def _check_node_id(node_id: str) -> None:
    if not node_id:
        raise _Refuse(ErrorCode.INVALID_ARGUMENT, "the node id is empty")
    if len(node_id.encode("utf-8", "surrogatepass")) > _MAX_ID_BYTES:
        raise _Refuse(ErrorCode.INVALID_ARGUMENT, f"the node id is over {_MAX_ID_BYTES} bytes")
