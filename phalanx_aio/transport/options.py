"""The settings of a :class:`~phalanx_aio.transport.grpc.GrpcTransport`, checked once."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from phalanx_aio.errors import ConfigError
from phalanx_aio.transport.codec import DEFAULT_LIMITS, Limits

__all__ = ["TransportOptions"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TransportOptions:
    """Everything a :class:`~phalanx_aio.transport.grpc.GrpcTransport` is tuned by, besides who
    it is (node and cluster id), where it listens and whom it talks to. The constructor of the
    transport takes these as keyword arguments and documents each; building the options checks
    them all (:class:`~phalanx_aio.errors.ConfigError` naming the first bad one).
    ``snapshot_chunk_bytes=None`` becomes 1 MiB, or half of ``limits.max_frame_bytes`` if less.
    """

    server_ssl: ssl.SSLContext | None = None
    client_ssl: ssl.SSLContext | None = None
    bind_node_ids: bool = False
    limits: Limits = DEFAULT_LIMITS
    backoff_initial: float = 0.05
    backoff_max: float = 2.0
    backoff_jitter: float = 0.5
    max_queue: int = 8192
    connect_timeout: float = 5.0
    send_timeout: float = 30.0
    snapshot_chunk_bytes: int | None = None
    max_connections: int = 1000
    max_connection_rate: float = 100.0
    handshake_timeout: float = 10.0
    max_concurrent_streams: int = 100
    keepalive_interval: float | None = 1.0
    keepalive_timeout: float = 4.0

    def __post_init__(self) -> None:
        if not isinstance(self.limits, Limits):
            raise ConfigError(f"limits must be a codec Limits, not {type(self.limits).__name__}")
        for name, value in (
            ("backoff_initial", self.backoff_initial),
            ("backoff_max", self.backoff_max),
            ("connect_timeout", self.connect_timeout),
            ("send_timeout", self.send_timeout),
            ("max_connection_rate", self.max_connection_rate),
            ("handshake_timeout", self.handshake_timeout),
            ("keepalive_timeout", self.keepalive_timeout),
            ("keepalive_interval", 1.0 if self.keepalive_interval is None else self.keepalive_interval),
        ):
            if not isinstance(value, int | float) or not value > 0:
                raise ConfigError(f"{name} must be a positive number of seconds, not {value!r}")
        if self.backoff_max < self.backoff_initial:
            raise ConfigError("backoff_max must be at least backoff_initial")
        jitter = self.backoff_jitter
        if not isinstance(jitter, int | float) or not 0 <= jitter <= 1:
            raise ConfigError(f"backoff_jitter must be between 0 and 1, not {jitter!r}")
        for name, count in (
            ("max_queue", self.max_queue),
            ("max_connections", self.max_connections),
            ("max_concurrent_streams", self.max_concurrent_streams),
        ):
            if type(count) is not int or count < 1:
                raise ConfigError(f"{name} must be a positive int, not {count!r}")
        mutual = self.server_ssl is not None and self.server_ssl.verify_mode == ssl.CERT_REQUIRED
        if self.bind_node_ids and not mutual:
            raise ConfigError(
                "bind_node_ids needs mutual TLS: a server_ssl context that requires client certificates"
            )
        chunk = self.snapshot_chunk_bytes
        if chunk is None:
            chunk = min(1 << 20, self.limits.max_frame_bytes // 2)
            object.__setattr__(self, "snapshot_chunk_bytes", chunk)
        if type(chunk) is not int or not 0 < chunk <= self.limits.max_frame_bytes // 2:
            raise ConfigError(
                "snapshot_chunk_bytes must be a positive int of at most half of limits.max_frame_bytes"
            )

    @property
    def chunk_bytes(self) -> int:
        """:attr:`snapshot_chunk_bytes`, resolved."""
        assert self.snapshot_chunk_bytes is not None
        return self.snapshot_chunk_bytes
