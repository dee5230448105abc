"""Consensus rounds through three pure cores, with no I/O: the core's own cost.

Measures (CPU time, ``time.process_time``):
  1. sequential rounds: propose one command, replicate, commit, apply on all three, repeat;
  2. committed entries per second when proposals are batched (one Ready carries many);
  3. simulator events per second (a five-node run with faults and invariant checks).

Prints a table and writes ``benchmarks/results/core_rounds.json``. Not a test: no thresholds.
Usage: python benchmarks/core_rounds.py [--rounds N] [--batch N]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import random
import time

from phalanx_aio.core import Config, Raft
from phalanx_aio.sim import SimOptions, run


def make_cluster() -> dict[str, Raft]:
    ids = ["a", "b", "c"]
    nodes = {nid: Raft.bootstrap(nid, Config.lan(), random.Random(i), ids) for i, nid in enumerate(ids)}
    nodes["a"].campaign()
    pump(nodes)
    assert nodes["a"].is_leader
    return nodes


def pump(nodes: dict[str, Raft]) -> int:
    """Deliver until quiet (persisting is a no-op here); returns entries applied."""
    applied = 0
    moved = True
    while moved:
        moved = False
        for node in nodes.values():
            if node.has_ready():
                rd = node.ready()
                node.advance(rd)
                applied += len(rd.committed_entries)
                for m in rd.messages:
                    nodes[m.to].step(m)
                moved = True
    return applied


def sequential_rounds(rounds: int) -> float:
    nodes = make_cluster()
    leader = nodes["a"]
    start = time.process_time()
    for _ in range(rounds):
        leader.propose(b"x" * 64)
        pump(nodes)
    elapsed = time.process_time() - start
    assert leader.log.committed == leader.log.last_index()
    return elapsed


def batched(total: int, batch: int) -> float:
    nodes = make_cluster()
    leader = nodes["a"]
    payload = [b"x" * 64] * batch
    start = time.process_time()
    for _ in range(total // batch):
        leader.propose_many(payload)
        pump(nodes)
    return time.process_time() - start


def sim_events(steps: int) -> tuple[int, float]:
    start = time.process_time()
    res = run(SimOptions(seed=1, steps=steps))
    return res.events, time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--total", type=int, default=100_000)
    parser.add_argument("--sim-steps", type=int, default=50_000)
    args = parser.parse_args()
    seq = min(sequential_rounds(args.rounds) for _ in range(3))
    bat = min(batched(args.total, args.batch) for _ in range(3))
    events, sim_cpu = sim_events(args.sim_steps)
    results = {
        "python": platform.python_version(),
        "sequential_rounds": args.rounds,
        "sequential_cpu_ms": seq * 1000,
        "sequential_rounds_per_s": args.rounds / seq,
        "batched_entries": args.total,
        "batch": args.batch,
        "batched_entries_per_s": args.total / bat,
        "sim_events": events,
        "sim_events_per_s": events / sim_cpu,
    }
    rate = args.rounds / seq
    print(f"{args.rounds} sequential rounds (3 cores): {seq * 1000:.1f} ms CPU ({rate:,.0f} rounds/s)")
    print(f"batched x{args.batch}: {args.total / bat:,.0f} committed entries/s")
    print(f"simulator: {events / sim_cpu:,.0f} events/s (5 nodes, faults, invariant checks)")
    out = pathlib.Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "core_rounds.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
