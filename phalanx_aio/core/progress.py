"""What a leader knows about each follower's log, and the flow control of appends to it."""

from __future__ import annotations

import bisect
import enum
import math
from collections import deque

__all__ = ["Progress", "ProgressState"]


class ProgressState(enum.Enum):
    """How the leader is currently sending to a follower."""

    PROBE = 0
    """Unknown match: send one append at a time until one is accepted."""
    REPLICATE = 1
    """Match known: stream appends optimistically, bounded by the in-flight window."""
    SNAPSHOT = 2
    """The follower needs a snapshot; appends pause until it is installed."""


class Progress:
    """A follower's replication state as the leader sees it.

    Invariants: ``match < next_index``; in REPLICATE the in-flight deque holds, in increasing
    order, the last index of every unacknowledged append with its byte size.
    """

    __slots__ = (
        "inflight",
        "inflight_bytes",
        "match",
        "next_index",
        "pending_snapshot",
        "probe_sent",
        "recent_active",
        "rtt_samples",
        "rtt_seq",
        "rtt_sorted",
        "snapshot_sent_tick",
        "state",
    )

    def __init__(self, next_index: int) -> None:
        self.match = 0
        self.next_index = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.recent_active = False
        self.pending_snapshot = 0
        self.snapshot_sent_tick = 0
        self.inflight: deque[tuple[int, int]] = deque()
        self.inflight_bytes = 0
        self.rtt_samples: deque[int] = deque()
        """RTT-aware mode: the latest round trips in ticks, oldest first."""
        self.rtt_sorted: list[int] = []
        """The same samples, sorted (for percentiles)."""
        self.rtt_seq = 0
        """The heartbeat round of the latest sample (older or repeated answers are ignored)."""

    def __repr__(self) -> str:
        return f"Progress({self.state.name}, match={self.match}, next={self.next_index})"

    def become_probe(self) -> None:
        """Back to probing, from the match (or from just after an installed snapshot)."""
        if self.state is ProgressState.SNAPSHOT:
            self.next_index = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next_index = self.match + 1
        self._reset(ProgressState.PROBE)

    def become_replicate(self) -> None:
        """Stream from just after the match."""
        self.next_index = self.match + 1
        self._reset(ProgressState.REPLICATE)

    def become_snapshot(self, index: int, tick: int) -> None:
        """A snapshot at ``index`` is on its way."""
        self._reset(ProgressState.SNAPSHOT)
        self.pending_snapshot = index
        self.snapshot_sent_tick = tick

    def _reset(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflight.clear()
        self.inflight_bytes = 0

    def is_paused(self, max_msgs: int, max_bytes: int) -> bool:
        """True if no append may be sent now."""
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return len(self.inflight) >= max_msgs or self.inflight_bytes >= max_bytes
        return True

    def sent(self, last_index: int, nbytes: int) -> None:
        """An append ending at ``last_index`` (or an empty probe) was sent."""
        if self.state is ProgressState.REPLICATE:
            if last_index >= self.next_index:
                self.next_index = last_index + 1
                self.inflight.append((last_index, nbytes))
                self.inflight_bytes += nbytes
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True

    def maybe_update(self, index: int) -> bool:
        """The follower holds everything up to ``index``; False if that is old news."""
        updated = False
        if index > self.match:
            self.match = index
            updated = True
            self.probe_sent = False
        if index + 1 > self.next_index:
            self.next_index = index + 1
        inflight = self.inflight
        while inflight and inflight[0][0] <= index:
            self.inflight_bytes -= inflight.popleft()[1]
        return updated

    def maybe_decrease(self, rejected: int, hint: int) -> bool:
        """The follower rejected an append after ``rejected``; ``hint`` is where logs may
        agree. False if the rejection is stale."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next_index = self.match + 1
            return True
        if self.next_index - 1 != rejected:
            return False
        self.next_index = max(min(rejected, hint + 1), self.match + 1, 1)
        self.probe_sent = False
        return True

    def free_one(self) -> None:
        """Free the oldest in-flight slot (a heartbeat answer proves the link works)."""
        if self.inflight:
            self.inflight_bytes -= self.inflight.popleft()[1]

    def add_rtt(self, ticks: int, window: int) -> None:
        """Record one round trip of ``ticks``, keeping the latest ``window`` samples."""
        self.rtt_samples.append(ticks)
        bisect.insort(self.rtt_sorted, ticks)
        while len(self.rtt_samples) > window:
            self.rtt_sorted.remove(self.rtt_samples.popleft())

    def rtt_percentile(self, pct: float, min_samples: int = 1) -> int | None:
        """The nearest-rank ``pct`` percentile of the kept round trips, in ticks; ``None``
        with fewer than ``min_samples`` samples."""
        s = self.rtt_sorted
        if not s or len(s) < min_samples:
            return None
        return s[max(0, math.ceil(pct / 100 * len(s)) - 1)]
