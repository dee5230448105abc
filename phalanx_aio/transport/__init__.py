"""The gRPC transport: how nodes carry core messages to each other.

:mod:`phalanx_aio.transport.codec` turns core messages into wire frames and back; it is the
only module that touches the generated protobuf code in ``_proto`` (see ``docs/wire.md``).
"""
