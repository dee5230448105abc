"""The two messages of ``grpc.health.v1`` that :mod:`phalanx_aio.observability.grpc_health`
reads and writes, by hand (the standard's schema is tiny and fixed)."""

from __future__ import annotations

from typing import Final

from phalanx_aio._protowire import LEN, VARINT, bad, fields, tag, uvarint, wrong_wire

__all__ = ["decode_health_request", "encode_health_response"]

_RESPONSE_STATUS: Final = tag(1, VARINT)


def decode_health_request(data: bytes) -> str:
    """The ``service`` of a ``grpc.health.v1.HealthCheckRequest`` (field 1, a string);
    :class:`ProtocolError` if malformed. Unknown fields are skipped, as protobuf does."""
    service = ""
    for number, wire, a, b in fields(data, 0, len(data), "health check request"):
        if number == 1:
            if wire != LEN:
                wrong_wire("health check request", "service", wire)
            if b - a > 1024:
                bad("health check request: service name over 1024 bytes")
            try:
                service = data[a:b].decode()
            except UnicodeDecodeError:
                bad("health check request: service name is not UTF-8")
    return service


def encode_health_response(status: int) -> bytes:
    """A ``grpc.health.v1.HealthCheckResponse`` with ``status`` (field 1, the ServingStatus
    enum: 0 unknown, 1 serving, 2 not serving, 3 service unknown)."""
    return _RESPONSE_STATUS + uvarint(status) if status else b""
