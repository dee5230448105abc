"""Large state: do taking and sending a snapshot of 1 million keys stall heartbeats?

Three members as separate processes (benchmarks/_large_state_node.py) on gRPC loopback,
SQLite (synchronous=FULL), the LAN preset (election timeout 0.5-1 s, heartbeats every 50 ms),
each with a ``KVStateMachine``. Once with ``snapshot_later`` as it is (the dictionaries copied on
the loop, encoded in a worker thread: "on"), once with a subclass whose ``snapshot_later``
returns None, so the node encodes the snapshot with ``snapshot()`` on its loop ("off").

For each: one follower is stopped; the leader proposes ``--keys`` PUTs (``propose_many`` of
encoded KV commands in the leader's process); ``snapshot_bytes`` is set so that no snapshot is
taken while loading; then each live member is armed (its next snapshot due 32 KiB of commands
later) and one PUT of 64 KiB makes every live member take a snapshot of the full state at the
same moment, with the cluster otherwise idle. Then the stopped follower is started again:
the leader's log no longer holds what it misses, so the leader sends it the snapshot, which it
restores. Three windows are measured on every live member: idle (2 s, the baseline), take
(from the PUT that triggers the snapshot until all have stored it, plus 1.5 s) and send
(from the restart until the follower has restored and caught up, plus 1.5 s):

- elections started, term changes and leader changes (all must be 0);
- the largest gap between two message batches a follower received from the leader (the
  leader sends heartbeats every 50 ms, so about 50 ms is normal); the bar is a third of the
  shortest election timeout, 167 ms;
- the largest event-loop stall of each member (a 10 ms sleep's overshoot).

Prints a table and writes benchmarks/results/large_state.json.

    python benchmarks/large_state.py                 # 1,000,000 keys, on and off
    python benchmarks/large_state.py --keys 200000 --modes on
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shutil
import sys
import tempfile
import time
from typing import Any

from phalanx_aio._net import free_loopback_ports
from phalanx_aio.kv import KVCommand, KVOp, encode_command

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import cluster  # noqa: E402  (benchmarks/cluster.py, reused rather than duplicated)

BAR_MS = 500 / 3  # a third of the LAN preset's shortest election timeout


class Member(cluster.Member):
    """One ``_large_state_node.py`` child (cluster.Member's pipe), running the phalanx_aio next
    to this benchmark; it answers ``ready`` once started. A restarted member appends to its log."""

    stop_seconds = 30.0  # closing a node that holds a large state takes a while

    def __init__(self, nid: str, addr: dict[str, str], workdir: pathlib.Path, extra: list[str]) -> None:
        super().__init__(
            nid, addr, workdir, str(HERE.parent), extra, script="_large_state_node.py", log_mode="a"
        )
        ready = self.recv()
        assert ready.get("ready") == nid, ready


def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _summary(
    phase: str, mode: str, leader: str, stats: list[dict[str, Any]], restarted: str = ""
) -> dict[str, Any]:
    """One window. Elections: elections started anywhere, plus term changes and leader changes
    away from a known leader on members that ran throughout (a restarted member learning the
    term and the leader is not one)."""
    followers = [s for s in stats if s["id"] != leader]
    lead = next(s for s in stats if s["id"] == leader)
    gaps = {s["id"]: s["max_gap_ms"].get(leader, float("nan")) for s in followers}
    return {
        "mode": mode,
        "phase": phase,
        "leader": leader,
        "elections": sum(s["elections"] for s in stats),
        "term_changes": sum(s["term_changes"] for s in stats if s["id"] != restarted),
        "leader_changes": sum(prev is not None for s in stats for _, prev, _ in s["leader_changes"]),
        "max_gap_ms": max(gaps.values()),
        "gap_ms_by_follower": gaps,
        "leader_stall_ms": lead["max_stall_ms"],
        "follower_stall_ms": {s["id"]: s["max_stall_ms"] for s in followers},
        "snapshots": {s["id"]: s["snapshots"] for s in stats},
        "members": stats,
    }


def run_mode(mode: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="phalanx-large-"))
    ids = ["n1", "n2", "n3"]
    addr = {nid: f"127.0.0.1:{p}" for nid, p in zip(ids, free_loopback_ports(3), strict=True)}
    # No snapshot while loading (four times the bytes of the commands): after the load, each live
    # member is armed so that one more PUT of 64 KiB triggers it everywhere at once.
    snapshot_bytes = 4 * args.keys * len(encode_command(KVCommand(KVOp.PUT, b"k%08d" % 0, b"v" * args.value)))
    extra = ["--snapshot-later", mode, "--snapshot-bytes", str(snapshot_bytes), "--log-level", args.log_level]
    members = {nid: Member(nid, addr, workdir, extra) for nid in ids}
    results: list[dict[str, Any]] = []
    try:
        lid = members["n1"].ask(cmd="leader")["leader"]
        leader = members[lid]
        f1, f2 = (members[n] for n in ids if n != lid)
        print(f"[{mode}] leader {lid}; stopping {f2.id}; loading {args.keys:,} keys", flush=True)
        f2.stop()
        secs = leader.ask(cmd="load", first=0, n=args.keys, batch=args.batch, value=args.value)["seconds"]
        print(f"[{mode}] loaded in {secs:.1f} s ({args.keys / secs:,.0f} keys/s)", flush=True)
        live = [leader, f1]
        target = leader.ask(cmd="stats")["applied"]
        _wait(lambda: f1.ask(cmd="stats")["applied"] >= target, 120, "the follower to catch up")
        time.sleep(1.0)

        for m in live:
            m.ask(cmd="reset")
        time.sleep(2.0)
        results.append(_summary("idle", mode, lid, [m.ask(cmd="stats") for m in live]))

        for m in live:
            m.ask(cmd="reset")
        for m in live:
            m.ask(cmd="arm", margin=32 << 10)
            if args.profile:
                m.ask(cmd="profile_start")
        time.sleep(0.3)
        leader.ask(cmd="put", key="trigger", value_size=64 << 10)

        def stored() -> bool:
            stats = [m.ask(cmd="stats") for m in live]
            if args.log_level == "DEBUG":
                print([(s["id"], s["first_index"], s["applied"], s["snapshots"]) for s in stats], flush=True)
            return all(s["first_index"] > 2 and s["snapshots"] for s in stats)

        _wait(stored, 120, "the snapshots")
        if args.profile:
            for m in live:
                m.ask(cmd="profile_stop", path=f"{args.profile}-{mode}-{m.id}.prof")
        time.sleep(1.5)
        results.append(_summary("take", mode, lid, [m.ask(cmd="stats") for m in live]))

        # The leader may have changed (it does with snapshot_later off).
        lid = leader.ask(cmd="leader")["leader"]
        leader, f1 = members[lid], next(m for m in live if m.id != lid)
        for m in live:
            m.ask(cmd="reset")
        time.sleep(0.3)
        again = list(extra)
        if args.profile:
            again += ["--profile-all", f"{args.profile}-{mode}-{f2.id}-send.prof"]
        f2 = members[f2.id] = Member(f2.id, addr, workdir, again)
        target = leader.ask(cmd="stats")["applied"]
        _wait(lambda: f2.ask(cmd="stats")["applied"] >= target, 120, "the restarted follower to catch up")
        time.sleep(1.5)
        stats = [m.ask(cmd="stats") for m in [leader, f1, f2]]
        results.append(_summary("send", mode, lid, stats, restarted=f2.id))
        keys = f2.ask(cmd="stats")["keys"]
        results[-1]["restored_keys"] = keys
    finally:
        for m in members.values():
            m.stop()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return results


def table(results: list[dict[str, Any]]) -> str:
    """One row per window. "gap": the largest gap between message batches from the leader at
    the followers that ran throughout; the restarted follower's own gap and stall (it stalls
    itself restoring) are shown apart."""
    head = (
        f"{'snapshot_later':<15}{'window':<8}{'elections':>10}{'max gap (ms)':>14}"
        f"{'leader stall':>14}{'follower stall':>16}{'restoring: gap / stall':>24}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        restored = {i for i, snaps in r["snapshots"].items() if any(x["kind"] == "restored" for x in snaps)}
        gaps = [g for i, g in r["gap_ms_by_follower"].items() if i not in restored]
        stalls = [v for i, v in r["follower_stall_ms"].items() if i not in restored]
        rest = "-"
        if restored:
            (i,) = restored
            rest = f"{r['gap_ms_by_follower'][i]:.0f} / {r['follower_stall_ms'][i]:.0f}"
        events = r["elections"] + r["term_changes"] + r["leader_changes"]
        lines.append(
            f"{r['mode']:<15}{r['phase']:<8}{events:>10}{max(gaps):>14.0f}{r['leader_stall_ms']:>14.0f}"
            f"{max(stalls):>16.0f}{rest:>24}"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keys", type=int, default=1_000_000)
    p.add_argument("--value", type=int, default=8, help="value size in bytes")
    p.add_argument("--batch", type=int, default=5_000, help="commands per propose_many while loading")
    p.add_argument("--modes", default="on,off")
    p.add_argument("--log-level", default="WARNING")
    p.add_argument(
        "--profile",
        metavar="PREFIX",
        help="cProfile the take window into PREFIX-*.prof, and the restarted member's life",
    )
    p.add_argument("--keep", action="store_true", help="keep the data directory")
    p.add_argument("--out", default=str(HERE / "results" / "large_state.json"))
    p.add_argument("--show", metavar="JSON", help="only print the table of a results file")
    args = p.parse_args()
    if args.show:
        print(table(json.loads(pathlib.Path(args.show).read_text())["results"]))
        return
    results: list[dict[str, Any]] = []
    for mode in args.modes.split(","):
        results += run_mode(mode, args)
    print()
    print(table(results))
    print(f"\nbar: no elections, gaps below {BAR_MS:.0f} ms (a third of the 500 ms election timeout)")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "keys": args.keys,
                "value_bytes": args.value,
                "preset": "lan",
                "storage": "SQLite synchronous=FULL",
                "transport": "gRPC loopback",
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "results": results,
            },
            indent=1,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
