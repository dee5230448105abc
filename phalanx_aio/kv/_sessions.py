"""Client sessions of the KV state machine (private; public through
:mod:`phalanx_aio.kv.state_machine`): their bounds (:class:`SessionLimits`), what each session
remembers, and what it costs against the bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

from phalanx_aio.errors import LocalError

__all__ = ["RESULT_OVERHEAD", "SESSION_OVERHEAD", "SessionLimits"]


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """The bounds on client sessions (:class:`KVStateMachine`).

    They are rules of the replicated state machine: **every member must use the same values**,
    or members would forget different sessions and answer a retried write differently. Costs are
    counted in bytes of remembered results plus a fixed allowance per session
    (:data:`SESSION_OVERHEAD` plus its id) and per result (:data:`RESULT_OVERHEAD`), so that
    they depend only on the replicated state.
    """

    session_ttl: int = 100_000
    """A session unused for this many applied commands expires (checked every 1,024)."""
    max_sessions: int = 50_000
    """Sessions kept; opening one more evicts the least recently used."""
    max_session_bytes: int = 64 << 20
    """The cost of every session together; above it the least recently used are evicted."""
    max_results_per_session: int = 4096
    """Unacknowledged results one session keeps; beyond it the oldest is forgotten."""
    max_result_bytes_per_session: int = 4 << 20
    """The cost of one session's results; beyond it the oldest are forgotten (the newest is
    always kept)."""

    def __post_init__(self) -> None:
        for name in (
            "session_ttl",
            "max_sessions",
            "max_session_bytes",
            "max_results_per_session",
            "max_result_bytes_per_session",
        ):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise LocalError(f"SessionLimits.{name} must be a positive int, not {value!r}")


SESSION_OVERHEAD = 256
"""The cost counted for each session besides its id and results (its record and slots)."""
RESULT_OVERHEAD = 64
"""The cost counted for each remembered result besides the bytes of a bytes result."""


def _result_cost(result: object) -> int:
    return RESULT_OVERHEAD + len(result) if isinstance(result, bytes) else RESULT_OVERHEAD


@dataclass(slots=True)
class _Session:
    last_used: int
    results: dict[int, object]
    acked: int = 0
    last_seq: int = 0
    """The highest number with a result remembered so far."""
    in_order: bool = True
    """``results`` was filled in increasing order of number (so the lowest come first)."""
    cost: int = 0
    """What the results count against the limits (:func:`_result_cost` of each)."""

    def forget_up_to(self, acked: int) -> None:
        """Forget every result numbered ``acked`` or below."""
        results = self.results
        if self.in_order:  # the usual case: the lowest numbers come first
            while results:
                first = next(iter(results))
                if first > acked:
                    break
                r = results.pop(first)
                self.cost -= RESULT_OVERHEAD + len(r) if r.__class__ is bytes else RESULT_OVERHEAD
        else:
            for s in [s for s in results if s <= acked]:
                self.cost -= _result_cost(results.pop(s))
        if not results:
            self.in_order = True

    def forget_oldest(self) -> None:
        """Forget the lowest-numbered result, and treat its number as acknowledged: a retry of
        it (or of anything below) is then refused instead of being applied a second time."""
        results = self.results
        oldest = next(iter(results)) if self.in_order else min(results)
        self.cost -= _result_cost(results.pop(oldest))
        self.acked = max(self.acked, oldest)

    def remember(self, seq: int, result: object) -> None:
        """Keep the result of request ``seq``."""
        if seq < self.last_seq:
            self.in_order = False
        else:
            self.last_seq = seq
        self.results[seq] = result
        self.cost += RESULT_OVERHEAD + len(result) if result.__class__ is bytes else RESULT_OVERHEAD


def _session_cost(cid: str, sess: _Session) -> int:
    return SESSION_OVERHEAD + len(cid) + sess.cost
