"""The standard gRPC health service (``grpc.health.v1.Health``) for a node.

Load balancers, Kubernetes probes and tools such as ``grpc_health_probe`` ask it, on the
node's own port, whether the node can serve:

* service ``""`` (the whole server): ``SERVING`` while the node runs and is healthy (its loop
  alive, its storage taking writes); ``NOT_SERVING`` once its loop failed, while its disk is
  full, or once it is closed;
* service ``"phalanx.v1.KV"``: as ``""``, and a leader must be known (a request could be served
  now); ``"phalanx.v1.RaftPeer"``: as ``""``;
* any other name: ``Check`` ends with gRPC status ``NOT_FOUND``, ``Watch`` answers
  ``SERVICE_UNKNOWN``.

``Watch`` sends the status at once, then each change (looked at every ``watch_interval``
seconds) until the client goes away. The messages are encoded by
:mod:`phalanx_aio.observability._health_codec`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpclib.const
import grpclib.server
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError

from phalanx_aio._grpc import WireBytes
from phalanx_aio.errors import LocalError, ProtocolError
from phalanx_aio.node.raft_node import RaftNode
from phalanx_aio.observability._health_codec import decode_health_request, encode_health_response

__all__ = ["CHECK_METHOD", "NOT_SERVING", "SERVICE_UNKNOWN", "SERVING", "WATCH_METHOD", "HealthService"]

CHECK_METHOD = "/grpc.health.v1.Health/Check"
"""The gRPC path of the one-shot check."""
WATCH_METHOD = "/grpc.health.v1.Health/Watch"
"""The gRPC path of the streaming watch."""
SERVING, NOT_SERVING, SERVICE_UNKNOWN = 1, 2, 3
"""``ServingStatus`` values of ``grpc.health.v1``."""

_SERVICES = ("", "phalanx.v1.KV", "phalanx.v1.RaftPeer")


class HealthService:
    """``grpc.health.v1.Health`` for one :class:`RaftNode`; give it to the transport as an extra
    handler (``GrpcTransport(extra_handlers=[...])``), as ``phalanx-aio serve`` does."""

    def __init__(self, node: RaftNode | None = None, *, watch_interval: float = 0.5) -> None:
        if not watch_interval > 0:
            raise LocalError(f"watch_interval must be positive, not {watch_interval!r}")
        self._node = node
        self.watch_interval = watch_interval
        """Seconds between two looks at the node's status during a ``Watch``."""

    def attach(self, node: RaftNode) -> None:
        """Answer for ``node`` from now on."""
        self._node = node

    def status(self, service: str) -> int:
        """The ``ServingStatus`` of ``service`` now (see the module's text)."""
        if service not in _SERVICES:
            return SERVICE_UNKNOWN
        node = self._node
        if node is None or not node.running or not node.healthy:
            return NOT_SERVING
        if service == "phalanx.v1.KV" and node.leader_id is None:
            return NOT_SERVING
        return SERVING

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        """gRPC method path -> grpclib handler."""
        return {
            CHECK_METHOD: grpclib.const.Handler(self._check, Cardinality.UNARY_UNARY, WireBytes, WireBytes),
            WATCH_METHOD: grpclib.const.Handler(self._watch, Cardinality.UNARY_STREAM, WireBytes, WireBytes),
        }

    async def _service(self, stream: grpclib.server.Stream[Any, Any]) -> str:
        request = await stream.recv_message()
        assert request is not None
        try:
            return decode_health_request(request.data)
        except ProtocolError as exc:
            raise GRPCError(Status.INVALID_ARGUMENT, str(exc)) from None

    async def _check(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        service = await self._service(stream)
        status = self.status(service)
        if status == SERVICE_UNKNOWN:
            raise GRPCError(Status.NOT_FOUND, f"unknown service {service[:100]!r}")
        await stream.send_message(WireBytes(encode_health_response(status)))

    async def _watch(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        service = await self._service(stream)
        last = None
        while True:
            status = self.status(service)
            if status != last:
                await stream.send_message(WireBytes(encode_health_response(status)))
                last = status
            await asyncio.sleep(self.watch_interval)
