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
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpclib.const
import grpclib.server
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError

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
from phalanx_aio.node.raft_node import RaftNode
from phalanx_aio.transport.codec import WireBytes, decode_kv_message, encode_kv_message

__all__ = ["KVService"]

log = logging.getLogger("phalanx_aio.kv")

_R = TypeVar("_R")
_Stream = grpclib.server.Stream[WireBytes, WireBytes]
_MAX_ID_BYTES = 255


class _Refuse(Exception):
    """Answer with ``code`` and ``text`` instead of a result."""

    def __init__(self, code: ErrorCode, text: str, leader: str | None = None) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.leader = leader


class KVService:
    """The ``phalanx.v1.KV`` gRPC service of one node.

    ``node`` may be given now or later with :meth:`attach`; until then every request is answered
    ``NOT_APPLIED``. Keys may hold up to ``max_key_bytes`` bytes (and may not be empty), values
    up to ``max_value_bytes``; larger ones are answered ``INVALID_ARGUMENT``.

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
    ) -> None:
        if max_key_bytes < 1 or max_value_bytes < 0:
            raise LocalError("max_key_bytes must be >= 1 and max_value_bytes >= 0")
        self._node: RaftNode | None = None
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
            TransferLeaderRequest: self._transfer,
        }
        if node is not None:
            self.attach(node)

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
        return {
            path: grpclib.const.Handler(
                functools.partial(self._serve, path), Cardinality.UNARY_UNARY, WireBytes, WireBytes
            )
            for path in KV_METHODS
        }

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
        request_type, response_type = KV_METHODS[path]
        message = await stream.recv_message()
        if message is None:
            raise GRPCError(Status.INVALID_ARGUMENT, "no request message")
        timeout: float | None = None
        if stream.deadline is not None:
            left = stream.deadline.time_remaining()
            timeout = max(left - min(0.1, left / 10), 0.001)  # answer just before the client gives up
        response: KVResponse
        try:
            request = decode_kv_message(request_type, message.data)
        except ProtocolError as exc:
            response = response_type(header=self._header(ErrorCode.INVALID_ARGUMENT, str(exc)[:300]))
        else:
            response = await self.handle(request, timeout=timeout)
        await stream.send_message(WireBytes(encode_kv_message(response)))

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

    def _members(self) -> tuple[Member, ...]:
        conf = self._require_node().status().core.conf
        return tuple(
            Member(nid, conf.context(nid).decode("utf-8", "replace"), nid in conf.learners)
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
        except NotLeader as exc:
            raise _Refuse(ErrorCode.NOT_LEADER, str(exc), exc.leader_id) from None
        except ProposalDropped as exc:
            raise _Refuse(ErrorCode.REJECTED if membership else ErrorCode.NOT_APPLIED, str(exc)) from None
        except NotApplied as exc:
            raise _Refuse(ErrorCode.NOT_APPLIED, str(exc)) from None
        except SessionExpired as exc:
            raise _Refuse(ErrorCode.SESSION_EXPIRED, str(exc)) from None
        except (OutcomeUnknown, ClosedError) as exc:
            raise _Refuse(ErrorCode.UNKNOWN, str(exc)) from None

    async def _write(self, h: RequestHeader, cmd: KVCommand, timeout: float | None) -> object:
        self._check_session(h)
        self._check_key(cmd.key)
        self._check_value(cmd.value, "value")
        self._check_value(cmd.expected, "expected value")
        node = self._require_leader()
        data = encode_command(cmd)
        return await self._run(lambda: node.propose(data, timeout=timeout))

    # ----------------------------------------------------------------- the methods

    async def _put(self, req: PutRequest, timeout: float | None) -> PutResponse:
        h = req.header
        cmd = KVCommand(KVOp.PUT, req.key, req.value, None, h.client_id, h.sequence, h.acked_sequence)
        previous = await self._write(h, cmd, timeout)
        return PutResponse(self._header(), previous if isinstance(previous, bytes) else None)

    async def _delete(self, req: DeleteRequest, timeout: float | None) -> DeleteResponse:
        h = req.header
        cmd = KVCommand(KVOp.DELETE, req.key, b"", None, h.client_id, h.sequence, h.acked_sequence)
        existed = await self._write(h, cmd, timeout)
        return DeleteResponse(self._header(), existed is True)

    async def _cas(self, req: CompareAndSetRequest, timeout: float | None) -> CompareAndSetResponse:
        h = req.header
        cmd = KVCommand(KVOp.CAS, req.key, req.value, req.expected, h.client_id, h.sequence, h.acked_sequence)
        found = await self._write(h, cmd, timeout)
        current = found if isinstance(found, bytes) else None
        return CompareAndSetResponse(self._header(), current == req.expected, current)

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
            members=self._members(),
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

    async def _transfer(self, req: TransferLeaderRequest, timeout: float | None) -> TransferLeaderResponse:
        node = self._require_leader()
        target = req.target or None
        leader = await self._run(lambda: node.transfer_leadership(target, timeout=timeout), membership=True)
        return TransferLeaderResponse(self._header(leader=leader), leader)


def _check_node_id(node_id: str) -> None:
    if not node_id:
        raise _Refuse(ErrorCode.INVALID_ARGUMENT, "the node id is empty")
    if len(node_id.encode("utf-8", "surrogatepass")) > _MAX_ID_BYTES:
        raise _Refuse(ErrorCode.INVALID_ARGUMENT, f"the node id is over {_MAX_ID_BYTES} bytes")


_RESPONSE_TYPES: dict[type[Any], type[Any]] = dict(KV_METHODS.values())
