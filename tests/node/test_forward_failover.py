"""A follower's forwarded proposals when the leader's process is SIGKILLed (real processes,
gRPC on loopback, SQLite): each ends in success or a definite error, once, with its own result.

How fast they end is measured by ``benchmarks/forward_failover.py`` (docs/performance.md),
not asserted here.
"""

from __future__ import annotations

import pathlib

from phalanx_aio.chaos.forwarding import forward_failover


async def test_forwarded_proposals_end_definitely_and_apply_once_when_the_leader_dies(
    tmp_path: pathlib.Path,
) -> None:
    report = await forward_failover(tmp_path, rate=300.0, before_s=1.0, after_s=2.0, timeout_s=10.0)
    assert report.in_flight_at_kill > 0 and report.succeeded > 0
    assert report.problems == []
    assert report.timeouts == 0, report
