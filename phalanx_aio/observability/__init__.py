"""Observability for a served node: Prometheus metrics counted from the node's events, a tiny
HTTP endpoint (``/healthz``, ``/status``, ``/metrics``), the standard gRPC health and server
reflection services, and structured logging (text or JSON
lines with the node id and term). ``docs/observability.md`` describes them."""

from __future__ import annotations

from phalanx_aio.observability.grpc_health import HealthService
from phalanx_aio.observability.grpc_reflection import ReflectionService
from phalanx_aio.observability.http import ObservabilityServer
from phalanx_aio.observability.logs import (
    JsonFormatter,
    NodeContextFilter,
    TextFormatter,
    bind_node,
    configure_logging,
)
from phalanx_aio.observability.metrics import NodeMetrics

__all__ = [
    "HealthService",
    "JsonFormatter",
    "NodeContextFilter",
    "NodeMetrics",
    "ObservabilityServer",
    "ReflectionService",
    "TextFormatter",
    "bind_node",
    "configure_logging",
]
