"""The gRPC transport: how nodes carry core messages to each other.

:mod:`phalanx_aio.transport.codec` turns core messages into wire frames and back and
:mod:`phalanx_aio.transport.chunks` carries snapshots (see ``docs/wire.md``).
"""
