"""An asyncio client of the replicated KV service, with exactly-once writes.

:class:`KVClient` talks to the ``phalanx.v1.KV`` service of a cluster's nodes over gRPC (one
grpclib connection per endpoint, reused). It finds the leader by itself: it tries the
endpoints, follows ``NOT_LEADER`` answers to the leader's address, and retries after connection
failures and elections until its deadline.

Writes (:meth:`~KVClient.put`, :meth:`~KVClient.delete`, :meth:`~KVClient.cas`) are made in a
*client session*: the client numbers them 1, 2, 3, ... under its ``client_id``, and a retry
repeats the number, so the cluster's state machine applies each write at most once however
often it is retried. That gives every call a precise outcome:

* it **returns**: the operation took effect exactly once (for a read: the value is current, at
  the requested consistency);
* it raises :class:`~phalanx_aio.errors.NotApplied` (:class:`Unavailable`,
  :class:`RequestRefused`, :class:`~phalanx_aio.errors.NotLeader`): the operation certainly did
  not take effect and never will;
* it raises :class:`~phalanx_aio.errors.OutcomeUnknown` (:class:`~phalanx_aio.errors.Timeout`,
  :class:`~phalanx_aio.kv.state_machine.SessionExpired`): the write may or may not have taken
  effect (at most once); read the key to find out.

Puts, gets, deletes and compare-and-sets travel on one long-lived ``Stream`` call per node:
every request gets an id, the requests made during one turn of the event loop go out in one
message, and the answers come back in batches, matched by id. Many concurrent calls therefore
share a few messages instead of paying for one gRPC call each. Requests too large for a stream
batch, and the cluster operations, use the unary methods.

``docs/kv.md`` has the whole table.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import ssl as _ssl
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Literal, TypeVar

from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError

from phalanx_aio._deadlines import Deadlines
from phalanx_aio._grpc import WireBytes, parse_address
from phalanx_aio.errors import (
    ClosedError,
    LocalError,
    NotApplied,
    NotLeader,
    OutcomeUnknown,
    PhalanxError,
    ProtocolError,
    Timeout,
)
from phalanx_aio.kv._client_stream import AttemptFailed as _AttemptFailed
from phalanx_aio.kv._client_stream import StreamConn as _StreamConn
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
    StatusRequest,
    StatusResponse,
    TransferLeaderRequest,
    TransferLeaderResponse,
)
from phalanx_aio.kv.state_machine import SessionExpired
from phalanx_aio.kv.stream_codec import KVStreamCodec

__all__ = ["Consistency", "KVClient", "QuotaExceeded", "RequestRefused", "Unavailable"]

Consistency = Literal["linearizable", "lease", "stale"]
"""The read consistencies :meth:`KVClient.get` accepts (see ``docs/kv.md``)."""

_CONSISTENCY: Final[dict[str, ReadConsistency]] = {
    "linearizable": ReadConsistency.LINEARIZABLE,
    "lease": ReadConsistency.LEASE,
    "stale": ReadConsistency.STALE,
}
_PATHS: Final[dict[type[Any], tuple[str, type[Any]]]] = {
    req: (path, resp) for path, (req, resp) in KV_METHODS.items()
}
_R = TypeVar("_R")
_STREAM_TYPES: Final = frozenset((PutRequest, GetRequest, DeleteRequest, CompareAndSetRequest))
_STREAM_ITEM_MAX: Final = 16 << 10
"""A request whose stream item is larger travels as a unary call instead."""
_MAX_TIMEOUT_MS: Final = (1 << 32) - 1


class Unavailable(NotApplied):
    """No node could serve the request before the deadline (unreachable, no leader able to
    commit, or every answer said "not applied"), and no attempt of it can take effect: the
    operation certainly did not happen. Safe to retry."""


class RequestRefused(NotApplied):
    """The cluster refused the request: ``code`` is ``WRONG_CLUSTER``, ``INVALID_ARGUMENT`` or
    ``REJECTED`` (a refused membership change or transfer), or ``SESSION_EXPIRED`` for a
    request without a session. Certainly not applied; the same request would be refused again."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}" if message else code.name)
        self.code = code
        """Why the request was refused."""


class QuotaExceeded(RequestRefused):
    """The cluster is at its quota (``QUOTA_EXCEEDED``): a write that adds data is refused,
    certainly not applied. Deletes still work; writes are taken again once deletes (and the
    compaction of the log) bring the data under the quota."""


class _Kind:
    """What a call is, for the retry rules: a read (no effect), a session write, or an admin
    change (membership, transfer: not deduplicated, so never resent once it may have arrived)."""

    READ: Final = 0
    WRITE: Final = 1
    ADMIN: Final = 2


@dataclass(slots=True)
class _Session:
    """One client session: its id, the next sequence number and the acknowledgement horizon."""

    client_id: str
    next_seq: int = 1
    acked: int = 0
    """Every number at or below this one is finished (answered or given up)."""
    finished: set[int] = field(default_factory=set)
    """Finished numbers above ``acked``."""

    def allocate(self) -> int:
        seq = self.next_seq
        self.next_seq += 1
        return seq

    def finish(self, seq: int) -> None:
        if seq <= self.acked:
            return
        self.finished.add(seq)
        while self.acked + 1 in self.finished:
            self.acked += 1
            self.finished.discard(self.acked)


class _NoAnswer(Exception):
    """A stream request's deadline passed (set on its future by the shared deadlines)."""


def _no_answer(what: str, limit: float) -> _NoAnswer:
    return _NoAnswer(f"no answer within {limit} s")


def _split_address(address: str) -> tuple[str, int]:
    try:
        return parse_address(address)
    except ValueError as exc:
        raise LocalError(f"invalid endpoint: {exc}") from None


def _key(value: bytes | str, what: str = "key") -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise LocalError(f"{what} must be bytes or str, not {type(value).__name__}")


class KVClient:
    """A client of a phalanx_aio KV cluster. Use it as ``async with KVClient([...]) as kv:``.

    * ``endpoints``: the ``host:port`` addresses of some or all of the nodes (more are learned
      from ``NOT_LEADER`` redirections).
    * ``cluster_id``: must match the cluster's; a node of another cluster refuses every request.
    * ``client_id``: the id of the write session; by default a random UUID. It must never be
      used by another client, nor by this program again after a restart (the cluster would
      answer a new write with the remembered result of an old one of the same number).
    * ``timeout``: the time one call may take, retries included, in seconds.
    * ``ssl``: a client TLS context (for example :func:`phalanx_aio.transport.grpc.client_ssl_context`).
    * ``stream``: send puts, gets, deletes and compare-and-sets on one long-lived ``Stream`` call
      per node, batched (the default); false sends each as its own unary call.
    * ``max_request_bytes``: a request whose encoding is larger is refused at once with
      :class:`RequestRefused` (``INVALID_ARGUMENT``), without sending it. Nodes refuse requests
      over their own limit (4 MiB by default) the same way.

    Calls may run concurrently; each write gets its own sequence number. The client is bound to
    the event loop it is first used on.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        cluster_id: str = "phalanx",
        client_id: str | None = None,
        timeout: float = 10.0,
        ssl: _ssl.SSLContext | None = None,
        stream: bool = True,
        max_request_bytes: int = 4 << 20,
    ) -> None:
        if isinstance(endpoints, str):
            raise LocalError("endpoints must be a sequence of host:port strings, not one string")
        eps = list(dict.fromkeys(endpoints))
        if not eps:
            raise LocalError("KVClient needs at least one endpoint")
        for ep in eps:
            _split_address(ep)
        if not timeout > 0:
            raise LocalError(f"timeout must be positive, not {timeout!r}")
        if client_id is not None and not client_id:
            raise LocalError("client_id must not be empty")
        if type(max_request_bytes) is not int or max_request_bytes < 1:
            raise LocalError(f"max_request_bytes must be a positive int, not {max_request_bytes!r}")
        self.endpoints: tuple[str, ...] = tuple(eps)
        """The endpoints given."""
        self.cluster_id = cluster_id
        """The cluster this client talks to."""
        self.timeout = float(timeout)
        """The deadline of one call, retries included, in seconds."""
        self.max_request_bytes = max_request_bytes
        """The largest request this client sends, in bytes."""
        self._ssl = ssl
        self._use_stream = bool(stream)
        self._streams: dict[str, _StreamConn] = {}
        self._ids = itertools.count(1)
        """Stream request ids (unique per client, so per stream too)."""
        self._deadlines = Deadlines(_no_answer)
        self._base_id = client_id or uuid.uuid4().hex
        self._renewals = 0
        self._session = _Session(self._base_id)
        self._channels: dict[str, Channel] = {}
        self._leader: str | None = None
        self._next = 0
        self._rng = random.Random()
        self._closed = False
        self._stream_codec = KVStreamCodec()  # encodes this client's Stream requests

    async def __aenter__(self) -> KVClient:
        """Return the client (connections open on first use)."""
        self._check_open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close the client."""
        await self.aclose()

    async def aclose(self) -> None:
        """Close every connection. Calls still running end with :class:`ClosedError` (or
        :class:`OutcomeUnknown` for a write that may have been sent). Idempotent."""
        self._closed = True
        streams = list(self._streams.values())
        self._streams.clear()
        for conn in streams:
            conn.task.cancel()
        for conn in streams:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(conn.task)
        channels = list(self._channels.values())
        self._channels.clear()
        for channel in channels:
            channel.close()

    @property
    def client_id(self) -> str:
        """The id of the current write session (it changes if the cluster expired the session)."""
        return self._session.client_id

    @property
    def leader(self) -> str | None:
        """The address of the leader as last seen, if any."""
        return self._leader

    # ----------------------------------------------------------------- the KV operations

    async def put(self, key: bytes | str, value: bytes | str) -> bytes | None:
        """Set ``key`` to ``value`` exactly once; return the previous value (``None`` if the key
        was absent). Raises as described in the module docstring."""
        k, v = _key(key), _key(value, "value")
        response: PutResponse = await self._call(lambda h: PutRequest(h, k, v), _Kind.WRITE)
        return response.previous

    async def get(self, key: bytes | str, *, consistency: Consistency = "linearizable") -> bytes | None:
        """The value of ``key`` (``None`` if absent).

        ``consistency``: ``"linearizable"`` (the default: a ReadIndex confirmed by the leader,
        reflecting every write that completed before the call), ``"lease"`` (the node's
        configured read path, a leader lease if the cluster runs ``read_mode="lease"``) or
        ``"stale"`` (the answering node's applied state, which may lag behind).
        """
        level = _CONSISTENCY.get(consistency)
        if level is None:
            raise LocalError(f"consistency must be one of {sorted(_CONSISTENCY)}, not {consistency!r}")
        k = _key(key)
        response: GetResponse = await self._call(lambda h: GetRequest(h, k, level), _Kind.READ)
        return response.value

    async def delete(self, key: bytes | str) -> bool:
        """Remove ``key`` exactly once; return whether it existed."""
        k = _key(key)
        response: DeleteResponse = await self._call(lambda h: DeleteRequest(h, k), _Kind.WRITE)
        return response.deleted

    async def cas(self, key: bytes | str, expected: bytes | str | None, value: bytes | str) -> bool:
        """Set ``key`` to ``value`` if it holds ``expected`` (``None``: if it is absent), exactly
        once; return whether it did. A failed comparison is not an error."""
        k, v = _key(key), _key(value, "value")
        e = None if expected is None else _key(expected, "expected")
        response: CompareAndSetResponse = await self._call(
            lambda h: CompareAndSetRequest(h, k, e, v), _Kind.WRITE
        )
        return response.swapped

    # ----------------------------------------------------------------- cluster operations

    async def status(self, endpoint: str | None = None) -> StatusResponse:
        """One node's view of the cluster: that of ``endpoint`` if given (asked directly, never
        redirected), otherwise of the leader or, if none answers, any node."""
        if endpoint is not None:
            _split_address(endpoint)
        response: StatusResponse = await self._call(StatusRequest, _Kind.READ, endpoint=endpoint)
        return response

    async def members(self) -> tuple[Member, ...]:
        """The configuration, as the leader knows it."""
        response: MemberListResponse = await self._call(MemberListRequest, _Kind.READ)
        return response.members

    async def add_member(self, node_id: str, address: str, voter: bool = False) -> tuple[Member, ...]:
        """Add ``node_id`` at ``address`` as a learner (or, with ``voter=True``, a voter); return
        the configuration once the change is committed. Not retried once it may have reached the
        leader: a lost answer raises :class:`OutcomeUnknown` (check :meth:`members`)."""
        response: MemberChangeResponse = await self._call(
            lambda h: MemberAddRequest(h, node_id, address, not voter), _Kind.ADMIN
        )
        return response.members

    async def remove_member(self, node_id: str) -> tuple[Member, ...]:
        """Remove the voter or learner ``node_id``; return the configuration once committed."""
        response: MemberChangeResponse = await self._call(
            lambda h: MemberRemoveRequest(h, node_id), _Kind.ADMIN
        )
        return response.members

    async def promote(self, node_id: str) -> tuple[Member, ...]:
        """Turn the learner ``node_id`` into a voter; return the configuration once committed."""
        response: MemberChangeResponse = await self._call(
            lambda h: MemberPromoteRequest(h, node_id), _Kind.ADMIN
        )
        return response.members

    async def change_members(
        self,
        *,
        add: Mapping[str, str] | None = None,
        add_learners: Mapping[str, str] | None = None,
        promote: Iterable[str] = (),
        remove: Iterable[str] = (),
    ) -> tuple[Member, ...]:
        """Change several members in one step (:meth:`RaftNode.change_members
        <phalanx_aio.node.RaftNode.change_members>`: joint consensus when the voters change);
        return the configuration once the change is complete. Like :meth:`add_member`, not
        retried once it may have reached the leader."""
        members = tuple(Member(n, a, False) for n, a in (add or {}).items())
        members += tuple(Member(n, a, True) for n, a in (add_learners or {}).items())
        promoted, removed = tuple(promote), tuple(remove)
        response: MemberChangeResponse = await self._call(
            lambda h: MemberChangeRequest(h, members, promoted, removed), _Kind.ADMIN
        )
        return response.members

    async def transfer_leader(self, to: str | None = None) -> str:
        """Hand leadership to the voter ``to`` (default: the leader picks the most up-to-date
        one) and return the new leader's id once it leads."""
        response: TransferLeaderResponse = await self._call(
            lambda h: TransferLeaderRequest(h, to or ""), _Kind.ADMIN
        )
        self._leader = response.header.leader_address or None
        return response.leader_id

    # ----------------------------------------------------------------- the retry loop

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the KV client is closed")

    def _renew(self, old: _Session) -> _Session:
        """Start a new session after the cluster forgot ``old`` (once, however many calls saw it)."""
        if self._session is old:
            self._renewals += 1
            self._session = _Session(f"{self._base_id}~{self._renewals}")
        return self._session

    def _first_target(self) -> str:
        return self._leader or self.endpoints[self._next % len(self.endpoints)]

    def _rotate(self, failed: str) -> str:
        """The next endpoint after ``failed`` fails (round robin over the given endpoints)."""
        if self._leader == failed:
            self._leader = None
        n = len(self.endpoints)
        for _ in range(n):
            self._next = (self._next + 1) % n
            if self.endpoints[self._next] != failed or n == 1:
                break
        return self.endpoints[self._next]

    async def _call(
        self, build: Callable[[RequestHeader], KVRequest], kind: int, *, endpoint: str | None = None
    ) -> Any:
        """Send one request until it gets a final answer or the deadline passes.

        A write keeps its session and sequence number through every retry. ``maybe_applied``
        becomes true once an attempt may have reached a server without a definite "not applied"
        answer; from then on, failing to get an answer means the outcome is unknown.
        """
        self._check_open()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        session = self._session if kind == _Kind.WRITE else None
        seq = session.allocate() if session is not None else 0
        maybe_applied = False
        last: PhalanxError = Unavailable("no endpoint answered")
        failures = redirects = 0
        target = endpoint or self._first_target()
        try:
            while True:
                if self._closed:
                    if maybe_applied:
                        raise OutcomeUnknown("the client was closed; the write's outcome is unknown")
                    raise ClosedError("the KV client is closed")
                left = deadline - loop.time()
                if left <= 0:
                    raise self._give_up(maybe_applied, last, session, seq)
                if session is not None:
                    header = RequestHeader(self.cluster_id, session.client_id, seq, session.acked)
                else:
                    header = RequestHeader(self.cluster_id)
                backoff = True
                try:
                    response = await self._attempt(
                        target, build(header), min(left, max(self.timeout / 3, 1.0))
                    )
                except _AttemptFailed as exc:
                    if exc.refused:
                        if maybe_applied:
                            raise OutcomeUnknown(
                                f"{target}: {exc}, after an earlier attempt whose outcome is unknown"
                            ) from None
                        raise RequestRefused(ErrorCode.INVALID_ARGUMENT, f"{target}: {exc}") from None
                    if exc.delivered and kind == _Kind.ADMIN:
                        raise OutcomeUnknown(
                            f"{target}: {exc}; the membership change or transfer may or may not happen"
                        ) from None
                    maybe_applied |= exc.delivered and kind == _Kind.WRITE
                    last = Unavailable(f"{target}: {exc}")
                    if endpoint is None:
                        target = self._rotate(target)
                else:
                    h = response.header
                    code = h.error
                    if endpoint is None and h.leader_address:
                        self._leader = h.leader_address
                    if code is ErrorCode.OK:
                        return response
                    if code is ErrorCode.NOT_LEADER:
                        last = NotLeader(h.leader_hint or None, f"{target}: {h.message}")
                        if endpoint is None:
                            if h.leader_address and h.leader_address != target and redirects < 3:
                                target = h.leader_address
                                redirects += 1
                                backoff = False
                            else:
                                target = self._rotate(target)
                    elif code is ErrorCode.NOT_APPLIED:
                        last = Unavailable(f"{target}: not applied: {h.message}")
                    elif code is ErrorCode.UNKNOWN:
                        if kind == _Kind.ADMIN:
                            raise OutcomeUnknown(f"{target}: {h.message}")
                        maybe_applied |= kind == _Kind.WRITE
                        last = Unavailable(f"{target}: {h.message}")
                    elif code is ErrorCode.SESSION_EXPIRED and session is not None:
                        if maybe_applied:
                            self._renew(session)
                            raise SessionExpired(
                                f"{h.message}; an earlier attempt of write {seq} of session "
                                f"{session.client_id!r} may have been applied"
                            )
                        # This was the write's first delivery: it certainly did not apply, so
                        # it is safe to send it again in a new session.
                        session.finish(seq)
                        session = self._renew(session)
                        seq = session.allocate()
                        backoff = False
                    elif code is ErrorCode.INTERNAL:
                        raise OutcomeUnknown(f"{target}: server error: {h.message}")
                    elif maybe_applied:
                        raise OutcomeUnknown(
                            f"{target}: {code.name}: {h.message}, after an earlier attempt whose "
                            "outcome is unknown"
                        )
                    else:
                        refused = QuotaExceeded if code is ErrorCode.QUOTA_EXCEEDED else RequestRefused
                        raise refused(code, f"{target}: {h.message}")
                if backoff:
                    redirects = 0
                    failures += 1
                    delay = min(0.5, 0.02 * 2 ** min(failures, 8)) * (0.5 + self._rng.random() / 2)
                    await asyncio.sleep(min(delay, max(deadline - loop.time(), 0)))
        finally:
            if session is not None:
                session.finish(seq)

    @staticmethod
    def _give_up(maybe_applied: bool, last: PhalanxError, session: _Session | None, seq: int) -> PhalanxError:
        if maybe_applied:
            assert session is not None
            return Timeout(
                f"no answer in time ({last}); write {seq} of session {session.client_id!r} "
                "may or may not have been applied (at most once)"
            )
        if isinstance(last, NotLeader):
            return NotLeader(last.leader_id, f"no leader found in time ({last})")
        return Unavailable(f"no node could serve the request in time ({last})")

    def _channel(self, address: str) -> Channel:
        channel = self._channels.get(address)
        if channel is None:
            try:
                host, port = _split_address(address)
            except LocalError as exc:
                raise _AttemptFailed(False, f"bad address: {exc}") from None
            channel = self._channels[address] = Channel(host, port, ssl=self._ssl)
        return channel

    def _drop_channel(self, address: str) -> None:
        channel = self._channels.pop(address, None)
        if channel is not None:
            channel.close()

    def _end_stream(self, conn: _StreamConn, broken_connection: bool) -> None:
        if self._streams.get(conn.address) is conn:
            del self._streams[conn.address]
            if broken_connection:
                self._drop_channel(conn.address)

    async def _attempt(self, address: str, request: KVRequest, budget: float) -> Any:
        """Send ``request`` to ``address`` once and return the answer; raises
        :class:`_AttemptFailed` if it produced none. Uses the node's stream when it can."""
        if self._use_stream and type(request) in _STREAM_TYPES:
            rid = next(self._ids)
            data = self._stream_codec.encode_request(rid, min(int(budget * 1000), _MAX_TIMEOUT_MS), request)
            if len(data) > self.max_request_bytes:
                raise self._too_large(len(data))
            if len(data) <= _STREAM_ITEM_MAX:
                conn = self._streams.get(address)
                if conn is None or conn.ended:
                    conn = self._streams[address] = _StreamConn(
                        address, self._channel(address), self._end_stream
                    )
                item = conn.submit(rid, data)
                fut = item.future
                # One timer per 5 ms grain for all requests, not one asyncio.timeout each.
                waiters = self._deadlines.add(asyncio.get_running_loop(), fut, budget + 0.5, "")
                try:
                    return await fut
                except _NoAnswer:
                    conn.forget(item)
                    raise _AttemptFailed(item.sent, "no answer in time") from None
                except BaseException:
                    conn.forget(item)
                    raise
                finally:
                    waiters.pop(fut, None)
        return await self._unary(address, request, budget)

    def _too_large(self, size: int) -> _AttemptFailed:
        return _AttemptFailed(
            False, f"the request is {size} bytes, over the limit of {self.max_request_bytes}", refused=True
        )

    async def _unary(self, address: str, request: KVRequest, budget: float) -> Any:
        """One unary gRPC call; raises :class:`_AttemptFailed` if it produced no answer."""
        path, response_type = _PATHS[type(request)]
        payload = encode_kv_message(request)
        if len(payload) > self.max_request_bytes:
            raise self._too_large(len(payload))
        channel = self._channel(address)
        sent = False
        try:
            async with asyncio.timeout(budget + 0.5):
                stream = channel.request(path, Cardinality.UNARY_UNARY, WireBytes, WireBytes, timeout=budget)
                async with stream:
                    await stream.send_request()  # connects; nothing the server acts on yet
                    sent = True
                    await stream.send_message(WireBytes(payload), end=True)
                    reply = await stream.recv_message()
        except asyncio.CancelledError:
            raise
        except GRPCError as exc:
            # The server ended the call with a status: no handler (UNIMPLEMENTED) or a request
            # over its size limit (RESOURCE_EXHAUSTED, before reading it) means it did nothing;
            # anything else (a deadline, a crash) may have come after it acted.
            text = f"gRPC {exc.status.name} {exc.message or ''}".rstrip()
            if exc.status is Status.RESOURCE_EXHAUSTED:
                raise _AttemptFailed(False, text, refused=True) from None
            delivered = sent and exc.status is not Status.UNIMPLEMENTED
            raise _AttemptFailed(delivered, text) from None
        except Exception as exc:  # connection refused or lost, timeout, h2 errors
            self._drop_channel(address)
            text = str(exc)
            raise _AttemptFailed(
                sent, f"{type(exc).__name__}: {text}" if text else type(exc).__name__
            ) from None
        if reply is None:
            raise _AttemptFailed(sent, "the server sent no answer")
        try:
            return decode_kv_message(response_type, reply.data)
        except ProtocolError as exc:
            raise _AttemptFailed(True, f"unreadable answer: {exc}") from None
