"""A :class:`~phalanx_aio.kv.KVService` that reports its writes and refusals to a node's
Prometheus metrics (:class:`~phalanx_aio.observability.NodeMetrics`)."""

from __future__ import annotations

import time
from typing import Final

from phalanx_aio.kv.messages import (
    CompareAndSetRequest,
    DeleteRequest,
    ErrorCode,
    KVRequest,
    KVResponse,
    PutRequest,
)
from phalanx_aio.kv.service import DEFAULT_QUOTA_BYTES, KVService
from phalanx_aio.observability.metrics import NodeMetrics

__all__ = ["MeteredKVService"]

_WRITES: Final = (PutRequest, DeleteRequest, CompareAndSetRequest)
_NOT_PROPOSED: Final = frozenset({ErrorCode.NOT_LEADER, ErrorCode.WRONG_CLUSTER, ErrorCode.INVALID_ARGUMENT})
_REFUSALS: Final = {ErrorCode.WRONG_CLUSTER: "cluster", ErrorCode.INVALID_ARGUMENT: "invalid"}


class MeteredKVService(KVService):
    """A :class:`~phalanx_aio.kv.KVService` that reports each write (put, delete, cas) to
    :meth:`NodeMetrics.observe_write` and each request refused for naming another cluster or for
    bad input to :meth:`NodeMetrics.observe_refusal`. Writes refused before being proposed are
    not counted as proposals."""

    def __init__(
        self,
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
        super().__init__(
            max_key_bytes=max_key_bytes,
            max_value_bytes=max_value_bytes,
            max_request_bytes=max_request_bytes,
            max_stream_inflight=max_stream_inflight,
            max_stream_buffer_bytes=max_stream_buffer_bytes,
            max_connection_buffer_bytes=max_connection_buffer_bytes,
            max_buffer_bytes=max_buffer_bytes,
            stall_timeout=stall_timeout,
            quota_bytes=quota_bytes,
        )
        self.metrics: NodeMetrics | None = None
        """Where writes are reported; set it once the node exists."""

    async def handle(self, request: KVRequest, *, timeout: float | None = None) -> KVResponse:
        """Answer like :meth:`KVService.handle`, counting what is reported to :attr:`metrics`."""
        metrics = self.metrics
        if metrics is None:
            return await super().handle(request, timeout=timeout)
        start = time.perf_counter()
        response = await super().handle(request, timeout=timeout)
        code = response.header.error
        if isinstance(request, _WRITES) and code not in _NOT_PROPOSED:
            metrics.observe_write("ok" if code is ErrorCode.OK else "failed", time.perf_counter() - start)
        reason = _REFUSALS.get(code)
        if reason is not None:
            metrics.observe_refusal(reason)
        return response
