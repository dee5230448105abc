"""Observability for a served node: Prometheus metrics and a tiny HTTP endpoint
(``/healthz``, ``/status``, ``/metrics``). ``docs/observability.md`` describes them."""

from __future__ import annotations

from phalanx_aio.observability.http import ObservabilityServer
from phalanx_aio.observability.metrics import MeteredKVService, NodeMetrics

__all__ = ["MeteredKVService", "NodeMetrics", "ObservabilityServer"]
