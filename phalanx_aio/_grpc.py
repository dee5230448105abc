"""gRPC plumbing shared by the peer transport, the KV service and client, the health service and
the command line (private).

Everything here is about grpclib, HTTP/2 and TLS, not about Raft or the KV store:

* :class:`WireBytes`, to move hand-encoded protobuf through grpclib's codec;
* :func:`parse_address` and :func:`join_address`, the one ``host:port`` parser;
* :func:`server_ssl_context`, :func:`client_ssl_context`, :func:`certificate_names` (TLS);
* :func:`recv_bounded`, reading one message with its size checked before it is buffered;
* :class:`AdmissionServer`, a grpclib server that bounds and paces its connections;
* the grpclib internals this needs, each behind one function (:func:`grpclib_protocol`,
  :func:`adopt_listener`, :func:`h2_connection`, :func:`raw_stream`), with a test per function
  (``tests/test_grpc_internals.py``) that fails loudly on a grpclib where it no longer works.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
import struct
from asyncio import BaseTransport
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import grpclib.const
import grpclib.server
from grpclib.protocol import H2Protocol
from h2.settings import SettingCodes

if TYPE_CHECKING:
    from h2.connection import H2Connection

    from phalanx_aio._budget import Call

__all__ = [
    "Admission",
    "AdmissionServer",
    "Malformed",
    "Servable",
    "TooLarge",
    "WireBytes",
    "adopt_listener",
    "certificate_names",
    "client_ssl_context",
    "grpclib_protocol",
    "h2_connection",
    "host_of",
    "join_address",
    "parse_address",
    "raw_stream",
    "recv_bounded",
    "server_ssl_context",
]


class Servable(Protocol):
    """A grpclib service handler (what grpclib's generated ``*Base`` classes are)."""

    def __mapping__(self) -> Mapping[str, grpclib.const.Handler]:
        """Method path -> grpclib handler."""


class WireBytes:
    """An already encoded protobuf message, for grpclib's protobuf codec.

    grpclib serializes with ``SerializeToString()`` and parses with ``FromString()``; declaring a
    method's request and reply types as ``WireBytes`` lets a service move the bytes its
    hand-written codec produces and consumes without ever touching the generated classes.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def SerializeToString(self) -> bytes:
        """The bytes, unchanged."""
        return self.data

    @classmethod
    def FromString(cls, data: bytes) -> WireBytes:
        """Wrap received bytes without parsing them."""
        return cls(data)

    def __repr__(self) -> str:
        return f"WireBytes({len(self.data)} bytes)"


# ---------------------------------------------------------------------------------------------
# Addresses


def parse_address(address: object, *, listen: bool = False) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) -> ``(host, port)``; :class:`ValueError` naming
    the defect. An address to listen on (``listen``) may leave the host empty (every
    interface) and use port 0 (any free port); an address to dial needs a host and a port in
    1-65535. The one parser of the transport, the KV client and the command line."""
    if not isinstance(address, str):
        raise ValueError(f"address must be a host:port str, not {type(address).__name__}")
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or not (host or listen):
        raise ValueError(f"address {address!r} is not host:port")
    port = int(port_text)
    if port > 65535 or (port == 0 and not listen):
        raise ValueError(f"address {address!r} has port {port}, not in 1-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"address {address!r} has an invalid IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"address {address!r}: write an IPv6 host in brackets, as [::1]:port")
    return host, port


def host_of(address: str) -> str:
    """The IP address of a ``host:port`` as a connection from it shows it, or ``""`` (a name)."""
    try:
        host = parse_address(address, listen=True)[0]
        return str(ipaddress.ip_address(host))
    except ValueError:
        return ""


def join_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets."""
    try:
        if isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address):
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


# ---------------------------------------------------------------------------------------------
# TLS


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
# grpclib internals, each behind one function (tests/test_grpc_internals.py checks each one)


def grpclib_protocol(server: grpclib.server.Server) -> H2Protocol:
    """The protocol grpclib's ``server`` would give a new connection (``Server._protocol_factory``:
    grpclib has no public way to wrap it)."""
    return server._protocol_factory()


def adopt_listener(server: grpclib.server.Server, listener: asyncio.AbstractServer) -> None:
    """Make ``listener`` (from ``loop.create_server`` with our own protocol factory) the
    listening socket of grpclib's ``server``, so that its ``close()`` and ``wait_closed()``
    work (grpclib's ``start()`` takes no protocol factory and no TLS handshake timeout)."""
    server._server = listener
    server._server_closed_fut = asyncio.get_running_loop().create_future()


def h2_connection(protocol: H2Protocol) -> H2Connection:
    """The h2 connection under grpclib's ``protocol`` (to change an HTTP/2 setting)."""
    connection: H2Connection = protocol.connection._connection
    return connection


def raw_stream(stream: object) -> Any:
    """The grpclib protocol stream under a server or client ``stream`` (``recv_data`` to read
    a message piece by piece, ``trailers`` once the peer ended it), or ``None``."""
    return getattr(stream, "_stream", None)


# ---------------------------------------------------------------------------------------------
# Reading one message with a size limit


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
    raw = raw_stream(stream)
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


# ---------------------------------------------------------------------------------------------
# A server that bounds and paces its connections


BACKLOG = 32
"""The listen backlog, also the most connections asyncio accepts in one turn of the loop: a
short queue makes a connection storm wait in the clients' kernels (SYN retries), not here."""


class Admission:
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

    def __init__(self, server: AdmissionServer, *args: Any) -> None:
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
        h2_conn = h2_connection(self)
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


class AdmissionServer(grpclib.server.Server):
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

    def __init__(self, handlers: Sequence[Servable], admission: Admission, stats: Counter[str]) -> None:
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
        self._listener: asyncio.AbstractServer | None = None

    async def listen(self, host: str | None, port: int, ssl_context: ssl.SSLContext | None) -> None:
        """Bind and serve (a TLS handshake, too, must end within the handshake timeout)."""
        loop = asyncio.get_running_loop()
        listener = await loop.create_server(
            self._new_protocol,
            host,
            port,
            ssl=ssl_context,
            ssl_handshake_timeout=self.admission.handshake_timeout if ssl_context is not None else None,
            backlog=BACKLOG,
        )
        adopt_listener(self, listener)
        self._listener = listener

    def _new_protocol(self) -> H2Protocol:
        plain = grpclib_protocol(self)
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
        sockets = getattr(self._listener, "sockets", None) or ()
        for sock in sockets:
            name = sock.getsockname()
            if isinstance(name, tuple) and len(name) >= 2:
                return int(name[1])
        raise RuntimeError("the server has no bound TCP socket")
