"""The error hierarchy of phalanx_aio.

Every error the library raises derives from :class:`PhalanxError`. Errors are split by blame,
following h11's example:

* :class:`LocalError`: the caller misused the API (a bad argument, a closed node).
* :class:`RemoteError`: a peer or a file misbehaved (a malformed frame, a corrupt database).

Outcome errors say what happened to an operation:

* :class:`NotApplied` (and its subclasses :class:`NotLeader` and :class:`ProposalDropped`): the
  operation certainly did not take effect and never will. Retrying is safe.
* :class:`OutcomeUnknown` (and its subclass :class:`Timeout`): the operation may or may not take
  effect. Only an idempotent operation (or one made through a client session) may be retried.

This module imports only the standard library so that the sans-IO core can use it.
"""

from __future__ import annotations

__all__ = [
    "ClosedError",
    "ConfigError",
    "LocalError",
    "NotApplied",
    "NotLeader",
    "OutcomeUnknown",
    "PhalanxError",
    "ProposalDropped",
    "ProtocolError",
    "RemoteError",
    "StorageError",
    "Timeout",
    "UnknownCommand",
    "UnsupportedValue",
]


class PhalanxError(Exception):
    """Root of every error raised by phalanx_aio."""


class LocalError(PhalanxError):
    """The caller misused the library: the fault is on this side."""


class RemoteError(PhalanxError):
    """Something outside this process misbehaved: a peer, a client or a file."""


class ConfigError(LocalError, ValueError):
    """A configuration value is invalid; the message names the field and the rule it breaks."""


class ClosedError(LocalError):
    """The node (or client) was closed; operations on it are refused."""


class UnsupportedValue(LocalError, TypeError):
    """A command's argument (or a replicated object's state) is a value its codec cannot
    represent; raised before anything is proposed, naming the offending part."""


class NotApplied(PhalanxError):
    """The operation certainly did not take effect and never will; it is safe to retry."""


class ProposalDropped(NotApplied):
    """The core refused a proposal, read or change at once; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotLeader(ProposalDropped):
    """This node is not the leader; ``leader_id`` is the known leader, or ``None``."""

    def __init__(self, leader_id: str | None, reason: str = "") -> None:
        msg = reason or (
            f"not the leader (leader is {leader_id!r})" if leader_id else "not the leader (no leader known)"
        )
        super().__init__(msg)
        self.leader_id = leader_id


class OutcomeUnknown(PhalanxError):
    """The operation may or may not have taken effect (for example a connection broke)."""


class Timeout(OutcomeUnknown):
    """A deadline passed before the outcome of the operation was known."""


class StorageError(RemoteError):
    """The durable store failed or holds data that cannot be trusted; the message names the file."""


class ProtocolError(RemoteError):
    """A peer sent something that breaks the protocol (malformed, foreign cluster, unknown node)."""


class UnknownCommand(ProtocolError):
    """A replicated object was asked to apply a command it does not define (a member running
    an older version of the code, or a command renamed without an alias). The member that
    proposed it receives this error; the node keeps running."""
