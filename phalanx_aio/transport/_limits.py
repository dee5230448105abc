"""The size bounds of the peer wire codec (private; public as
:class:`phalanx_aio.transport.codec.Limits`): what a frame, a message, an id, a configuration and
a snapshot may hold, checked alike when encoding and decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

from phalanx_aio.errors import ConfigError

__all__ = ["DEFAULT_LIMITS", "Limits"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds that both the encoder and the decoder enforce; anything larger is refused.

    The defaults leave room above the core's own defaults (``Config.max_msg_bytes`` 1 MiB,
    ``max_msg_entries`` 1024) while keeping one frame's memory bounded.
    """

    max_frame_bytes: int = 64 << 20
    """One encoded frame or snapshot chunk."""
    max_messages: int = 16_384
    """Core messages in one frame."""
    max_entries: int = 65_536
    """Entries in one message."""
    max_id_bytes: int = 255
    """A node id or cluster id, in UTF-8 bytes."""
    max_context_bytes: int = 64 << 10
    """A message's ``context`` and each member's context in a configuration."""
    max_members: int = 1024
    """Voters plus learners in a configuration."""
    max_snapshot_bytes: int = 1 << 30
    """The data of one snapshot received in chunks (held in memory until complete)."""

    def __post_init__(self) -> None:
        for name in (
            "max_frame_bytes",
            "max_messages",
            "max_entries",
            "max_id_bytes",
            "max_context_bytes",
            "max_members",
            "max_snapshot_bytes",
        ):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ConfigError(f"invalid Limits: {name} must be a positive int, not {value!r}")


DEFAULT_LIMITS = Limits()
"""The limits used when none are given."""
