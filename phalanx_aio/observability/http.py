"""A tiny asyncio HTTP/1.x server for one node: ``GET /healthz``, ``/status`` and ``/metrics``.

It answers one request per connection (``Connection: close``) and nothing else: it is meant for
a load balancer's health check and a Prometheus scraper on a trusted network, not the internet.

* ``/healthz``: ``200 ok`` if the node runs, is healthy and knows a leader; otherwise ``503``
  with the reason.
* ``/status``: the node's :class:`~phalanx_aio.node.NodeStatus` as JSON (without the
  core's per-follower progress); ``503`` if the node is not running.
* ``/metrics``: :class:`~phalanx_aio.observability.metrics.NodeMetrics` in the Prometheus text
  format.

``GET`` and ``HEAD`` are served; another method gets ``405``, an unknown path ``404``, a request
that is not HTTP/1.x (or too long, or too slow to arrive) ``400``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from types import TracebackType
from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST

from phalanx_aio.errors import PhalanxError
from phalanx_aio.node.raft_node import RaftNode
from phalanx_aio.observability.metrics import NodeMetrics

__all__ = ["ObservabilityServer"]

log = logging.getLogger("phalanx_aio.observability")

_LINE_LIMIT: Final = 8192
_MAX_HEADERS: Final = 100
_REQUEST_TIMEOUT: Final = 10.0
_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_TEXT: Final = "text/plain; charset=utf-8"


class _BadRequest(Exception):
    pass


class ObservabilityServer:
    """Serve ``/healthz``, ``/status`` and ``/metrics`` for ``node`` on ``host:port`` (port 0:
    any free port; :attr:`port` says which). Use as ``async with`` or :meth:`start` and
    :meth:`aclose`. Gauges are read from the node at each ``/metrics`` request; the event
    counters are kept exact by ``metrics`` itself."""

    def __init__(
        self,
        node: RaftNode,
        metrics: NodeMetrics | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.node = node
        self.metrics = metrics if metrics is not None else NodeMetrics(node)
        self.host = host
        self.port = port
        """The port listened on (the real one once started)."""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> ObservabilityServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Start listening (raises :class:`OSError` if the address is taken)."""
        self._server = await asyncio.start_server(self._client, self.host, self.port, limit=_LINE_LIMIT)
        sockets = self._server.sockets
        if sockets:
            self.port = int(sockets[0].getsockname()[1])

    async def aclose(self) -> None:
        """Stop listening and close open connections. Idempotent."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    # ----------------------------------------------------------------- requests

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(_REQUEST_TIMEOUT):
                    method, path = await _read_request(reader)
            except (
                _BadRequest,
                TimeoutError,
                ValueError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
            ) as exc:
                reason = str(exc) or type(exc).__name__
                await _respond(writer, 400, f"bad request: {reason}\n".encode(), _TEXT)
                return
            if method not in ("GET", "HEAD"):
                await _respond(writer, 405, b"method not allowed\n", _TEXT, extra=[("Allow", "GET, HEAD")])
                return
            try:
                status, body, ctype = self._route(path)
            except Exception:
                log.exception("observability endpoint: error serving %s", path)
                status, body, ctype = 500, b"internal error\n", _TEXT
            await _respond(writer, status, b"" if method == "HEAD" else body, ctype, length=len(body))
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    def _route(self, path: str) -> tuple[int, bytes, str]:
        if path == "/healthz":
            return self._healthz()
        if path == "/status":
            return self._status()
        if path == "/metrics":
            return 200, self.metrics.exposition(), CONTENT_TYPE_LATEST
        return 404, b"not found\n", _TEXT

    def _healthz(self) -> tuple[int, bytes, str]:
        try:
            st = self.node.status()
        except PhalanxError as exc:
            return 503, f"not running: {exc}\n".encode(), _TEXT
        if not st.healthy:
            return 503, b"unhealthy: storage refuses writes or the node failed\n", _TEXT
        if st.leader is None:
            return 503, b"no leader known\n", _TEXT
        return 200, b"ok\n", _TEXT

    def _status(self) -> tuple[int, bytes, str]:
        try:
            st = self.node.status()
        except PhalanxError as exc:
            body = json.dumps({"error": f"not running: {exc}"}).encode() + b"\n"
            return 503, body, "application/json"
        doc = {f.name: getattr(st, f.name) for f in dataclasses.fields(st) if f.name != "core"}
        return 200, json.dumps(doc, sort_keys=True).encode() + b"\n", "application/json"


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str]:
    """Read the request line and headers; return the method and the path (without a query)."""
    line = await reader.readuntil(b"\n")
    try:
        text = line.decode("ascii").rstrip("\r\n")
    except UnicodeDecodeError:
        raise _BadRequest("request line is not ASCII") from None
    parts = text.split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[2].startswith("HTTP/1."):
        raise _BadRequest("malformed request line")
    method, target, _version = parts
    if not target.startswith("/"):
        raise _BadRequest("the target must be a path")
    for _ in range(_MAX_HEADERS + 1):
        header = await reader.readuntil(b"\n")
        if header in (b"\r\n", b"\n"):
            return method.upper(), target.split("?", 1)[0]
        if b":" not in header:
            raise _BadRequest("malformed header line")
    raise _BadRequest("too many headers")


async def _respond(
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes,
    content_type: str,
    *,
    length: int | None = None,
    extra: list[tuple[str, str]] | None = None,
) -> None:
    headers = [
        ("Content-Type", content_type),
        ("Content-Length", str(len(body) if length is None else length)),
        ("Connection", "close"),
        *(extra or []),
    ]
    head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    writer.write(head.encode("ascii") + body)
    await writer.drain()
