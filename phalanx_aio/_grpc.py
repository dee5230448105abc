"""gRPC plumbing shared by the peer transport, the KV service and client, the health service and
the command line (private).

Everything here is about grpclib, not about Raft or the KV store.
"""

from __future__ import annotations

__all__ = ["WireBytes"]


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
