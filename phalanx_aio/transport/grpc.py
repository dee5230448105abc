"""The gRPC peer transport: one long-lived stream to each peer, over grpclib.

Each node runs one grpclib :class:`~grpclib.server.Server` hosting the ``RaftPeer`` service
(plus any ``extra_handlers``, such as the client-facing KV service, on the same port), and opens
one client-streaming ``RaftPeer.Stream`` call to each peer. A per-peer task owns that call: it
takes everything queued for the peer, packs it into as few ``PeerFrame`` messages as the
:class:`~phalanx_aio.transport.codec.Limits` allow, sends them, and loops. When the call or its
connection fails the task tells the node once (:meth:`TransportHandler.on_unreachable`), then
reconnects with exponential backoff and jitter until the peer is removed or the transport
closed. Snapshots do not ride the stream: each travels in chunks on its own ``InstallSnapshot``
call (on its own connection) and ends with :meth:`TransportHandler.on_snapshot_status`.

The receiving side trusts nothing: every frame is decoded by the codec, and a frame with a
foreign cluster id, a sender that is not a current peer, a message not addressed to this node
or claiming another origin, a message no correct peer sends (a term or index above
:data:`MAX_ACCEPTED_INT`, entries out of order), or malformed bytes ends the call with a gRPC
error status and is counted in :attr:`GrpcTransport.stats`; none of it reaches the handler.
A received gRPC message over ``Limits.max_frame_bytes`` is refused as soon as its length
prefix is read.

Messages travel as raw bytes: the RaftPeer methods are registered with
:class:`~phalanx_aio._grpc.WireBytes` as request and reply type, so grpclib's protobuf
codec passes the codec's bytes through untouched. ``docs/transport.md`` describes the design.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections import Counter
from collections.abc import Mapping, Sequence

import grpclib.const
import grpclib.server
from grpclib.client import Stream as ClientStream
from grpclib.config import Configuration
from grpclib.const import Cardinality

from phalanx_aio._budget import BufferBudget
from phalanx_aio._grpc import (
    Admission,
    AdmissionServer,
    Servable,
    WireBytes,
    certificate_names,
    client_ssl_context,
    host_of,
    join_address,
    parse_address,
    server_ssl_context,
)
from phalanx_aio.core.types import Message, MessageType
from phalanx_aio.errors import ClosedError, ConfigError, LocalError
from phalanx_aio.transport._inbound import MAX_ACCEPTED_INT, Inbound
from phalanx_aio.transport._outbound import Outbound
from phalanx_aio.transport._shared import Peer
from phalanx_aio.transport.base import Transport, TransportHandler
from phalanx_aio.transport.codec import (
    DEFAULT_LIMITS,
    INSTALL_SNAPSHOT_METHOD,
    STREAM_METHOD,
    EncodeError,
    Limits,
    encode_frames,
)
from phalanx_aio.transport.options import TransportOptions

__all__ = [
    "MAX_ACCEPTED_INT",
    "STAT_KEYS",
    "GrpcTransport",
    "Servable",
    "certificate_names",
    "client_ssl_context",
    "server_ssl_context",
]

log = logging.getLogger(__name__)

STAT_KEYS: tuple[str, ...] = (
    # outbound
    "frames_sent",
    "messages_sent",
    "bytes_sent",
    "streams_opened",
    "stream_failures",
    "reconnects",
    "snapshots_sent",
    "snapshots_failed",
    "dropped_unknown_peer",
    "dropped_queue_full",
    "dropped_encode_error",
    "dropped_closed",
    "dropped_peer_removed",
    "dropped_snapshot_superseded",
    # connections
    "connections_accepted",
    "connections_refused",
    "connections_delayed",
    "connections_timed_out",
    # inbound
    "frames_received",
    "messages_received",
    "bytes_received",
    "inbound_streams",
    "inbound_streams_ended",
    "snapshots_received",
    "rejected_malformed",
    "rejected_too_large",
    "rejected_cluster",
    "rejected_sender",
    "rejected_removed",
    "rejected_identity",
    "rejected_destination",
    "rejected_origin",
    "rejected_invalid",
    "rejected_snapshot_incomplete",
    "rejected_overloaded",
    "rejected_stalled",
    "handler_errors",
)
"""The counters :attr:`GrpcTransport.stats` always reports (all start at 0).

Outbound: ``frames_sent``, ``messages_sent`` and ``bytes_sent`` count what was written to a
stream; ``streams_opened`` the streams a peer accepted; ``stream_failures`` every failed
connection attempt or broken stream; ``reconnects`` the streams re-established after a failure;
``snapshots_sent`` / ``snapshots_failed`` whole snapshot transfers. ``dropped_*`` count messages
never sent: to an id that is not a peer, pushed out of a full queue (the oldest goes), that
could not be encoded, sent after :meth:`~GrpcTransport.aclose`, still queued for a peer that
:meth:`~GrpcTransport.set_peers` removed, or a pending snapshot replaced by a newer one.

Connections (to the server, peers' and clients' alike): ``connections_accepted`` counts those
admitted, ``connections_refused`` those closed on arrival because ``max_connections`` were open,
``connections_delayed`` those that waited for ``max_connection_rate``, ``connections_timed_out``
those closed for opening no call within ``handshake_timeout``.

Inbound: ``frames_received``, ``messages_received`` and ``bytes_received`` count what was
accepted and handed to the handler (snapshot chunks are not frames: ``snapshots_received``
counts whole snapshots); ``inbound_streams`` / ``inbound_streams_ended`` the calls served.
``rejected_*`` count calls ended because of bad input, by reason: ``malformed`` (the codec
refused the bytes, including an empty sender or cluster id), ``too_large`` (a gRPC message over
``Limits.max_frame_bytes``), ``cluster`` (a foreign cluster id), ``sender`` (a sender that is not
a current peer, or that changed within a call), ``removed`` (a sender this node knows was removed
from the cluster, see :meth:`~GrpcTransport.set_removed`), ``identity`` (with ``bind_node_ids``, a sender
that the client certificate does not name), ``destination`` (a message addressed to
another node), ``origin`` (a message whose ``frm`` is not the frame's sender), ``invalid`` (a
well-formed message that no correct peer sends: a term or index above :data:`MAX_ACCEPTED_INT`,
or the entries of an append that do not follow its index and terms in order),
``snapshot_incomplete`` (an InstallSnapshot call that ended before its last chunk),
``overloaded`` (a call shed because the frames being received on its connection, or on all of
them, were over the buffer limits), ``stalled`` (a frame that stopped arriving for
``send_timeout``).
``handler_errors`` counts exceptions raised by the handler's callbacks (logged, then ignored).
"""

# ---------------------------------------------------------------------------------------------
# Internals


class _RaftPeerService:
    """The RaftPeer service, registered with raw-bytes request and reply types."""

    def __init__(self, transport: GrpcTransport) -> None:
        self._transport = transport

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        t = self._transport
        return {
            STREAM_METHOD: grpclib.const.Handler(
                t._serve_stream, Cardinality.STREAM_UNARY, WireBytes, WireBytes
            ),
            INSTALL_SNAPSHOT_METHOD: grpclib.const.Handler(
                t._serve_snapshot, Cardinality.STREAM_UNARY, WireBytes, WireBytes
            ),
        }


_ServerStream = grpclib.server.Stream[WireBytes, WireBytes]
_ClientStream = ClientStream[WireBytes, WireBytes]


# ---------------------------------------------------------------------------------------------
# The transport


class GrpcTransport(Inbound, Outbound, Transport):
    """The gRPC implementation of :class:`~phalanx_aio.transport.base.Transport`.

    Keyword-only configuration:

    * ``node_id``, ``cluster_id``: this node and its cluster, put in every frame and checked on
      every frame received.
    * ``listen``: ``host:port`` to serve on (``[::]:port`` for IPv6; an empty host means every
      interface). Port 0 picks a free port; :attr:`address` tells which once started (give
      a single address with port 0, not a name like ``localhost`` that may bind several).
    * ``peers``: the initial peers, id -> ``host:port`` (see :meth:`set_peers`).
    * ``server_ssl`` / ``client_ssl``: TLS for the listening and the connecting side; a server
      context that requires client certificates gives mutual TLS (see :func:`server_ssl_context`
      and :func:`client_ssl_context`). ``None`` means plaintext.
    * ``bind_node_ids``: with mutual TLS, accept a peer call only if the client certificate
      names the sender's node id, as its subject's common name or as a DNS or URI subject
      alternative name (see :func:`certificate_names`). Without it, any holder of a
      certificate from the cluster's CA can speak for any node id. Needs a ``server_ssl``
      that requires client certificates.
    * ``limits``: the codec's size limits, for both sending and receiving.
    * ``backoff_initial``, ``backoff_max`` (seconds), ``backoff_jitter`` (0 to 1) and ``rng``:
      the reconnect delay after ``n`` consecutive failures is
      ``min(backoff_max, backoff_initial * 2**n)``, shortened by up to ``backoff_jitter`` of
      itself at random (``rng``, seeded from the OS if omitted).
    * ``max_queue``: messages held per peer; when full the oldest is dropped and counted.
    * ``connect_timeout``: to connect and have the peer accept the stream's first frame.
    * ``send_timeout``: for one frame or snapshot chunk to be written (flow control included)
      and for a snapshot's acknowledgement; a stream stalled longer is dropped and reopened.
    * ``snapshot_chunk_bytes``: the snapshot data carried by one InstallSnapshot chunk (by
      default 1 MiB, or half of ``limits.max_frame_bytes`` if that is less).
    * ``extra_handlers``: more grpclib service handlers to serve on the same server.
    * ``max_connections``: inbound connections open at once (peers' and clients'); more are
      closed as they arrive (``connections_refused``).
    * ``max_connection_rate``: new inbound connections set up per second (bursts of a twentieth
      of it); the others wait unread, so that an accept storm cannot starve the loop of the
      node's heartbeats.
    * ``handshake_timeout``: an inbound connection must finish its TLS handshake and open a call
      within it, or it is closed (``connections_timed_out``).
    * ``max_concurrent_streams``: calls one inbound connection may have open (HTTP/2 setting).
    * ``keepalive_interval`` / ``keepalive_timeout``: the connections to peers send an HTTP/2
      PING every ``keepalive_interval`` seconds; one unanswered for ``keepalive_timeout``
      closes the connection and reports the peer unreachable (a stopped or frozen peer whose
      kernel still acknowledges TCP is noticed within about their sum). ``None`` turns it off.

    Frames being received are held against a buffer budget: ``2 * limits.max_frame_bytes`` per
    connection and ``8 * limits.max_frame_bytes`` in all; over it the call that made no
    progress for the longest time is ended (``rejected_overloaded``), as is one whose frame
    stops arriving for ``send_timeout`` (``rejected_stalled``).
    """

    def __init__(
        self,
        *,
        node_id: str,
        cluster_id: str,
        listen: str,
        peers: Mapping[str, str] | None = None,
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
        bind_node_ids: bool = False,
        limits: Limits = DEFAULT_LIMITS,
        backoff_initial: float = 0.05,
        backoff_max: float = 2.0,
        backoff_jitter: float = 0.5,
        rng: random.Random | None = None,
        max_queue: int = 8192,
        connect_timeout: float = 5.0,
        send_timeout: float = 30.0,
        snapshot_chunk_bytes: int | None = None,
        extra_handlers: Sequence[Servable] = (),
        max_connections: int = 1000,
        max_connection_rate: float = 100.0,
        handshake_timeout: float = 10.0,
        max_concurrent_streams: int = 100,
        keepalive_interval: float | None = 1.0,
        keepalive_timeout: float = 4.0,
    ) -> None:
        options = TransportOptions(
            server_ssl=server_ssl,
            client_ssl=client_ssl,
            bind_node_ids=bind_node_ids,
            limits=limits,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            backoff_jitter=backoff_jitter,
            max_queue=max_queue,
            connect_timeout=connect_timeout,
            send_timeout=send_timeout,
            snapshot_chunk_bytes=snapshot_chunk_bytes,
            max_connections=max_connections,
            max_connection_rate=max_connection_rate,
            handshake_timeout=handshake_timeout,
            max_concurrent_streams=max_concurrent_streams,
            keepalive_interval=keepalive_interval,
            keepalive_timeout=keepalive_timeout,
        )
        try:
            self._hello = encode_frames(cluster_id, node_id, [], limits=limits)[0]
        except EncodeError as exc:
            raise ConfigError(f"invalid node_id or cluster_id: {exc}") from exc
        try:
            host, port = parse_address(listen, listen=True)
        except ValueError as exc:
            raise ConfigError(f"invalid listen address: {exc}") from exc
        service = _RaftPeerService(self)
        own_paths = set(service.__mapping__())
        extras = tuple(extra_handlers)
        for handler in extras:
            clash = own_paths & set(handler.__mapping__())
            if clash:
                raise ConfigError(f"extra handler {handler!r} redefines {sorted(clash)}")

        self.node_id: str = node_id
        """This node's id."""
        self.cluster_id: str = cluster_id
        """The cluster's id."""
        self.options: TransportOptions = options
        """The transport's settings, checked."""
        self._listen = (host, port)
        self._server_ssl = options.server_ssl
        self._client_ssl = options.client_ssl
        self._bind_node_ids = bool(options.bind_node_ids)
        self._limits = options.limits
        self._backoff = (float(backoff_initial), float(backoff_max), float(backoff_jitter))
        self._rng = rng if rng is not None else random.Random()
        self._max_queue = options.max_queue
        self._connect_timeout = float(connect_timeout)
        self._send_timeout = float(send_timeout)
        self._chunk_bytes = options.chunk_bytes
        self._handlers: tuple[Servable, ...] = (service, *extras)
        self._admission = Admission(
            max_connections, float(max_connection_rate), float(handshake_timeout), max_concurrent_streams
        )
        self._channel_config = (
            Configuration()
            if keepalive_interval is None
            else Configuration(
                _keepalive_time=float(keepalive_interval),
                _keepalive_timeout=float(keepalive_timeout),
                _keepalive_permit_without_calls=True,
                _http2_max_pings_without_data=0,
                _http2_min_sent_ping_interval_without_data=float(keepalive_interval),
            )
        )
        self._budget = BufferBudget(
            per_connection=2 * limits.max_frame_bytes,
            total=8 * limits.max_frame_bytes,
            stall_timeout=float(send_timeout),
            what="peer transport",
        )

        self._handler: TransportHandler | None = None
        self._server: AdmissionServer | None = None
        self._peer_hosts: frozenset[str] = frozenset()
        self._address: str | None = None
        self._peers: dict[str, Peer] = {}
        self._removed: dict[str, int] = {}
        self._retired: set[asyncio.Task[None]] = set()
        self._stats: Counter[str] = Counter(dict.fromkeys(STAT_KEYS, 0))
        self._started = False
        self._closed = False
        self._close_task: asyncio.Task[None] | None = None
        if peers:
            self.set_peers(peers)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self._started else "new"
        return f"<GrpcTransport {self.node_id!r} of {self.cluster_id!r} at {self.address} {state}>"

    # ----------------------------------------------------------------- public interface

    @property
    def address(self) -> str:
        """Where this node serves: ``host:port`` with the real port once started (the ``listen``
        argument before)."""
        if self._address is not None:
            return self._address
        return join_address(*self._listen)

    @property
    def peers(self) -> Mapping[str, str]:
        """The current peers, id -> address."""
        return {pid: p.address for pid, p in self._peers.items()}

    @property
    def stats(self) -> Mapping[str, int]:
        """A snapshot of the counters described in :data:`STAT_KEYS`."""
        out = dict(self._stats)
        shed = self._budget.shed
        out["rejected_overloaded"] = shed["connection_bytes"] + shed["total_bytes"]
        out["rejected_stalled"] = shed["stalled"]
        return out

    async def start(self, handler: TransportHandler) -> None:
        """Bind and serve, then open a stream to every peer. Raises :class:`OSError` if the
        address cannot be bound, :class:`ClosedError` after :meth:`aclose`."""
        if self._closed:
            raise ClosedError("transport is closed")
        if self._started:
            raise LocalError("transport already started")
        self._handler = handler
        server = AdmissionServer(self._handlers, self._admission, self._stats)
        server.peer_hosts = self._peer_hosts
        host, port = self._listen
        await server.listen(host or None, port, self._server_ssl)
        self._server = server
        self._address = join_address(host or "0.0.0.0", server.bound_port())
        self._started = True
        for peer in self._peers.values():
            self._spawn_sender(peer)
            if peer.snap_pending is not None:
                self._spawn_snapshot(peer)
        log.info(
            "%s: serving on %s (%s)", self.node_id, self._address, "TLS" if self._server_ssl else "plaintext"
        )

    def send(self, messages: Sequence[Message]) -> None:
        """Queue each message for its peer (``Message.to``); never blocks, never raises.

        SNAP messages go on their own InstallSnapshot call; a newer SNAP for a peer replaces one
        still waiting (the replaced one is reported failed).
        """
        stats = self._stats
        if self._closed:
            stats["dropped_closed"] += len(messages)
            return
        peers = self._peers
        limit = self._max_queue
        for m in messages:
            peer = peers.get(m.to)
            if peer is None:
                stats["dropped_unknown_peer"] += 1
                continue
            if m.type is MessageType.SNAP and m.snapshot is not None:
                self._queue_snapshot(peer, m)
                continue
            queue = peer.queue
            if len(queue) >= limit:
                queue.popleft()
                stats["dropped_queue_full"] += 1
            queue.append(m)
            peer.wake.set()

    def set_removed(self, removed: Mapping[str, int]) -> None:
        """The former members this node knows were removed, id -> the log index of the
        committed change that removed them. A call from one of them (unless it is a peer again)
        is refused with ``NOT_FOUND`` and a text naming that index, and its transport reports
        it to its node (:meth:`TransportHandler.on_removed`)."""
        self._removed = dict(removed)

    def set_peers(self, peers: Mapping[str, str]) -> None:
        """Make ``peers`` (id -> ``host:port``) the current peers.

        New peers get a stream; removed peers lose theirs (and their queued messages, counted
        as ``dropped_peer_removed``); a peer whose address changed reconnects there, keeping
        its queue. This node's own id is ignored. Only current peers may send to this node.
        An address that does not parse is not an error here: the peer is known (it may send
        to us) but unreachable, and that is reported like any connection failure.
        """
        wanted: dict[str, str] = {}
        for pid, addr in peers.items():
            if not isinstance(pid, str) or not pid:
                raise ConfigError(f"peer ids must be non-empty strings, not {pid!r}")
            if not isinstance(addr, str):
                raise ConfigError(f"the address of peer {pid!r} must be a str, not {type(addr).__name__}")
            if pid != self.node_id:
                wanted[pid] = addr
        for pid in [p for p in self._peers if p not in wanted]:
            peer = self._peers.pop(pid)
            self._stats["dropped_peer_removed"] += len(peer.queue) + (peer.snap_pending is not None)
            peer.queue.clear()
            peer.snap_pending = None
            self._retire(peer.task)
            self._retire(peer.snap_task)
            peer.task = peer.snap_task = None
            log.info("%s: peer %s removed", self.node_id, pid)
        self._peer_hosts = frozenset(host_of(addr) for addr in wanted.values())
        if self._server is not None:
            self._server.peer_hosts = self._peer_hosts
        for pid, addr in wanted.items():
            known = self._peers.get(pid)
            if known is None:
                peer = self._peers[pid] = Peer(pid, addr)
                if self._started and not self._closed:
                    self._spawn_sender(peer)
                continue
            peer = known
            if peer.address != addr:
                log.info("%s: peer %s moved from %s to %s", self.node_id, pid, peer.address, addr)
                peer.address = addr
                peer.failures = 0
                if self._started and not self._closed:
                    self._retire(peer.task)
                    self._spawn_sender(peer)

    async def aclose(self) -> None:
        """Stop every stream and transfer, close the connections and the server. Idempotent;
        the shutdown runs to completion even if the caller is cancelled meanwhile."""
        if self._close_task is None:
            self._closed = True
            self._close_task = asyncio.get_running_loop().create_task(
                self._shutdown(), name=f"phalanx-transport-close-{self.node_id}"
            )
        await asyncio.shield(self._close_task)

    # ----------------------------------------------------------------- shutdown

    async def _shutdown(self) -> None:
        tasks: set[asyncio.Task[None]] = set(self._retired)
        for peer in self._peers.values():
            for task in (peer.task, peer.snap_task):
                if task is not None:
                    tasks.add(task)
            peer.task = peer.snap_task = None
            peer.queue.clear()
            peer.snap_pending = None
        await self._stop_tasks(tasks)
        self._retired.clear()
        server = self._server
        if server is not None:
            server.close()
            server.drop_connections()
            try:
                async with asyncio.timeout(10):
                    await server.wait_closed()
            except TimeoutError:  # pragma: no cover - a handler that ignores cancellation
                log.error("%s: the gRPC server did not close within 10 s", self.node_id)
        self._handler = None
        log.info("%s: transport closed", self.node_id)

    async def _stop_tasks(self, tasks: set[asyncio.Task[None]]) -> None:
        """Cancel ``tasks`` and wait until they have finished. A task still running after
        :data:`_STOP_RECHECK` seconds lost its cancellation somewhere (a library that turned it
        into an error): it is logged and cancelled again. After :data:`_STOP_GIVE_UP` seconds
        the rest are left behind with an error in the log, so that :meth:`aclose` returns."""
        pending = set(tasks)
        for task in pending:
            task.cancel()
        loop = asyncio.get_running_loop()
        give_up = loop.time() + _STOP_GIVE_UP
        while pending:
            left = give_up - loop.time()
            if left <= 0:
                log.error(
                    "%s: %d transport task(s) did not stop when cancelled, left running: %s",
                    self.node_id,
                    len(pending),
                    ", ".join(sorted(t.get_name() for t in pending)),
                )
                return
            _, pending = await asyncio.wait(pending, timeout=min(_STOP_RECHECK, left))
            for task in pending:
                log.error(
                    "%s: transport task %s did not stop when cancelled; cancelling it again",
                    self.node_id,
                    task.get_name(),
                )
                task.cancel()

    def _retire(self, task: asyncio.Task[None] | None) -> None:
        """Cancel ``task`` and keep it until it has finished (aclose waits for it)."""
        if task is None or task.done():
            return
        task.cancel()
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    # ----------------------------------------------------------------- callbacks


_STOP_RECHECK = 1.0
"""Seconds :meth:`GrpcTransport.aclose` waits for its cancelled tasks before cancelling again."""
_STOP_GIVE_UP = 10.0
"""Seconds after which :meth:`GrpcTransport.aclose` stops waiting for tasks that ignore it."""
