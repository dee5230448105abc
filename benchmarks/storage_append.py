"""Append throughput of SQLiteStorage against plain stdlib sqlite3 doing the same work.

For each batch size, one "commit" is one durable transaction holding ``batch`` 64-byte entries:
``SQLiteStorage.save(entries=...)`` on one side, and on the other the same statements run
directly with :mod:`sqlite3` on the calling thread (same schema, same pragmas: WAL journal and
the same ``synchronous`` mode, the same rows of packed entries with their CRC-32,
``BEGIN IMMEDIATE`` / ``executemany`` / ``COMMIT``). Both run in the same process on the same
disk, in alternating blocks of commits (so drifts in fsync latency hit both alike); the ratio
is storage / plain throughput
(1.0 = no overhead from asyncio and the aiosqlite thread hop).

Usage::

    python benchmarks/storage_append.py                 # both event loops, FULL
    python benchmarks/storage_append.py --quick         # fewer commits, one round
    python benchmarks/storage_append.py --loop asyncio --synchronous NORMAL

Prints a table and writes ``benchmarks/results/storage_append.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import pathlib
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from phalanx_aio.core.types import Entry
from phalanx_aio.storage import SQLiteStorage
from phalanx_aio.storage._codec import batch_rows
from phalanx_aio.storage.schema import INSERT_BATCH, SCHEMA, pragmas
from phalanx_aio.storage.sqlite import ROW_ENTRIES

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
BATCHES = (1, 10, 100, 1000)
PAYLOAD = bytes(range(64))
T = TypeVar("T")


def commits_for(batch: int, scale: float) -> int:
    """How many commits one round makes for a batch size (about 1 s per round here)."""
    base = {1: 4000, 10: 2500, 100: 400, 1000: 50}[batch]
    return max(10, int(base * scale))


def make_batches(batch: int, commits: int, first: int) -> list[list[Entry]]:
    """``commits`` lists of ``batch`` consecutive 64-byte entries starting at index ``first``."""
    out = []
    index = first
    for _ in range(commits):
        out.append([Entry(1, i, data=PAYLOAD) for i in range(index, index + batch)])
        index += batch
    return out


class Plain:
    """The baseline: the store's statements run directly with sqlite3 on the calling thread."""

    def __init__(self, path: str, synchronous: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        for pragma in pragmas(synchronous):
            self.conn.execute(pragma)
        self.conn.execute("BEGIN IMMEDIATE")
        for stmt in SCHEMA:
            self.conn.execute(stmt)
        self.conn.execute("COMMIT")

    def save(self, entries: list[Entry]) -> None:
        """One durable transaction inserting ``entries`` (packed in rows, with their checksums)."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(INSERT_BATCH, batch_rows(entries, ROW_ENTRIES))
        conn.execute("COMMIT")


async def compare(
    workdir: str, synchronous: str, batch: int, commits: int, blocks: int
) -> tuple[float, float]:
    """Seconds spent by plain sqlite3 and by SQLiteStorage on ``commits`` commits of ``batch``
    entries each, interleaved in ``blocks`` alternating blocks (so both see the same disk)."""
    plain = Plain(os.path.join(workdir, "plain.db"), synchronous)
    store = SQLiteStorage(
        os.path.join(workdir, "store.db"), synchronous="FULL" if synchronous == "FULL" else "NORMAL"
    )
    await store.open(node_id="bench", cluster_id="bench")
    per_block = max(1, commits // blocks)
    all_batches = make_batches(batch, 5 + per_block * blocks, 1)
    for entries in all_batches[:5]:  # warm up both
        plain.save(entries)
        await store.save(entries=entries)
    t_plain = t_store = 0.0
    for b in range(blocks):
        chunk = all_batches[5 + b * per_block : 5 + (b + 1) * per_block]
        for side in ("plain", "store") if b % 2 == 0 else ("store", "plain"):
            t0 = time.perf_counter()
            if side == "plain":
                for entries in chunk:
                    plain.save(entries)
                t_plain += time.perf_counter() - t0
            else:
                for entries in chunk:
                    await store.save(entries=entries)
                t_store += time.perf_counter() - t0
    plain.conn.close()
    await store.aclose()
    return t_plain, t_store


async def hop_cost(path: str) -> float:
    """Median cost in microseconds of one no-op call through the store's aiosqlite thread."""
    store = SQLiteStorage(path)
    await store.open(node_id="bench", cluster_id="bench")
    samples = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(1000):
            await store._call(lambda: None)
        samples.append((time.perf_counter() - t0) / 1000 * 1e6)
    await store.aclose()
    return statistics.median(samples)


def run_loop(loop_name: str, coro: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``coro`` on a fresh event loop of the named kind."""
    if loop_name == "uvloop":
        import uvloop

        return uvloop.run(coro())
    return asyncio.run(coro())


def measure(
    loop_name: str, synchronous: str, blocks: int, scale: float, workdir: str
) -> list[dict[str, Any]]:
    """One row per batch size."""
    rows = []
    for batch in BATCHES:
        commits = commits_for(batch, scale)
        tp, ts = run_loop(loop_name, functools.partial(compare, workdir, synchronous, batch, commits, blocks))
        for f in os.listdir(workdir):
            os.remove(os.path.join(workdir, f))
        commits = max(1, commits // blocks) * blocks
        rows.append(
            {
                "loop": loop_name,
                "synchronous": synchronous,
                "batch": batch,
                "commits": commits,
                "plain_commits_per_s": commits / tp,
                "plain_entries_per_s": commits * batch / tp,
                "storage_commits_per_s": commits / ts,
                "storage_entries_per_s": commits * batch / ts,
                "ratio": tp / ts,
            }
        )
    return rows


def main() -> None:
    """Parse arguments, run, print and save."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loop", choices=("asyncio", "uvloop", "both"), default="both")
    ap.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL")
    ap.add_argument("--blocks", type=int, default=10, help="alternating plain/store blocks per batch size")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the number of commits per round")
    ap.add_argument("--quick", action="store_true", help="scale 0.25, 4 blocks")
    ap.add_argument("--dir", default=None, help="where the databases go (default: a temp dir in results/)")
    args = ap.parse_args()
    if args.quick:
        args.blocks, args.scale = 4, 0.25
    loops = ["asyncio", "uvloop"] if args.loop == "both" else [args.loop]
    if "uvloop" in loops:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            loops.remove("uvloop")
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.dir or RESULTS, prefix="storage-bench-") as workdir:
        hop = {name: run_loop(name, lambda: hop_cost(os.path.join(workdir, "hop.db"))) for name in loops}
        for f in os.listdir(workdir):
            os.remove(os.path.join(workdir, f))
        rows = []
        for name in loops:
            rows += measure(name, args.synchronous, args.blocks, args.scale, workdir)
    print(
        f"SQLiteStorage vs plain sqlite3: synchronous={args.synchronous}, WAL, 64-byte entries, "
        f"{args.blocks} interleaved blocks; SQLite {sqlite3.sqlite_version}, "
        f"Python {platform.python_version()}"
    )
    for name in loops:
        print(f"one aiosqlite thread hop ({name}): {hop[name]:.1f} us")
    print(
        f"{'loop':8} {'batch':>5} {'plain commits/s':>16} {'store commits/s':>16} "
        f"{'plain entries/s':>16} {'store entries/s':>16} {'ratio':>6}"
    )
    for r in rows:
        print(
            f"{r['loop']:8} {r['batch']:>5} {r['plain_commits_per_s']:>16,.0f} "
            f"{r['storage_commits_per_s']:>16,.0f} {r['plain_entries_per_s']:>16,.0f} "
            f"{r['storage_entries_per_s']:>16,.0f} {r['ratio']:>6.2f}"
        )
    out = {
        "benchmark": "storage_append",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "synchronous": args.synchronous,
        "blocks": args.blocks,
        "hop_us": hop,
        "rows": rows,
    }
    path = RESULTS / "storage_append.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
