"""Restart time and resident memory of a node that holds many log entries.

For each case a child process writes ``--entries`` commands (``--size`` bytes each) through a
single-member ``RaftNode`` (SQLite, ``synchronous=FULL``, in-memory transport, proposals with
``--inflight`` in flight) and reports its resident memory; then a fresh child process restarts
the node on the same database and reports:

* ``open``: ``SQLiteStorage.open`` alone (verification and loading);
* ``start``: ``RaftNode.start()`` as a whole (open, building the core, restoring the snapshot);
* ``caught up``: until the state machine has applied every committed entry again;
* resident memory (``VmRSS``) after ``start`` and once caught up, and the peak (``VmHWM``).

Cases:

* ``snapshot``: ``snapshot_every=10_000`` (the default), so a snapshot covers all but the last
  few thousand entries and compaction deleted the rows it covers;
* ``one-snapshot``: ``snapshot_every`` four fifths of ``--entries``: a node takes its next
  snapshot after ``snapshot_every`` plus a random quarter of it, so exactly one snapshot falls
  between 80 and 100 % of the entries; its compaction deletes that many rows at once and
  leaves the database file at its full size (free pages), and the rest is loaded at restart;
* ``none``: no snapshot is ever taken (``snapshot_every`` above ``--entries``), so the
  restart loads, verifies and re-applies every entry.

The page cache is warm (the file was just written): this is a process restart, not a cold
boot. Writes ``benchmarks/results/recovery.json``. Not a test.

Usage: python benchmarks/recovery.py [--entries 1000000] [--size 64] [--cases snapshot,one-snapshot,none]
                                     [--restarts 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results"
NODE = "n1"
CASES = ("snapshot", "one-snapshot", "none")


def _status_kb(field: str) -> int:
    """A ``kB`` field of /proc/self/status (0 where there is no /proc)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_mb() -> float:
    """Resident memory of this process now, in MB."""
    return _status_kb("VmRSS") / 1024


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    return _status_kb("VmHWM") / 1024


# ---------------------------------------------------------------------- child side


def _make_node(db: str, snapshot_every: int) -> tuple[Any, Any, Any]:
    from _cluster_node import Counter  # the benchmarks' counting state machine (8-byte snapshot)

    from phalanx_aio import Config, RaftNode, SQLiteStorage
    from phalanx_aio.transport.memory import MemoryNetwork

    class TimedStorage(SQLiteStorage):
        """SQLiteStorage that records how long ``open`` took."""

        open_s = 0.0
        open_cpu_s = 0.0

        async def open(self, *, node_id: str, cluster_id: str) -> Any:
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return await super().open(node_id=node_id, cluster_id=cluster_id)
            finally:
                self.open_s = time.perf_counter() - t0
                self.open_cpu_s = time.process_time() - c0  # every thread of the process

    sm = Counter()
    store = TimedStorage(db, synchronous="FULL")
    node = RaftNode(
        NODE,
        address="mem",
        peers={},
        state_machine=sm,
        storage=store,
        config=Config.lan(),
        transport=MemoryNetwork().transport(NODE),
        snapshot_every=snapshot_every,
        max_pending=1_000_000,
        default_timeout=120.0,
    )
    return node, sm, store


async def _write(args: argparse.Namespace) -> dict[str, Any]:
    node, sm, _ = _make_node(args.db, args.snapshot_every)
    cmd = b"x" * args.size
    t0 = time.perf_counter()
    async with node:
        await node.wait_for_leader(timeout=30)
        left = args.entries
        propose_many = getattr(node, "propose_many", None)

        async def worker() -> None:
            nonlocal left
            while left > 0:
                n = min(left, args.batch)
                left -= n
                if propose_many is not None:
                    await propose_many([cmd] * n)
                else:
                    for _ in range(n):
                        await node.propose(cmd)

        await asyncio.gather(*(worker() for _ in range(args.inflight)))
        wrote = time.perf_counter() - t0
        st = node.status()
        out = {
            "write_s": wrote,
            "applied": sm.value,
            "last_index": st.last_index,
            "first_index": st.first_index,
            "rss_mb": rss_mb(),
            "peak_rss_mb": peak_rss_mb(),
        }
    return out


async def _restart(args: argparse.Namespace) -> dict[str, Any]:
    base_rss = rss_mb()
    node, sm, store = _make_node(args.db, args.snapshot_every)
    t0, c0 = time.perf_counter(), time.process_time()
    await node.start()
    started, started_cpu = time.perf_counter() - t0, time.process_time() - c0
    rss_start = rss_mb()
    try:
        st = node.status()
        target = st.commit
        while node.status().applied < target:
            await asyncio.sleep(0.001)
        caught_up = time.perf_counter() - t0
        st = node.status()
        out = {
            "open_s": store.open_s,
            "open_cpu_s": store.open_cpu_s,
            "start_s": started,
            "start_cpu_s": started_cpu,
            "caught_up_s": caught_up,
            "snapshot_index": st.first_index - 1,
            "entries_loaded": st.last_index - st.first_index + 1,
            "applied": st.applied,
            "value": sm.value,
            "rss_before_mb": base_rss,
            "rss_after_start_mb": rss_start,
            "rss_caught_up_mb": rss_mb(),
            "peak_rss_mb": peak_rss_mb(),
        }
    finally:
        await node.aclose()
    return out


def child(args: argparse.Namespace) -> None:
    import phalanx_aio

    fn = _write if args.child == "write" else _restart
    result = phalanx_aio.run(fn(args))
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------------- parent side


def run_child(kind: str, db: pathlib.Path, snapshot_every: int, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", kind, "--db", str(db)]
    cmd += ["--snapshot-every", str(snapshot_every), "--entries", str(args.entries)]
    cmd += ["--size", str(args.size), "--inflight", str(args.inflight), "--batch", str(args.batch)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} child failed:\n{proc.stderr[-3000:]}")
    res: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return res


def db_size_mb(db: pathlib.Path) -> float:
    """Size of the database and its WAL, in MB."""
    total = 0
    for suffix in ("", "-wal"):
        p = pathlib.Path(str(db) + suffix)
        if p.exists():
            total += p.stat().st_size
    return total / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--size", type=int, default=64, help="command size in bytes")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated: {', '.join(CASES)}")
    ap.add_argument("--restarts", type=int, default=2, help="restarts per case (the page cache stays warm)")
    ap.add_argument("--inflight", type=int, default=20, help="concurrent proposers while writing")
    ap.add_argument("--batch", type=int, default=500, help="commands per proposer turn while writing")
    ap.add_argument("--json", default=str(RESULTS / "recovery.json"))
    ap.add_argument("--keep", metavar="DIR", help="keep the databases in DIR")
    ap.add_argument("--child", choices=("write", "restart"), help=argparse.SUPPRESS)
    ap.add_argument("--db", help=argparse.SUPPRESS)
    ap.add_argument("--snapshot-every", type=int, default=10_000, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if args.entries < 1 or args.size < 1:
        raise SystemExit("--entries and --size must be positive")
    cases = args.cases.split(",")
    for c in cases:
        if c not in CASES:
            raise SystemExit(f"unknown case {c!r} ({', '.join(CASES)})")
    workdir = pathlib.Path(args.keep or tempfile.mkdtemp(prefix="phalanx-recovery-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    try:
        for case in cases:
            one = args.entries * 4 // 5
            every = {"snapshot": 10_000, "one-snapshot": one, "none": args.entries + 1_000}[case]
            db = workdir / f"{case}.db"
            for suffix in ("", "-wal", "-shm"):
                pathlib.Path(str(db) + suffix).unlink(missing_ok=True)
            w = run_child("write", db, every, args)
            size = db_size_mb(db)
            print(
                f"{case:<12} wrote {w['applied']:,} entries in {w['write_s']:.1f} s "
                f"({w['applied'] / w['write_s']:,.0f}/s); RSS {w['rss_mb']:.0f} MB "
                f"(peak {w['peak_rss_mb']:.0f}); db {size:.0f} MB",
                flush=True,
            )
            restarts = []
            for i in range(args.restarts):
                r = run_child("restart", db, every, args)
                restarts.append(r)
                print(
                    f"{case:<12} restart {i + 1}: open {r['open_s']:.2f} s (CPU {r['open_cpu_s']:.2f} s), "
                    f"start {r['start_s']:.2f} s, "
                    f"caught up {r['caught_up_s']:.2f} s ({r['entries_loaded']:,} entries after "
                    f"snapshot {r['snapshot_index']:,}); RSS {r['rss_after_start_mb']:.0f} MB after "
                    f"start, {r['rss_caught_up_mb']:.0f} MB caught up (peak {r['peak_rss_mb']:.0f})",
                    flush=True,
                )
            results.append(
                {"case": case, "snapshot_every": every, "db_mb": size, "write": w, "restarts": restarts}
            )
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    out = pathlib.Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "settings": {"entries": args.entries, "size": args.size, "storage": "SQLite synchronous=FULL"},
        "results": results,
    }
    out.write_text(json.dumps(doc, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
