"""How long after a leader's SIGKILL do a follower's forwarded proposals end?

Runs :func:`phalanx_aio.chaos.forwarding.forward_failover` ``--rounds`` times (two
``phalanx-aio serve`` processes and an embedded follower proposing without pause, LAN preset,
SQLite, gRPC on loopback; the leader killed after ``--before`` seconds) and reports, over the
proposals in flight at each kill, the time from the kill to their outcome (median, p99, max),
with the counts of successes, definite refusals, timeouts and broken promises (applied twice,
applied although refused, another's result). Prints a table and writes
benchmarks/results/forward_failover.json. Not a test.

Usage: python benchmarks/forward_failover.py [--rounds 5] [--rate 500] [--before 1] [--after 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import statistics
import tempfile

from _results import percentile

from phalanx_aio.chaos.forwarding import FailoverReport, forward_failover

HERE = pathlib.Path(__file__).resolve().parent


def _pct(values: list[float], p: float) -> float:
    return percentile(sorted(values), p)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rate", type=float, default=500.0, help="proposals per second")
    ap.add_argument("--before", type=float, default=1.0)
    ap.add_argument("--after", type=float, default=3.0)
    args = ap.parse_args()
    reports: list[FailoverReport] = []
    print(
        f"{'round':>5} {'in flight':>9} {'ok':>6} {'refused':>7} {'timeout':>7} {'problems':>8} "
        f"{'p50 s':>6} {'p99 s':>6} {'max s':>6}"
    )
    for i in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="phalanx-fwd-") as tmp:
            r = await forward_failover(
                pathlib.Path(tmp), rate=args.rate, before_s=args.before, after_s=args.after
            )
        reports.append(r)
        t = r.ended_after_kill_s
        print(
            f"{i + 1:>5} {r.in_flight_at_kill:>9} {r.succeeded:>6} {r.not_applied:>7} {r.timeouts:>7} "
            f"{len(r.problems):>8} {_pct(t, 0.5):>6.2f} {_pct(t, 0.99):>6.2f} {r.worst_s:>6.2f}"
        )
    every = [s for r in reports for s in r.ended_after_kill_s]
    summary = {
        "rounds": args.rounds,
        "rate_per_s": args.rate,
        "preset": "lan (election timeout 0.5-1 s)",
        "in_flight_at_kill": sum(r.in_flight_at_kill for r in reports),
        "ended_after_kill_s": {
            "p50": _pct(every, 0.5),
            "p99": _pct(every, 0.99),
            "max": max(every, default=0.0),
        },
        "worst_per_round_s": [r.worst_s for r in reports],
        "median_worst_s": statistics.median(r.worst_s for r in reports),
        "timeouts": sum(r.timeouts for r in reports),
        "not_applied": sum(r.not_applied for r in reports),
        "unknown": sum(r.unknown for r in reports),
        "problems": [p for r in reports for p in r.problems],
    }
    print(json.dumps(summary, indent=2))
    out = HERE / "results" / "forward_failover.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
