"""The typed command layer: replicated objects whose methods are commands.

:class:`ReplicatedState` and :func:`command` (also exported by :mod:`phalanx_aio`) turn a plain
class into a state machine; :class:`ReplicatedGroup` hosts several such objects on one node;
the codecs decide how arguments and state become bytes (:class:`SafeCodec` by default;
:class:`PickleCodec` only when every peer is trusted). See the "Replicated objects and
commands" page of the docs.
"""

from phalanx_aio.commands.codec import MAX_DEPTH, Codec, PickleCodec, SafeCodec
from phalanx_aio.commands.state import (
    BoundCommand,
    Command,
    ReplicatedGroup,
    ReplicatedState,
    command,
)

__all__ = [
    "MAX_DEPTH",
    "BoundCommand",
    "Codec",
    "Command",
    "PickleCodec",
    "ReplicatedGroup",
    "ReplicatedState",
    "SafeCodec",
    "command",
]
