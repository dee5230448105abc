"""Tuning of the Raft core, with the LAN and global-mesh presets.

Time in the core is counted in ticks. ``tick_interval`` (seconds per tick) is read only by
drivers, which call ``tick()`` that often; the core never looks at a clock.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from phalanx_aio.errors import ConfigError

__all__ = ["Config", "ReadMode"]

ReadMode = Literal["safe", "lease"]

PRESET_MAX_UNCOMMITTED_BYTES = 64 << 20
"""The presets' ``max_uncommitted_bytes``: a leader refuses proposals (``ProposalDropped``) while
this many bytes of its log wait to commit, so that large commands cannot grow its memory
without bound when followers fall behind."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Raft timing, flow control and feature switches. Validated on construction.

    Use :meth:`lan` or :meth:`global_mesh` and override fields with :meth:`replace`.
    """

    tick_interval: float = 0.05
    """Seconds per tick (drivers only)."""
    election_ticks: int = 10
    """Minimum election timeout; the actual one is drawn from ``[election_ticks, 2*election_ticks)``.
    In RTT-aware mode: the upper bound of the advised timeout ``T``, and ``T`` until advice."""
    heartbeat_ticks: int = 1
    """A leader sends heartbeats this often; must be well below ``election_ticks``."""
    pre_vote: bool = True
    """Run a pre-vote round (thesis §9.6) so a node that cannot win never raises the term."""
    check_quorum: bool = True
    """A leader steps down without a quorum's contact for an election timeout; followers that
    heard from a leader within ``election_ticks`` (``T`` in RTT-aware mode) refuse votes
    (leader stickiness)."""
    read_mode: ReadMode = "safe"
    """``"safe"``: ReadIndex with a heartbeat round. ``"lease"``: the leader answers from its lease
    (requires ``check_quorum``), which trusts bounded clock drift."""
    lease_margin_ticks: int = 2
    """Lease reads: the lease is ``election_ticks - lease_margin_ticks`` ticks (RTT-aware mode:
    ``rtt_min_election_ticks - lease_margin_ticks``) from the send time of the heartbeat round a
    quorum acknowledged, leaving room for clock drift."""
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
    eager_commit: bool = True
    """When the commit index moves, the leader tells its followers at once (an append message
    without entries to each, which each answers: etcd's behaviour). ``False``: they learn it
    from the next append or heartbeat, as the Raft paper allows (§5.3), which halves the
    messages per proposal when proposals come one at a time, at the price of followers applying
    up to one heartbeat interval later when the cluster goes quiet. The presets use ``False``."""
    rtt_aware: bool = False
    """RTT-aware election timeout (opt-in): the leader measures round trips to its followers
    in ticks, derives an election timeout ``T`` from the quorum's round trip and advertises it
    in heartbeats; every node then draws its election timeout from ``[T, 2*T)`` and uses ``T``
    for check quorum and stickiness. ``election_ticks`` is the upper bound, and the timeout of
    a node that has had no advice yet. See ``docs/global-mesh.md``."""
    rtt_min_election_ticks: int = 10
    """RTT-aware mode: the lower bound of ``T``. Followers clamp advice into
    ``[rtt_min_election_ticks, election_ticks]``; lease reads last
    ``rtt_min_election_ticks - lease_margin_ticks`` ticks."""
    rtt_factor: float = 3.0
    """RTT-aware mode: ``T = ceil(rtt_factor * quorum_rtt) + 2 * heartbeat_ticks``, clamped."""
    rtt_percentile: float = 90.0
    """RTT-aware mode: the percentile of each follower's RTT samples that counts as its RTT."""
    rtt_window: int = 32
    """RTT-aware mode: RTT samples kept per follower (one per answered heartbeat)."""
    rtt_succession: float = 0.0
    """RTT-aware mode, when > 0: the leader ranks its voting followers (caught-up logs first,
    then by their measured RTT to it) and advises each a delay: rank ``r`` waits ``1 + r * S``
    ticks beyond ``T``, ``S = ceil(rtt_succession * quorum_rtt) + heartbeat_ticks``, so that
    after a failure the best-placed follower stands first and the next one only once the
    first's election should have reached it. A follower with such advice draws its timeout
    from ``[T + delay, T + delay + heartbeat_ticks)`` instead of ``[T, 2T)``. 0: off."""

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
        if self.rtt_aware:
            need(
                self.heartbeat_ticks < self.rtt_min_election_ticks <= self.election_ticks,
                "rtt_min_election_ticks must be in (heartbeat_ticks, election_ticks] "
                f"(got {self.rtt_min_election_ticks}; heartbeat_ticks {self.heartbeat_ticks}, "
                f"election_ticks {self.election_ticks})",
            )
            need(
                self.lease_margin_ticks < self.rtt_min_election_ticks,
                f"lease_margin_ticks must be below rtt_min_election_ticks (got {self.lease_margin_ticks})",
            )
            need(
                math.isfinite(self.rtt_factor) and self.rtt_factor > 0,
                f"rtt_factor must be a finite number > 0 (got {self.rtt_factor})",
            )
            need(
                0 < self.rtt_percentile <= 100,
                f"rtt_percentile must be in (0, 100] (got {self.rtt_percentile})",
            )
            need(self.rtt_window >= 1, f"rtt_window must be >= 1 (got {self.rtt_window})")
            need(
                math.isfinite(self.rtt_succession) and self.rtt_succession >= 0,
                f"rtt_succession must be a finite number >= 0 (got {self.rtt_succession})",
            )

    @classmethod
    def lan(cls, **overrides: Any) -> Config:
        """Fast timing for one data centre: 50 ms ticks, election timeout 0.5-1 s,
        heartbeats every 50 ms, pre-vote and check quorum on, commit index sent lazily
        (``eager_commit=False``), at most 64 MiB uncommitted."""
        return cls(
            **{
                "tick_interval": 0.05,
                "election_ticks": 10,
                "heartbeat_ticks": 1,
                "eager_commit": False,
                "max_uncommitted_bytes": PRESET_MAX_UNCOMMITTED_BYTES,
                **overrides,
            }
        )

    @classmethod
    def naive(cls, **overrides: Any) -> Config:
        """The textbook timing, **not for production**: 10 ms ticks, election timeout 10-20
        ticks (100-200 ms), heartbeats every 5 ticks (50 ms), pre-vote and check quorum off.
        It is what the global-mesh study compares against: round trips of up to 265 ms do
        not fit in such a window, and the cluster flaps (``docs/global-mesh.md``). Commit
        index sent lazily and at most 64 MiB uncommitted, as in the other presets."""
        return cls(
            **{
                "tick_interval": 0.01,
                "election_ticks": 10,
                "heartbeat_ticks": 5,
                "pre_vote": False,
                "check_quorum": False,
                "eager_commit": False,
                "max_uncommitted_bytes": PRESET_MAX_UNCOMMITTED_BYTES,
                **overrides,
            }
        )

    @classmethod
    def global_mesh(cls, **overrides: Any) -> Config:
        """Timing for members on several continents (round trips above 200 ms):
        200 ms ticks, election timeout randomized over 20-40 ticks (4-8 s), heartbeats every
        400 ms, pre-vote, check quorum and leader stickiness on, commit index sent lazily, at
        most 64 MiB uncommitted."""
        return cls(
            **{
                "tick_interval": 0.2,
                "election_ticks": 20,
                "heartbeat_ticks": 2,
                "eager_commit": False,
                "max_uncommitted_bytes": PRESET_MAX_UNCOMMITTED_BYTES,
                **overrides,
            }
        )

    @classmethod
    def global_mesh_adaptive(cls, **overrides: Any) -> Config:
        """The RTT-aware variant of :meth:`global_mesh`: 50 ms ticks, heartbeats every 100 ms,
        and an election timeout ``T`` the leader derives from the measured quorum round trip
        (``3 x`` its 90th percentile plus two heartbeat intervals), clamped to 10-80 ticks
        (0.5-4 s). The leader also ranks its followers (``rtt_succession=2.0``): each stands
        after ``T`` plus the delay its rank gives it, so the best-placed one goes first and
        split votes become rare; a node without a delay draws from ``[T, 2T)``. Pre-vote, check
        quorum and leader stickiness on, commit index sent lazily, at most 64 MiB uncommitted.
        A node without advice uses 80 ticks (4 s)."""
        return cls(
            **{
                "tick_interval": 0.05,
                "election_ticks": 80,
                "heartbeat_ticks": 2,
                "rtt_aware": True,
                "rtt_min_election_ticks": 10,
                "rtt_succession": 2.0,
                "eager_commit": False,
                "max_uncommitted_bytes": PRESET_MAX_UNCOMMITTED_BYTES,
                **overrides,
            }
        )

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def election_seconds(self) -> tuple[float, float]:
        """The election timeout window in seconds, ``[low, high)``, of a node without RTT
        advice (in RTT-aware mode the window shrinks to ``[T, 2T)`` once advice arrives)."""
        return (self.election_ticks * self.tick_interval, 2 * self.election_ticks * self.tick_interval)
