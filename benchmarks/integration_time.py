"""End-to-end integration time of a real three-node cluster (gRPC on loopback, SQLite).

From "start three nodes" to "a leader is elected and one command is committed and applied on
every node", compared with the Phalanx claim of under 500 ms for the same job. The election
timeout dominates, so it is measured with the LAN preset and with a faster tick.

Prints a table and writes benchmarks/results/integration_time.json. Not a test.
Usage: python benchmarks/integration_time.py [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import statistics
import tempfile
import time

from _cluster_node import Counter  # the benchmarks' counting state machine (script's folder)

import phalanx_aio
from phalanx_aio import Config, RaftNode, SQLiteStorage
from phalanx_aio._net import free_loopback_ports


async def one_run(config: Config) -> dict[str, float]:
    ids = ["n1", "n2", "n3"]
    addr = {nid: f"127.0.0.1:{p}" for nid, p in zip(ids, free_loopback_ports(3), strict=True)}
    with tempfile.TemporaryDirectory() as tmp:
        sms = {nid: Counter() for nid in ids}
        nodes = [
            RaftNode(
                nid,
                address=addr[nid],
                peers={p: a for p, a in addr.items() if p != nid},
                state_machine=sms[nid],
                storage=SQLiteStorage(pathlib.Path(tmp) / f"{nid}.db"),
                config=config,
            )
            for nid in ids
        ]
        t0 = time.perf_counter()
        await asyncio.gather(*(n.start() for n in nodes))
        started = time.perf_counter()
        leader_id = await nodes[0].wait_for_leader(30)
        elected = time.perf_counter()
        leader = next(n for n in nodes if n.id == leader_id)
        await leader.propose(b"x", timeout=30)
        while not all(sm.value == 1 for sm in sms.values()):
            await asyncio.sleep(0.001)
        converged = time.perf_counter()
        for n in nodes:
            await n.aclose()
    return {
        "start_ms": (started - t0) * 1000,
        "elected_ms": (elected - t0) * 1000,
        "converged_ms": (converged - t0) * 1000,
    }


async def main_async(runs: int) -> dict[str, object]:
    presets = {
        "lan (50 ms tick, election 0.5-1 s)": Config.lan(),
        "fast (10 ms tick, election 0.1-0.2 s)": Config.lan(tick_interval=0.01),
    }
    out: dict[str, object] = {"phalanx_claim_ms": 500, "runs": runs}
    for name, cfg in presets.items():
        rows = [await one_run(cfg) for _ in range(runs)]
        conv = [r["converged_ms"] for r in rows]
        out[name] = {
            "converged_ms_median": statistics.median(conv),
            "converged_ms_max": max(conv),
            "elected_ms_median": statistics.median(r["elected_ms"] for r in rows),
            "start_ms_median": statistics.median(r["start_ms"] for r in rows),
        }
        print(
            f"{name}: start {out[name]['start_ms_median']:.0f} ms, elected "  # type: ignore[index]
            f"{out[name]['elected_ms_median']:.0f} ms, converged median "  # type: ignore[index]
            f"{statistics.median(conv):.0f} ms (max {max(conv):.0f}); ratio to the 500 ms claim "
            f"{statistics.median(conv) / 500:.2f}"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    results = phalanx_aio.run(main_async(args.runs))
    res_dir = pathlib.Path(__file__).parent / "results"
    res_dir.mkdir(exist_ok=True)
    (res_dir / "integration_time.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
