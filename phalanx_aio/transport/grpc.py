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
import contextlib
import ipaddress
import logging
import operator
import random
import re
import ssl
from asyncio import BaseTransport
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import grpclib.const
import grpclib.server
from grpclib.client import Channel
from grpclib.client import Stream as ClientStream
from grpclib.config import Configuration
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError
from grpclib.protocol import H2Protocol
from h2.settings import SettingCodes

from phalanx_aio._budget import BufferBudget, Call
from phalanx_aio._grpc import WireBytes
from phalanx_aio._grpc_read import Malformed, TooLarge, recv_bounded
from phalanx_aio.core.types import Message, MessageType
from phalanx_aio.errors import ClosedError, ConfigError, LocalError, ProtocolError
from phalanx_aio.transport.base import Transport, TransportHandler
from phalanx_aio.transport.chunks import SnapshotAssembler, snapshot_chunks
from phalanx_aio.transport.codec import (
    DEFAULT_LIMITS,
    INSTALL_SNAPSHOT_METHOD,
    STREAM_METHOD,
    EncodeError,
    Frame,
    Limits,
    decode_frame,
    decode_snapshot_ack,
    encode_frames,
    encode_snapshot_ack,
    encode_stream_ack,
)

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

MAX_ACCEPTED_INT = (1 << 62) - 1
"""The largest term or index accepted from a peer (the codec's wire limit is ``2**63 - 1``).

A message carrying more is refused (``rejected_invalid``): a term of ``2**63 - 1``, adopted from
one bad message, left no room for the next election (the cluster stayed leaderless, and a node
told to campaign overflowed SQLite's 64-bit integers and stopped). The headroom of ``2**62``
elections or entries is never reached by a correct cluster.
"""

_MAX_STATUS_TEXT = 300


class Servable(Protocol):
    """A grpclib service handler (what grpclib's generated ``*Base`` classes are)."""

    def __mapping__(self) -> Mapping[str, grpclib.const.Handler]:
        """Method path -> grpclib handler."""


# ---------------------------------------------------------------------------------------------
# TLS helpers


def server_ssl_context(
    certfile: str, keyfile: str | None = None, *, cafile: str | None = None
) -> ssl.SSLContext:
    """A TLS context for the listening side, ready for HTTP/2 (ALPN ``h2``, TLS 1.2 or later).

    With ``cafile``, clients must present a certificate signed by one of its CAs (mutual TLS);
    without it, any client may connect and only the server is authenticated.
    """
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile, keyfile)
    if cafile is not None:
        ctx.load_verify_locations(cafile)
        ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(["h2"])
    return ctx


def client_ssl_context(
    cafile: str, *, certfile: str | None = None, keyfile: str | None = None
) -> ssl.SSLContext:
    """A TLS context for the connecting side: peers' certificates must chain to ``cafile`` and
    name the address dialled (host name or IP address). ``certfile`` (and ``keyfile``) is this
    node's own certificate, for servers that require mutual TLS."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if certfile is not None:
        ctx.load_cert_chain(certfile, keyfile)
    ctx.set_alpn_protocols(["h2"])
    return ctx


def certificate_names(cert: Mapping[str, Any] | None) -> frozenset[str]:
    """The names a peer certificate gives its holder, as ``ssl.SSLSocket.getpeercert()``
    returns it: the subject's common names and the DNS and URI subject alternative names.
    Empty for ``None`` (no certificate). ``bind_node_ids`` checks node ids against these."""
    if not cert:
        return frozenset()
    names = {value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"}
    names.update(value for kind, value in cert.get("subjectAltName", ()) if kind in ("DNS", "URI"))
    return frozenset(names)


# ---------------------------------------------------------------------------------------------
# Internals


def _split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) -> ``(host, port)``; ValueError if malformed."""
    if not isinstance(address, str):
        raise ValueError(f"address must be a str, not {type(address).__name__}")
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"address {address!r} is not host:port")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"address {address!r} has port {port} above 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"address {address!r}: write an IPv6 host in brackets, as [::1]:port")
    return host, port


def _host_of(address: str) -> str:
    """The host of a peer's ``host:port`` (as a connection from it shows it), or ``""``."""
    try:
        host = _split_address(address)[0]
        return str(ipaddress.ip_address(host))
    except ValueError:
        return ""


def _join_address(host: str, port: int) -> str:
    try:
        if isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address):
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


class _Reject(Exception):
    """Bad input on an inbound call: counted under ``rejected_<reason>``, answered with ``status``."""

    def __init__(self, reason: str, status: Status, text: str) -> None:
        super().__init__(text)
        self.reason = reason
        self.status = status
        self.text = text[:_MAX_STATUS_TEXT]


class _StreamEnded(Exception):
    """The peer ended our stream (normally only with an error status)."""


_BACKLOG = 32
"""The listen backlog, also the most connections asyncio accepts in one turn of the loop: a
short queue makes a connection storm wait in the clients' kernels (SYN retries), not here."""


class _Admission:
    """The connection limits of a server: how many may be open, how fast new ones are set up,
    and how soon each must open its first call."""

    __slots__ = ("burst", "handshake_timeout", "max_connections", "max_streams", "rate")

    def __init__(self, max_connections: int, rate: float, handshake_timeout: float, max_streams: int) -> None:
        self.max_connections = max_connections
        self.rate = rate
        self.burst = max(1.0, rate / 20)
        """New connections set up at once (a twentieth of a second's worth)."""
        self.handshake_timeout = handshake_timeout
        self.max_streams = max_streams


class _ServerProtocol(H2Protocol):
    """grpclib's HTTP/2 protocol, set up only once the server admits the connection."""

    def __init__(self, server: _Server, *args: Any) -> None:
        super().__init__(*args)
        self._owner = server
        self._transport: asyncio.BaseTransport | None = None
        self._set_up = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: BaseTransport) -> None:
        self._transport = transport
        self._owner._arrived(self, transport)

    def admit(self) -> None:
        """Set the connection up (HTTP/2 preface, settings) and read it."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        super().connection_made(transport)
        self._set_up = True
        h2_conn = self.connection._connection
        h2_conn.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: self._owner.admission.max_streams})
        self.connection.flush()
        if isinstance(transport, asyncio.ReadTransport):
            transport.resume_reading()

    def wait(self, timeout: float) -> None:
        """Hold the connection (not read) until admitted; close it after ``timeout`` seconds if it
        has not opened a call by then."""
        transport = self._transport
        if isinstance(transport, asyncio.ReadTransport):
            transport.pause_reading()
        self._timer = asyncio.get_running_loop().call_later(timeout, self._handshake_expired)

    def _handshake_expired(self) -> None:
        self._timer = None
        if self._set_up and self.connection.streams_started:
            return
        self._owner._timed_out(self)
        self.abort()

    def abort(self) -> None:
        """Close the connection now."""
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.close()

    def data_received(self, data: bytes) -> None:
        if self._set_up:
            super().data_received(data)

    def pause_writing(self) -> None:
        if self._set_up:
            super().pause_writing()

    def resume_writing(self) -> None:
        if self._set_up:
            super().resume_writing()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._owner._left(self)
        if self._set_up:
            super().connection_lost(exc)


class _Server(grpclib.server.Server):
    """A grpclib server that bounds its connections and can drop the ones it accepted.

    At most ``admission.max_connections`` are open at once (more are closed as they arrive);
    new ones are set up at most ``admission.rate`` per second (the others wait, unread, so that
    an accept storm cannot starve the loop that sends heartbeats); each must open a call within
    ``admission.handshake_timeout`` seconds; each may have ``admission.max_streams`` calls at
    once (the HTTP/2 setting). Connections from a peer's host skip the count and the pacing.
    ``stats`` counts what was refused.

    ``Server.close()`` stops listening and cancels running calls but leaves the connections
    open; their clients would not notice, and since Python 3.12 ``asyncio.Server.wait_closed``
    waits for them. Closing them makes peers see the shutdown (and reconnect elsewhere) at once.
    """

    def __init__(self, handlers: Sequence[Servable], admission: _Admission, stats: Counter[str]) -> None:
        super().__init__(handlers)
        self.admission = admission
        self.stats = stats
        self.protocols: set[_ServerProtocol] = set()
        self.peer_hosts: frozenset[str] = frozenset()
        """The hosts of the current peers' addresses: connections from them skip the limits (a
        peer reconnecting during a storm must not wait behind it)."""
        self._waiting: deque[_ServerProtocol] = deque()
        self._tokens = admission.burst
        self._refilled = 0.0
        self._drain: asyncio.TimerHandle | None = None

    async def listen(self, host: str | None, port: int, ssl_context: ssl.SSLContext | None) -> None:
        """Bind and serve (a TLS handshake, too, must end within the handshake timeout)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol_factory,
            host,
            port,
            ssl=ssl_context,
            ssl_handshake_timeout=self.admission.handshake_timeout if ssl_context is not None else None,
            backlog=_BACKLOG,
        )
        self._server_closed_fut = loop.create_future()

    def _protocol_factory(self) -> H2Protocol:
        plain = super()._protocol_factory()
        return _ServerProtocol(self, plain.handler, plain.config, plain.h2_config)

    def _arrived(self, protocol: _ServerProtocol, transport: BaseTransport) -> None:
        adm = self.admission
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer and str(peer[0]) in self.peer_hosts:
            self.protocols.add(protocol)
            self.stats["connections_accepted"] += 1
            protocol.wait(adm.handshake_timeout)
            protocol.admit()
            return
        if len(self.protocols) >= adm.max_connections:
            self.stats["connections_refused"] += 1
            protocol.abort()
            return
        self.protocols.add(protocol)
        self.stats["connections_accepted"] += 1
        protocol.wait(adm.handshake_timeout)
        if not self._waiting and self._take_token():
            protocol.admit()
            return
        self.stats["connections_delayed"] += 1
        self._waiting.append(protocol)
        self._schedule_drain()

    def _take_token(self) -> bool:
        adm = self.admission
        now = asyncio.get_running_loop().time()
        self._tokens = min(adm.burst, self._tokens + (now - self._refilled) * adm.rate)
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def _schedule_drain(self) -> None:
        if self._drain is None and self._waiting:
            delay = max(0.0, (1.0 - self._tokens) / self.admission.rate)
            self._drain = asyncio.get_running_loop().call_later(delay, self._admit_waiting)

    def _admit_waiting(self) -> None:
        self._drain = None
        waiting = self._waiting
        while waiting and self._take_token():
            waiting.popleft().admit()
        self._schedule_drain()

    def _timed_out(self, protocol: _ServerProtocol) -> None:
        self.stats["connections_timed_out"] += 1

    def _left(self, protocol: _ServerProtocol) -> None:
        self.protocols.discard(protocol)
        with contextlib.suppress(ValueError):
            self._waiting.remove(protocol)

    def drop_connections(self) -> None:
        if self._drain is not None:
            self._drain.cancel()
            self._drain = None
        for protocol in list(self.protocols):
            processor = getattr(protocol, "processor", None)
            if processor is not None:
                processor.close("server closed")
            else:
                protocol.abort()

    def bound_port(self) -> int:
        server = self._server
        sockets = getattr(server, "sockets", None) or ()
        for sock in sockets:
            name = sock.getsockname()
            if isinstance(name, tuple) and len(name) >= 2:
                return int(name[1])
        raise RuntimeError("the server has no bound TCP socket")


class _Peer:
    """Sending state for one peer: its queue, its stream task, its snapshot transfers."""

    __slots__ = (
        "address",
        "established_at",
        "failures",
        "id",
        "queue",
        "snap_pending",
        "snap_task",
        "task",
        "unreachable",
        "wake",
    )

    def __init__(self, peer_id: str, address: str) -> None:
        self.id = peer_id
        self.address = address
        self.queue: deque[Message] = deque()
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.snap_pending: Message | None = None
        self.snap_task: asyncio.Task[None] | None = None
        self.unreachable = False
        """True from a failure until the next stream the peer accepts (one failure episode)."""
        self.failures = 0
        """Failed attempts since the last healthy stream, for the backoff."""
        self.established_at: float | None = None
        """When the current (or last) stream was accepted, loop time."""


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


async def _recv_bounded(stream: _ServerStream, limit: int, call: Call) -> bytes | None:
    """The next gRPC message of ``stream`` (``None`` once the client ended it), refused before it
    is buffered if it is over ``limit`` bytes (see :func:`phalanx_aio._grpc_read.recv_bounded`)."""
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
        return _join_address(str(addr[0]), int(addr[1]))
    return "?"


_REMOVED = re.compile(r"removed at index (\d+): ")


def _removal_index(exc: BaseException) -> int | None:
    """The index in a peer's "you were removed" refusal (``NOT_FOUND``), or None."""
    if isinstance(exc, GRPCError) and exc.status is Status.NOT_FOUND:
        found = _REMOVED.match(exc.message or "")
    elif isinstance(exc, _StreamEnded):
        found = _REMOVED.search(str(exc)) if "NOT_FOUND" in str(exc) else None
    else:
        found = None
    return int(found.group(1)) if found else None


def _end_status(call: _ClientStream) -> str:
    """What the server's trailers say about a call it ended (for logs)."""
    trailers = getattr(getattr(call, "_stream", None), "trailers", None)
    if not trailers:
        return "peer ended the stream"
    fields = dict(trailers)
    code = fields.get("grpc-status", "?")
    with contextlib.suppress(ValueError):
        code = Status(int(code)).name
    return f"peer ended the stream: {code} {fields.get('grpc-message', '')}".rstrip()


# ---------------------------------------------------------------------------------------------
# The transport


class GrpcTransport(Transport):
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
        if not isinstance(limits, Limits):
            raise ConfigError(f"limits must be a codec Limits, not {type(limits).__name__}")
        try:
            self._hello = encode_frames(cluster_id, node_id, [], limits=limits)[0]
        except EncodeError as exc:
            raise ConfigError(f"invalid node_id or cluster_id: {exc}") from exc
        try:
            host, port = _split_address(listen)
        except ValueError as exc:
            raise ConfigError(f"invalid listen address: {exc}") from exc
        for name, value in (
            ("backoff_initial", backoff_initial),
            ("backoff_max", backoff_max),
            ("connect_timeout", connect_timeout),
            ("send_timeout", send_timeout),
            ("max_connection_rate", max_connection_rate),
            ("handshake_timeout", handshake_timeout),
            ("keepalive_timeout", keepalive_timeout),
            ("keepalive_interval", 1.0 if keepalive_interval is None else keepalive_interval),
        ):
            if not isinstance(value, int | float) or not value > 0:
                raise ConfigError(f"{name} must be a positive number of seconds, not {value!r}")
        if backoff_max < backoff_initial:
            raise ConfigError("backoff_max must be at least backoff_initial")
        if not isinstance(backoff_jitter, int | float) or not 0 <= backoff_jitter <= 1:
            raise ConfigError(f"backoff_jitter must be between 0 and 1, not {backoff_jitter!r}")
        for name, count in (
            ("max_queue", max_queue),
            ("max_connections", max_connections),
            ("max_concurrent_streams", max_concurrent_streams),
        ):
            if type(count) is not int or count < 1:
                raise ConfigError(f"{name} must be a positive int, not {count!r}")
        if bind_node_ids and (server_ssl is None or server_ssl.verify_mode != ssl.CERT_REQUIRED):
            raise ConfigError(
                "bind_node_ids needs mutual TLS: a server_ssl context that requires client certificates"
            )
        if snapshot_chunk_bytes is None:
            snapshot_chunk_bytes = min(1 << 20, limits.max_frame_bytes // 2)
        if (
            type(snapshot_chunk_bytes) is not int
            or not 0 < snapshot_chunk_bytes <= limits.max_frame_bytes // 2
        ):
            raise ConfigError(
                "snapshot_chunk_bytes must be a positive int of at most half of limits.max_frame_bytes"
            )
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
        self._listen = (host, port)
        self._server_ssl = server_ssl
        self._client_ssl = client_ssl
        self._bind_node_ids = bool(bind_node_ids)
        self._limits = limits
        self._backoff = (float(backoff_initial), float(backoff_max), float(backoff_jitter))
        self._rng = rng if rng is not None else random.Random()
        self._max_queue = max_queue
        self._connect_timeout = float(connect_timeout)
        self._send_timeout = float(send_timeout)
        self._chunk_bytes = snapshot_chunk_bytes
        self._handlers: tuple[Servable, ...] = (service, *extras)
        self._admission = _Admission(
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
        self._server: _Server | None = None
        self._peer_hosts: frozenset[str] = frozenset()
        self._address: str | None = None
        self._peers: dict[str, _Peer] = {}
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
        return _join_address(*self._listen)

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
        server = _Server(self._handlers, self._admission, self._stats)
        server.peer_hosts = self._peer_hosts
        host, port = self._listen
        await server.listen(host or None, port, self._server_ssl)
        self._server = server
        self._address = _join_address(host or "0.0.0.0", server.bound_port())
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
        self._peer_hosts = frozenset(_host_of(addr) for addr in wanted.values())
        if self._server is not None:
            self._server.peer_hosts = self._peer_hosts
        for pid, addr in wanted.items():
            known = self._peers.get(pid)
            if known is None:
                peer = self._peers[pid] = _Peer(pid, addr)
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

    def _notify(self, what: str, fn: Callable[..., None], peer: str, *args: Any) -> None:
        try:
            fn(peer, *args)
        except Exception:
            self._stats["handler_errors"] += 1
            log.exception("%s: transport handler %s failed (peer %s)", self.node_id, what, peer)

    def _unreachable(self, peer: _Peer, exc: BaseException) -> None:
        self._stats["stream_failures"] += 1
        removed_at = _removal_index(exc)
        if removed_at is not None and self._handler is not None and not self._closed:
            on_removed = getattr(self._handler, "on_removed", None)  # optional for handlers
            if on_removed is not None:
                self._notify("on_removed", on_removed, peer.id, removed_at)
        if peer.unreachable:
            log.debug("%s: peer %s at %s still unreachable: %r", self.node_id, peer.id, peer.address, exc)
            return
        peer.unreachable = True
        log.warning("%s: peer %s at %s unreachable: %s", self.node_id, peer.id, peer.address, _describe(exc))
        if self._handler is not None and not self._closed:
            self._notify("on_unreachable", self._handler.on_unreachable, peer.id)

    # ----------------------------------------------------------------- outbound: the stream

    def _spawn_sender(self, peer: _Peer) -> None:
        peer.task = asyncio.get_running_loop().create_task(
            self._run_sender(peer), name=f"phalanx-send-{self.node_id}-{peer.id}"
        )

    def _channel(self, address: str) -> Channel:
        host, port = _split_address(address)
        return Channel(host, port, ssl=self._client_ssl, config=self._channel_config)

    def _backoff_delay(self, failures: int) -> float:
        initial, maximum, jitter = self._backoff
        base = min(maximum, initial * 2.0 ** min(failures, 62))
        return base * (1.0 - jitter * self._rng.random())

    async def _run_sender(self, peer: _Peer) -> None:
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

    async def _stream_to(self, peer: _Peer) -> None:
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
        raise _StreamEnded(_end_status(call))

    async def _pump(
        self, peer: _Peer, call: _ClientStream, channel: Channel, watcher: asyncio.Task[None]
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
                raise _StreamEnded("peer ended the stream")  # pragma: no cover - _watch raises
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
            return encode_frames(self.cluster_id, self.node_id, batch, limits=self._limits)
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
        return encode_frames(self.cluster_id, self.node_id, good, limits=self._limits) if good else []

    # ----------------------------------------------------------------- outbound: snapshots

    def _queue_snapshot(self, peer: _Peer, m: Message) -> None:
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

    def _spawn_snapshot(self, peer: _Peer) -> None:
        peer.snap_task = asyncio.get_running_loop().create_task(
            self._run_snapshots(peer), name=f"phalanx-snapshot-{self.node_id}-{peer.id}"
        )

    async def _run_snapshots(self, peer: _Peer) -> None:
        while peer.snap_pending is not None:
            m = peer.snap_pending
            peer.snap_pending = None
            try:
                ok = await self._transfer(peer, m)
            except Exception as exc:
                ok = False
                log.warning(
                    "%s: snapshot to %s at %s failed: %s", self.node_id, peer.id, peer.address, _describe(exc)
                )
            self._stats["snapshots_sent" if ok else "snapshots_failed"] += 1
            if self._handler is not None and not self._closed:
                self._notify("on_snapshot_status", self._handler.on_snapshot_status, peer.id, ok)

    async def _transfer(self, peer: _Peer, m: Message) -> bool:
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
                    frame = decode_frame(data, limits=limits)
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


_STOP_RECHECK = 1.0
"""Seconds :meth:`GrpcTransport.aclose` waits for its cancelled tasks before cancelling again."""
_STOP_GIVE_UP = 10.0
"""Seconds after which :meth:`GrpcTransport.aclose` stops waiting for tasks that ignore it."""


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


def _describe(exc: BaseException) -> str:
    if isinstance(exc, GRPCError):
        return f"{exc.status.name} {exc.message or ''}".rstrip()
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
