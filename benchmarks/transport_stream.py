"""Throughput of one gRPC transport stream on loopback: messages and frames per second.

Two :class:`~phalanx_aio.transport.grpc.GrpcTransport` instances in one process and one event
loop (so the figures include the sender's *and* the receiver's CPU, on one core); one sends,
the other counts what its handler receives. Workloads:

* ``heartbeat``: small messages (HEARTBEAT, about 15 bytes on the wire);
* ``append``: APP messages with 64 entries of 64 B each.

each in two shapes:

* ``batched``: ``send()`` gets ``--batch`` messages at a time (what one Ready hands over), and
  the stream packs whatever is queued by the time it runs into as few frames as the limits
  allow;
* ``one by one``: one message per ``send()``, so frames are nearly as many as messages (the
  per-frame cost).

The producer yields to the loop after every ``send()``, as a node does between Ready rounds.

The producer keeps at most ``--window`` messages outstanding (sent and not yet received), as
Raft's flow control would, so memory stays bounded. Prints a table and writes
``benchmarks/results/transport_stream.json``. Not a test: no thresholds.
Usage: python benchmarks/transport_stream.py [--quick] [--loop asyncio|uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import pathlib
import platform
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

from phalanx_aio.core.types import Entry, Message, MessageType
from phalanx_aio.transport.grpc import GrpcTransport

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


class Counter:
    """Counts received messages; wakes the producer as they arrive."""

    def __init__(self) -> None:
        self.count = 0
        self.changed = asyncio.Event()

    def on_messages(self, sender: str, messages: Sequence[Message]) -> None:
        self.count += len(messages)
        self.changed.set()

    def on_unreachable(self, peer: str) -> None:
        raise RuntimeError(f"{peer} unreachable during the benchmark")

    def on_snapshot_status(self, peer: str, ok: bool) -> None:
        pass


def heartbeat(i: int) -> Message:
    return Message(MessageType.HEARTBEAT, "b", "a", 5, commit=i, seq=i)


ENTRY_DATA = bytes(range(64))


def append(i: int) -> Message:
    first = i * 64
    entries = tuple(Entry(5, first + k, data=ENTRY_DATA) for k in range(1, 65))
    return Message(MessageType.APP, "b", "a", 5, log_term=5, index=first, entries=entries, commit=first)


async def run_one(make: Callable[[int], Message], total: int, batch: int, window: int) -> dict[str, Any]:
    sink = Counter()
    a = GrpcTransport(node_id="a", cluster_id="bench", listen="127.0.0.1:0", max_queue=window * 2)
    b = GrpcTransport(node_id="b", cluster_id="bench", listen="127.0.0.1:0")
    await b.start(sink)
    await a.start(Counter())
    a.set_peers({"b": b.address})
    b.set_peers({"a": a.address})
    try:
        # Warm up: open the stream.
        a.send([make(0)])
        while sink.count < 1:
            sink.changed.clear()
            await sink.changed.wait()
        messages = [make(i) for i in range(1, min(total, 10_000) + 1)]  # reused, built up front
        base_frames = b.stats["frames_received"]
        base_bytes = b.stats["bytes_received"]
        start_count = sink.count
        sent = 0
        t0 = time.perf_counter()
        c0 = time.process_time()
        while sent < total:
            while sent - (sink.count - start_count) >= window:
                sink.changed.clear()
                await sink.changed.wait()
            n = min(batch, total - sent)
            chunk = [messages[(sent + k) % len(messages)] for k in range(n)]
            a.send(chunk)
            sent += n
            await asyncio.sleep(0)  # as a node does between two Ready rounds
        while sink.count - start_count < total:
            sink.changed.clear()
            await sink.changed.wait()
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - c0
        frames = b.stats["frames_received"] - base_frames
        nbytes = b.stats["bytes_received"] - base_bytes
        assert a.stats["dropped_queue_full"] == 0
    finally:
        await a.aclose()
        await b.aclose()
    return {
        "messages": total,
        "frames": frames,
        "seconds": round(elapsed, 3),
        "cpu_seconds": round(cpu, 3),
        "messages_per_s": round(total / elapsed),
        "frames_per_s": round(frames / elapsed),
        "messages_per_frame": round(total / frames, 1),
        "wire_mb_per_s": round(nbytes / elapsed / 1e6, 2),
    }


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    scale = 0.1 if args.quick else 1.0
    plan: list[tuple[str, str, Callable[[int], Message], int, int]] = [
        ("heartbeat", "batched", heartbeat, int(200_000 * scale), args.batch),
        ("heartbeat", "one by one", heartbeat, int(20_000 * scale), 1),
        ("append 64x64B", "batched", append, int(20_000 * scale), max(1, args.batch // 10)),
        ("append 64x64B", "one by one", append, int(5_000 * scale), 1),
    ]
    rows = []
    for workload, shape, make, total, batch in plan:
        best: dict[str, Any] | None = None
        for _ in range(args.repeat):
            r = await run_one(make, total, batch, args.window)
            if best is None or r["seconds"] < best["seconds"]:
                best = r
        assert best is not None
        row = {"workload": workload, "shape": shape, "batch": batch, **best}
        rows.append(row)
        print(
            f"{workload:14} {shape:11} batch {batch:4}: {row['messages_per_s']:>9,} msg/s "
            f"{row['frames_per_s']:>7,} frames/s ({row['messages_per_frame']:>6} msg/frame) "
            f"{row['wire_mb_per_s']:>7} MB/s"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the work")
    parser.add_argument("--batch", type=int, default=100, help="heartbeats per send() when batched")
    parser.add_argument("--window", type=int, default=4096, help="messages outstanding at most")
    parser.add_argument("--repeat", type=int, default=3, help="runs per workload (best is kept)")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    # Closing one side makes the other report it unreachable; that is expected here.
    logging.getLogger("phalanx_aio").setLevel(logging.ERROR)
    if args.loop == "uvloop":
        import uvloop

        rows = uvloop.run(main_async(args))
    else:
        rows = asyncio.run(main_async(args))
    RESULTS.mkdir(exist_ok=True)
    name = "transport_stream" if args.loop == "asyncio" else f"transport_stream_{args.loop}"
    out = RESULTS / f"{name}{'_quick' if args.quick else ''}.json"
    report = {
        "benchmark": "transport_stream",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "grpclib": metadata.version("grpclib"),
        "loop": args.loop,
        "quick": args.quick,
        "window": args.window,
        "note": "sender and receiver in one process and one event loop: one core does both",
        "results": rows,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
