"""Named locks with a time to live measured in log time, and fencing tokens."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from phalanx_aio.commands import Codec, ReplicatedState, command
from phalanx_aio.errors import LocalError, ProtocolError

__all__ = ["LockManager"]


def _check_ttl(ttl: float) -> None:
    if not (isinstance(ttl, int | float) and math.isfinite(ttl) and ttl > 0):
        raise LocalError(f"a lock's ttl must be a finite number of seconds > 0, not {ttl!r}")


class LockManager(ReplicatedState):
    """Named locks that expire, with a fencing token per acquisition.

    Time here is *log time*: every command carries the proposer's clock reading (``clock``,
    ``time.time`` by default) and applying it moves the manager's clock, :attr:`log_time`, to
    the largest reading seen so far; it never goes back. Whether a lock has expired is decided
    from log time only, so every member decides alike, whatever its own clock says. A lock
    taken with ``ttl`` at log time *t* is free again for commands applied at log time
    *t + ttl* or later. Proposers' clocks should agree to within a small fraction of the ttls
    used: one running ahead ends other holders' locks early (never late).

    Each successful acquisition gets a fencing token, larger than every token handed out
    before (for any name). Pass it to the resources the lock protects and have them refuse
    tokens older than the newest they saw: a holder whose lock expired while it was paused
    is then refused, even if it does not know yet.
    """

    def __init__(
        self, *, clock: Callable[[], float] = time.time, name: str | None = None, codec: Codec | None = None
    ) -> None:
        super().__init__(name=name, codec=codec)
        self._clock = clock
        self._now = 0.0
        self._next_token = 1
        self._locks: dict[str, tuple[int, float]] = {}  # name -> (token, expiry in log time)
        self._ops = 0  # commands since expired locks were last forgotten

    # ------------------------------------------------------------------ calls

    async def acquire(self, name: str, *, ttl: float, timeout: float | None = None) -> int | None:
        """Take lock ``name`` for ``ttl`` seconds of log time; return its fencing token, or
        None if another holder has it (not expired)."""
        _check_ttl(ttl)
        return await self._acquire.with_timeout(timeout)(name, float(ttl), float(self._clock()))

    async def renew(self, name: str, token: int, *, ttl: float, timeout: float | None = None) -> bool:
        """Extend the lock held with ``token`` to ``ttl`` seconds of log time from now; False
        if that token no longer holds it (expired, released or taken by another)."""
        _check_ttl(ttl)
        return await self._renew.with_timeout(timeout)(name, token, float(ttl), float(self._clock()))

    async def release(self, name: str, token: int, *, timeout: float | None = None) -> bool:
        """Release the lock held with ``token``; True if that token still held it (False if
        it had expired, or another holder has it now, whose lock is left alone)."""
        return await self._release.with_timeout(timeout)(name, token, float(self._clock()))

    # ------------------------------------------------------------------ local reads

    @property
    def log_time(self) -> float:
        """The manager's clock: the largest clock reading among the commands applied here."""
        return self._now

    def holder(self, name: str) -> int | None:
        """The token holding ``name`` at this member's log time, or None (local read: log time
        moves only with commands, so an expired lock may still show until the next one)."""
        entry = self._locks.get(name)
        return entry[0] if entry is not None and entry[1] > self._now else None

    def is_locked(self, name: str) -> bool:
        """Whether ``name`` is held at this member's log time (local read)."""
        return self.holder(name) is not None

    def expires_at(self, name: str) -> float | None:
        """The log time at which the lock on ``name`` expires, or None if it is free (local)."""
        entry = self._locks.get(name)
        return entry[1] if entry is not None and entry[1] > self._now else None

    # ------------------------------------------------------------------ commands

    def _advance(self, at: float) -> None:
        if at > self._now:
            self._now = at
        self._ops += 1
        if self._ops >= max(64, len(self._locks)):  # forget expired locks, amortised O(1)
            self._ops = 0
            now = self._now
            self._locks = {k: v for k, v in self._locks.items() if v[1] > now}

    @command(name="acquire")
    def _acquire(self, name: str, ttl: float, at: float) -> int | None:
        self._advance(at)
        entry = self._locks.get(name)
        if entry is not None and entry[1] > self._now:
            return None
        token = self._next_token
        self._next_token += 1
        self._locks[name] = (token, self._now + ttl)
        return token

    @command(name="renew")
    def _renew(self, name: str, token: int, ttl: float, at: float) -> bool:
        self._advance(at)
        entry = self._locks.get(name)
        if entry is None or entry[0] != token or entry[1] <= self._now:
            return False
        self._locks[name] = (token, self._now + ttl)
        return True

    @command(name="release")
    def _release(self, name: str, token: int, at: float) -> bool:
        self._advance(at)
        entry = self._locks.get(name)
        if entry is None or entry[0] != token:
            return False
        del self._locks[name]
        return entry[1] > self._now

    # ------------------------------------------------------------------ snapshots

    def snapshot_state(self) -> dict[str, Any]:
        """Log time, the next token and the locks."""
        return {"now": self._now, "next_token": self._next_token, "locks": self._locks, "ops": self._ops}

    def restore_state(self, state: Any) -> None:
        """Replace the whole state."""
        try:
            now, next_token, locks, ops = state["now"], state["next_token"], state["locks"], state["ops"]
            self._locks = {str(k): (int(v[0]), float(v[1])) for k, v in locks.items()}
        except (TypeError, KeyError, IndexError, AttributeError, ValueError) as exc:
            raise ProtocolError(f"{self.replicated_id}: a malformed lock manager snapshot") from exc
        self._now, self._next_token, self._ops = float(now), int(next_token), int(ops)
