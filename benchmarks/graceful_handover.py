"""How long do writes pause when the leader stops: SIGTERM (it hands leadership over first)
against SIGKILL (the others wait out an election timeout)?

Three ``phalanx-aio serve`` processes on loopback (LAN preset: election timeout 0.5-1 s); one
``KVClient`` writes without pause; after ``--before`` seconds the leader's process gets the
signal. Reported per round and signal: the longest gap between two consecutive successful
writes around the stop, with the write count. Alternates the two signals, ``--rounds`` each.
Prints a table and writes benchmarks/results/graceful_handover.json. Not a test.

Usage: python benchmarks/graceful_handover.py [--rounds 3] [--before 2] [--after 3]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import pathlib
import signal
import statistics
import tempfile
import time

from phalanx_aio.cli.demo import LocalCluster
from phalanx_aio.errors import PhalanxError
from phalanx_aio.kv.client import KVClient

HERE = pathlib.Path(__file__).resolve().parent


async def one_round(sig: signal.Signals, before: float, after: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="phalanx-handover-") as tmp:
        cluster = LocalCluster(3, pathlib.Path(tmp))
        cluster.start_all()
        try:
            async with KVClient(list(cluster.addr.values()), timeout=20.0) as kv:
                await kv.put(b"warm", b"up")
                leader = (await kv.status()).leader_id
                done: list[float] = []
                stop_at = time.monotonic() + before

                async def writer() -> None:
                    i = 0
                    end = stop_at + after
                    while time.monotonic() < end:
                        try:
                            await kv.put(b"k%d" % i, b"v")
                        except PhalanxError:
                            continue
                        done.append(time.monotonic())
                        i += 1

                task = asyncio.create_task(writer())
                await asyncio.sleep(before)
                t_signal = time.monotonic()
                cluster.procs[leader].send_signal(sig)
                await task
        finally:
            cluster.stop_all()
    around = [t for t in done if t >= t_signal - 0.5]
    gaps = [b - a for a, b in itertools.pairwise(around)]
    return {"max_gap_s": max(gaps, default=float("nan")), "writes": float(len(done))}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--before", type=float, default=2.0)
    ap.add_argument("--after", type=float, default=3.0)
    args = ap.parse_args()
    results: dict[str, list[dict[str, float]]] = {"SIGTERM": [], "SIGKILL": []}
    print(f"{'round':>5} {'signal':>8} {'longest pause s':>16} {'writes':>7}")
    for i in range(args.rounds):
        for sig in (signal.SIGTERM, signal.SIGKILL):
            r = await one_round(sig, args.before, args.after)
            results[sig.name].append(r)
            print(f"{i + 1:>5} {sig.name:>8} {r['max_gap_s']:>16.3f} {int(r['writes']):>7}")
    summary = {
        name: {
            "median_longest_pause_s": statistics.median(r["max_gap_s"] for r in rs),
            "longest_pause_per_round_s": [r["max_gap_s"] for r in rs],
        }
        for name, rs in results.items()
    }
    summary["conditions"] = {"preset": "lan (election timeout 0.5-1 s)", "rounds": args.rounds}  # type: ignore[assignment]
    print(json.dumps(summary, indent=2))
    out = HERE / "results" / "graceful_handover.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
