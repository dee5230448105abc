"""Tuning of the Raft core, with the LAN and global-mesh presets.

Time in the core is counted in ticks. ``tick_interval`` (seconds per tick) is read only by
drivers, which call ``tick()`` that often; the core never looks at a clock.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from phalanx_aio.errors import ConfigError

__all__ = ["Config", "ReadMode"]

ReadMode = Literal["safe", "lease"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Raft timing, flow control and feature switches. Validated on construction.

    Use :meth:`lan` or :meth:`global_mesh` and override fields with :meth:`replace`.
    """

    tick_interval: float = 0.05
    """Seconds per tick (drivers only)."""
    election_ticks: int = 10
    """Minimum election timeout; the actual one is drawn from ``[election_ticks, 2*election_ticks)``."""
    heartbeat_ticks: int = 1
    """A leader sends heartbeats this often; must be well below ``election_ticks``."""
    pre_vote: bool = True
    """Run a pre-vote round (thesis §9.6) so a node that cannot win never raises the term."""
    check_quorum: bool = True
    """A leader steps down without a quorum's contact for an election timeout; followers that
    heard from a leader within ``election_ticks`` refuse votes (leader stickiness)."""
    read_mode: ReadMode = "safe"
    """``"safe"``: ReadIndex with a heartbeat round. ``"lease"``: the leader answers from its lease
    (requires ``check_quorum``), which trusts bounded clock drift."""
    lease_margin_ticks: int = 2
    """Lease reads: the lease is ``election_ticks - lease_margin_ticks`` ticks from the send time
    of the heartbeat round a quorum acknowledged, leaving room for clock drift."""
    max_msg_entries: int = 1024
    """At most this many entries in one append message."""
    max_msg_bytes: int = 1 << 20
    """At most this many bytes of entries in one append (one entry is always allowed)."""
    max_inflight_msgs: int = 256
    """Unacknowledged appends per follower in the replicate state."""
    max_inflight_bytes: int = 32 << 20
    """Unacknowledged entry bytes per follower in the replicate state."""
    max_uncommitted_bytes: int = 0
    """Refuse a proposal that would take the uncommitted entry bytes above this (0: no limit);
    a proposal is always accepted when nothing is uncommitted, however large."""
    forward_proposals: bool = True
    """Followers forward proposals and read-index requests to the leader."""

    def __post_init__(self) -> None:
        def need(cond: bool, what: str) -> None:
            if not cond:
                raise ConfigError(f"invalid Config: {what}")

        need(self.tick_interval > 0, f"tick_interval must be > 0 (got {self.tick_interval})")
        need(self.heartbeat_ticks >= 1, f"heartbeat_ticks must be >= 1 (got {self.heartbeat_ticks})")
        need(
            self.election_ticks > self.heartbeat_ticks,
            f"election_ticks ({self.election_ticks}) must exceed heartbeat_ticks ({self.heartbeat_ticks})",
        )
        need(
            self.read_mode in ("safe", "lease"),
            f"read_mode must be 'safe' or 'lease' (got {self.read_mode!r})",
        )
        need(
            self.read_mode != "lease" or self.check_quorum,
            "read_mode='lease' requires check_quorum=True (the lease rests on leader stickiness)",
        )
        need(
            0 <= self.lease_margin_ticks < self.election_ticks,
            f"lease_margin_ticks must be in [0, election_ticks) (got {self.lease_margin_ticks})",
        )
        need(self.max_msg_entries >= 1, "max_msg_entries must be >= 1")
        need(self.max_msg_bytes >= 1, "max_msg_bytes must be >= 1")
        need(self.max_inflight_msgs >= 1, "max_inflight_msgs must be >= 1")
        need(self.max_inflight_bytes >= 1, "max_inflight_bytes must be >= 1")
        need(self.max_uncommitted_bytes >= 0, "max_uncommitted_bytes must be >= 0")

    @classmethod
    def lan(cls, **overrides: Any) -> Config:
        """Fast timing for one data centre: 50 ms ticks, election timeout 0.5-1 s,
        heartbeats every 50 ms, pre-vote and check quorum on."""
        return cls(**{"tick_interval": 0.05, "election_ticks": 10, "heartbeat_ticks": 1, **overrides})

    @classmethod
    def global_mesh(cls, **overrides: Any) -> Config:
        """Timing for members on several continents (round trips above 200 ms):
        200 ms ticks, election timeout randomized over 20-40 ticks (4-8 s), heartbeats every
        400 ms, pre-vote, check quorum and leader stickiness on."""
        return cls(**{"tick_interval": 0.2, "election_ticks": 20, "heartbeat_ticks": 2, **overrides})

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def election_seconds(self) -> tuple[float, float]:
        """The election timeout window in seconds, ``[low, high)``."""
        return (self.election_ticks * self.tick_interval, 2 * self.election_ticks * self.tick_interval)
