"""The replicated key-value service: a state machine with exactly-once client sessions."""

from phalanx_aio.kv.state_machine import (
    KVCommand,
    KVOp,
    KVStateMachine,
    SessionExpired,
    decode_command,
    encode_command,
)

__all__ = ["KVCommand", "KVOp", "KVStateMachine", "SessionExpired", "decode_command", "encode_command"]
