"""A live three-node KV cluster for the fuzz tests, run by an event loop in a background thread.

Hypothesis drives synchronous test functions; the cluster (``RaftNode`` + ``KVService`` over
``GrpcTransport`` and SQLite, on loopback) keeps running between examples in its own thread, and
each example hands a coroutine to that loop with :meth:`LiveCluster.run`. Raw grpclib calls
(:meth:`LiveCluster.call`) send whatever bytes a test makes and report the gRPC outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from phalanx_aio import Config, RaftNode, SQLiteStorage
from phalanx_aio._grpc import WireBytes
from phalanx_aio._net import free_loopback_ports
from phalanx_aio.kv.messages import PutRequest, RequestHeader
from phalanx_aio.kv.service import MIN_REQUEST_BYTES, KVService
from phalanx_aio.kv.state_machine import KVStateMachine
from phalanx_aio.transport.codec import Limits
from phalanx_aio.transport.grpc import GrpcTransport
from tests.helpers import find_leader, poll_until

T = TypeVar("T")

CLUSTER = "fuzz"
DEADLINE = 20.0
"""Generous: the machine running the tests is shared."""
LIMITS = Limits(max_frame_bytes=64 << 10)
"""Small frame limit, so that oversized input is cheap to make."""
MAX_REQUEST = MIN_REQUEST_BYTES
"""The KV services' request limit (the smallest allowed)."""
MAX_KEY, MAX_VALUE = 256, 4096
"""The KV services' key and value limits (small, so that oversized ones fit in a request)."""
REFUSALS = frozenset(
    {Status.INVALID_ARGUMENT, Status.RESOURCE_EXHAUSTED, Status.FAILED_PRECONDITION, Status.PERMISSION_DENIED}
)
"""The gRPC statuses bad input may get; anything else (UNKNOWN, INTERNAL...) means a handler broke."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a raw call got: the reply messages, or the gRPC status that ended it."""

    status: Status | None
    message: str
    replies: tuple[bytes, ...]


class LiveCluster:
    """Three nodes of cluster :data:`CLUSTER` on loopback, in a background event loop."""

    def __init__(self, tmp: Path, ids: Sequence[str] = ("n1", "n2", "n3")) -> None:
        self.tmp = tmp
        self.ids = list(ids)
        ports = free_loopback_ports(len(self.ids))
        self.addr = {nid: f"127.0.0.1:{p}" for nid, p in zip(self.ids, ports, strict=True)}
        self.nodes: dict[str, RaftNode] = {}
        self.services: dict[str, KVService] = {}
        self.transports: dict[str, GrpcTransport] = {}
        self.stores: dict[str, SQLiteStorage] = {}
        self._channels: dict[str, Channel] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="live-cluster", daemon=True)
        self._writes = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the loop thread and the three nodes; wait for a leader."""
        self._thread.start()
        self.run(self._start())

    async def _start(self) -> None:
        for nid in self.ids:
            service = KVService(
                max_key_bytes=MAX_KEY, max_value_bytes=MAX_VALUE, max_request_bytes=MAX_REQUEST
            )
            transport = GrpcTransport(
                node_id=nid,
                cluster_id=CLUSTER,
                listen=self.addr[nid],
                limits=LIMITS,
                backoff_initial=0.01,
                backoff_max=0.2,
                extra_handlers=[service],
            )
            node = RaftNode(
                nid,
                address=self.addr[nid],
                peers={p: a for p, a in self.addr.items() if p != nid},
                state_machine=KVStateMachine(),
                storage=self.stores.setdefault(nid, SQLiteStorage(self.tmp / f"{nid}.db")),
                config=Config.lan(tick_interval=0.02),
                cluster_id=CLUSTER,
                transport=transport,
                seed=len(self.nodes),
            )
            service.attach(node)
            await node.start()
            self.nodes[nid], self.services[nid], self.transports[nid] = node, service, transport
        await find_leader(self.nodes.values, DEADLINE)

    def close(self) -> None:
        """Close the channels and nodes, stop the loop and join its thread (idempotent)."""
        if self._loop.is_closed():
            return
        try:
            self.run(self._close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(DEADLINE)
            self._loop.close()

    async def _close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        for node in self.nodes.values():
            await node.aclose()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = DEADLINE) -> T:
        """Run ``coro`` on the cluster's loop and return its result (waits up to ``timeout``)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # ------------------------------------------------------------------ checks

    def broken(self) -> list[str]:
        """The nodes whose loop task ended or that report themselves unhealthy (should be none)."""

        async def check() -> list[str]:
            bad = []
            for nid, node in self.nodes.items():
                task = node._loop_task
                if task is None or task.done() or not node.healthy:
                    bad.append(f"{nid}: {node._failure!r}")
            return bad

        return self.run(check())

    def rejected(self, nid: str) -> dict[str, int]:
        """The ``rejected_*`` transport counters of ``nid``."""
        return {k: v for k, v in self.transports[nid].stats.items() if k.startswith("rejected_")}

    def commit_a_write(self) -> None:
        """Put a fresh key through the leader (waiting for one) and check that it committed."""
        self._writes += 1
        n = self._writes

        async def write() -> None:
            async def attempt() -> bool:
                leader = await find_leader(self.nodes.values, DEADLINE)
                header = RequestHeader(CLUSTER, "live-cluster-writer", n, n - 1)
                response = await self.services[leader.id].handle(
                    PutRequest(header, b"after-fuzz", b"%d" % n), timeout=2.0
                )
                return response.header.error.name == "OK"

            async def until_ok() -> None:
                while not await attempt():
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(until_ok(), DEADLINE)
            await poll_until(
                lambda: all(
                    isinstance(node.state_machine, KVStateMachine)
                    and node.state_machine.get(b"after-fuzz") == b"%d" % n
                    for node in self.nodes.values()
                ),
                DEADLINE,
            )

        self.run(write(), DEADLINE * 3)

    # ------------------------------------------------------------------ raw calls

    def send_raw(self, nid: str, data: bytes) -> bytes:
        """Open a TCP connection to ``nid``, write ``data`` (not even HTTP/2, perhaps), and
        return what the server answers until it closes the connection (or a second passes)."""

        async def exchange() -> bytes:
            host, port = self.addr[nid].rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port))
            got = b""
            try:
                writer.write(data)
                await writer.drain()
                writer.write_eof()
                async with asyncio.timeout(1.0):
                    while chunk := await reader.read(65536):
                        got += chunk
            except (TimeoutError, ConnectionError):
                pass
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
            return got

        return self.run(exchange())

    def call(
        self,
        nid: str,
        method: str,
        payloads: Sequence[bytes],
        *,
        cardinality: Cardinality = Cardinality.STREAM_UNARY,
        raw: bytes | None = None,
    ) -> Outcome:
        """Call ``method`` on ``nid`` with ``payloads`` as gRPC messages (or, with ``raw``, with
        those bytes as the request body, gRPC prefixes and all) and report the outcome."""
        return self.run(self._call(nid, method, payloads, cardinality, raw))

    async def _call(
        self, nid: str, method: str, payloads: Sequence[bytes], cardinality: Cardinality, raw: bytes | None
    ) -> Outcome:
        channel = self._channels.get(nid)
        if channel is None:
            host, port = self.addr[nid].rsplit(":", 1)
            channel = self._channels[nid] = Channel(host, int(port))
        replies: list[bytes] = []
        try:
            async with channel.request(method, cardinality, WireBytes, WireBytes, timeout=DEADLINE) as call:
                await call.send_request()
                try:
                    if raw is not None:
                        await call._stream.send_data(raw, end_stream=True)
                        call._end_done = True
                    elif cardinality.client_streaming:
                        for p in payloads:
                            await call.send_message(WireBytes(p))
                        await call.end()
                    else:
                        await call.send_message(WireBytes(payloads[0]), end=True)
                except (StreamTerminatedError, ConnectionError):
                    pass  # the server already ended the call: its status says why
                while True:
                    reply = await call.recv_message()
                    if reply is None:
                        break
                    replies.append(reply.data)
                    if not cardinality.server_streaming:
                        break
        except GRPCError as exc:
            return Outcome(exc.status, exc.message or "", tuple(replies))
        return Outcome(None, "", tuple(replies))
