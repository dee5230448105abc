"""A user-space TCP proxy for one directed link between two cluster members.

A chaos cluster puts one :class:`LinkProxy` on every directed link ``src -> dst``: the process of
``src`` connects to the proxy instead of to ``dst`` (see :mod:`phalanx_aio.chaos.cluster`), and the
proxy forwards the bytes to ``dst``'s real address. Because a phalanx_aio node sends Raft messages
to a peer on its *own* outgoing connection (the peer answers on its own connection back), a
directed link carries exactly the messages from ``src`` to ``dst``, so blocking one proxy makes a
one-way partition.

A link is in one of three modes (:class:`LinkMode`):

* ``pass``: bytes are forwarded, each after :attr:`LinkProxy.delay` seconds (order kept);
* ``blackhole``: bytes in both directions are read and discarded; new connections are accepted
  and blackholed too. The sender sees silence and must time out, as when packets are dropped.
  Healing closes every blackholed connection, so no stream resumes half-way through a frame;
* ``reject``: every connection is closed and new ones are closed at once, as when the peer
  resets connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["LinkMode", "LinkProxy", "LinkStats"]

log = logging.getLogger("phalanx_aio.chaos")

_CHUNK = 65536


class LinkMode(StrEnum):
    """What a :class:`LinkProxy` does with traffic."""

    PASS = "pass"
    """Forward (after the link's delay)."""
    BLACKHOLE = "blackhole"
    """Read and discard everything; accept new connections and discard their bytes too."""
    REJECT = "reject"
    """Close every connection; close new ones as soon as they are accepted."""


@dataclass(slots=True)
class LinkStats:
    """Counters of one link."""

    connections: int = 0
    """Connections accepted."""
    bytes_forwarded: int = 0
    bytes_discarded: int = 0
    connections_cut: int = 0
    """Connections closed by the proxy (reject mode, or healing a blackhole)."""


@dataclass(eq=False, slots=True)
class _Conn:
    client_writer: asyncio.StreamWriter
    upstream_writer: asyncio.StreamWriter | None = None
    blackholed: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def close(self) -> None:
        for w in (self.client_writer, self.upstream_writer):
            if w is not None:
                with contextlib.suppress(Exception):
                    w.transport.abort()
        for t in self.tasks:
            t.cancel()


class LinkProxy:
    """Forward TCP connections made to ``127.0.0.1:listen_port`` to ``target`` (``host``,
    ``port``), under the link's current :attr:`mode` and :attr:`delay`.

    ``src`` and ``dst`` name the link (for logs and plots). Start with :meth:`start`, stop with
    :meth:`aclose` (which closes every connection).
    """

    def __init__(self, src: str, dst: str, target: tuple[str, int], listen_port: int) -> None:
        if not 0 < listen_port < 65536:
            raise ValueError(f"listen_port must be in 1-65535, not {listen_port}")
        self.src = src
        """The sending member."""
        self.dst = dst
        """The receiving member."""
        self.target = target
        """``dst``'s real address."""
        self.listen_port = listen_port
        """The port the proxy listens on (on 127.0.0.1)."""
        self.stats = LinkStats()
        """Traffic counters."""
        self._mode = LinkMode.PASS
        self._delay = 0.0
        self._conns: set[_Conn] = set()
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        """``127.0.0.1:listen_port``."""
        return f"127.0.0.1:{self.listen_port}"

    @property
    def mode(self) -> LinkMode:
        """The current mode (set with :meth:`set_mode`)."""
        return self._mode

    @property
    def delay(self) -> float:
        """Seconds every forwarded chunk is held back (set with :meth:`set_delay`)."""
        return self._delay

    def set_delay(self, seconds: float) -> None:
        """Hold every chunk forwarded from now on for ``seconds`` (0: none)."""
        if not seconds >= 0:
            raise ValueError(f"delay must be >= 0, not {seconds!r}")
        self._delay = float(seconds)

    def set_mode(self, mode: LinkMode) -> None:
        """Switch the link to ``mode`` (see the module docstring)."""
        mode = LinkMode(mode)
        if mode is self._mode:
            return
        self._mode = mode
        for conn in list(self._conns):
            if (mode is LinkMode.PASS and conn.blackholed) or mode is LinkMode.REJECT:
                self._cut(conn)
            elif mode is LinkMode.BLACKHOLE:
                conn.blackholed = True

    def heal(self) -> None:
        """Back to ``pass`` with no delay."""
        self.set_delay(0.0)
        self.set_mode(LinkMode.PASS)

    async def start(self) -> None:
        """Start listening (raises :class:`OSError` if the port is taken)."""
        if self._server is not None:
            raise RuntimeError("the proxy is already started")
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.listen_port)

    async def aclose(self) -> None:
        """Stop listening and close every connection. Idempotent."""
        server, self._server = self._server, None
        for conn in list(self._conns):
            self._cut(conn, count=False)
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)

    def _cut(self, conn: _Conn, *, count: bool = True) -> None:
        if conn in self._conns:
            self._conns.discard(conn)
            if count:
                self.stats.connections_cut += 1
        conn.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        conn = _Conn(writer)
        if self._mode is LinkMode.REJECT or self._server is None:
            self.stats.connections_cut += 1
            conn.close()
            return
        self._conns.add(conn)
        try:
            if self._mode is LinkMode.BLACKHOLE:
                conn.blackholed = True
                await self._discard(reader)
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                return
            conn.upstream_writer = up_writer
            if conn not in self._conns:  # cut while connecting
                return
            conn.blackholed = self.mode is not LinkMode.PASS
            loop = asyncio.get_running_loop()
            conn.tasks = [
                loop.create_task(self._pump(conn, reader, up_writer)),
                loop.create_task(self._pump(conn, up_reader, writer)),
            ]
            await asyncio.wait(conn.tasks, return_when=asyncio.FIRST_COMPLETED)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._cut(conn, count=False)

    async def _discard(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(_CHUNK):
                self.stats.bytes_discarded += len(data)

    async def _pump(self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy ``reader`` to ``writer``: discarding while blackholed, delaying by the link's delay."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        pending = [0]  # chunks queued or being sent: later chunks must queue behind them

        async def send() -> None:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                pending[0] -= 1
                if conn.blackholed:
                    self.stats.bytes_discarded += len(data)
                    continue
                writer.write(data)
                self.stats.bytes_forwarded += len(data)
                await writer.drain()

        sender = loop.create_task(send())
        try:
            while data := await reader.read(_CHUNK):
                if conn.blackholed:
                    self.stats.bytes_discarded += len(data)
                    continue
                if self._delay <= 0 and pending[0] == 0:
                    writer.write(data)
                    self.stats.bytes_forwarded += len(data)
                    await writer.drain()
                else:
                    pending[0] += 1
                    queue.put_nowait((loop.time() + self._delay, data))
        except OSError:
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await sender
