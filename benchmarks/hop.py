"""What one message hop between two processes costs: grpclib against a bare asyncio socket.

Every put on the client path crosses two processes twice (client to leader, leader to follower
and back), each time through grpclib's HTTP/2. This measures that hop on its own, with nothing
of phalanx_aio in it: a server process echoes what it receives, a client process sends a
message, waits for the echo, and optionally sleeps (``--gaps``) before the next one, as a
quiet cluster does between puts (a process that sleeps wakes up with cold caches). Two kinds
of echo, alternating within each round (a fresh server per round and kind):

* ``raw``: an ``asyncio.Protocol`` that writes back what it reads (TCP on loopback, no framing);
* ``grpclib``: one bidirectional gRPC stream (grpclib, the message as ``WireBytes``, as the
  peer transport and the KV stream send theirs), the server writing back each message.

Both sides run on uvloop when it is installed (``--no-uvloop``: the standard loop), with
``--size``-byte messages. For each kind and gap it reports the round trip's p50 and p99, the
server's CPU per echo (receive one message and send one, from /proc, all threads), and the
client's CPU per round trip (which includes its sleep's timer). Prints a table and writes
``benchmarks/results/hop.json``. Not a test.

Usage: python benchmarks/hop.py [--gaps 0,2,10] [--count 3000] [--repeat 3] [--size 100]
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any, cast

import grpclib.const
import grpclib.server
from grpclib.client import Channel

from phalanx_aio._grpc import WireBytes
from phalanx_aio.node.runner import run, uvloop_available

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _results import RESULTS, ResultFile, percentile

KINDS = ("raw", "grpclib")
_PATH = "/bench.Echo/Stream"


class _RawEcho(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.WriteTransport", transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class _GrpcEcho:
    def __mapping__(self) -> Mapping[str, grpclib.const.Handler]:
        return {
            _PATH: grpclib.const.Handler(
                self.stream, grpclib.const.Cardinality.STREAM_STREAM, WireBytes, WireBytes
            )
        }

    async def stream(self, stream: Any) -> None:
        async for message in stream:
            await stream.send_message(message)


async def serve(kind: str) -> None:
    """Echo on a free loopback port (printed on stdout) until killed."""
    if kind == "raw":
        server = await asyncio.get_running_loop().create_server(_RawEcho, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
    else:
        grpc = grpclib.server.Server([_GrpcEcho()])
        await grpc.start("127.0.0.1", 0)
        port = grpc._server.sockets[0].getsockname()[1] if grpc._server else 0
    print(port, flush=True)
    await asyncio.Event().wait()


def _cpu(pid: int) -> float:
    """CPU seconds of process ``pid`` so far, every thread (the scheduler's nanosecond count:
    /proc's user and system ticks are 10 ms coarse)."""
    tasks = pathlib.Path(f"/proc/{pid}/task")
    return sum(int((t / "schedstat").read_text().split()[0]) for t in tasks.iterdir()) / 1e9


async def _measure(
    send_recv: Any, server_pid: int, gaps: list[float], count: int, window: float
) -> list[dict[str, Any]]:
    """Warm up, then for each gap: round trips with that sleep between them."""
    for _ in range(200):
        await send_recv()
    out = []
    for gap in gaps:
        n = count if gap == 0 else max(50, min(count, int(window / gap)))
        lat = []
        srv0, me0 = _cpu(server_pid), time.process_time()
        for _ in range(n):
            t0 = time.perf_counter()
            await send_recv()
            lat.append(time.perf_counter() - t0)
            if gap:
                await asyncio.sleep(gap)
        srv, me = _cpu(server_pid) - srv0, time.process_time() - me0
        lat.sort()
        out.append(
            {
                "gap_ms": gap * 1000,
                "count": n,
                "rtt_p50_us": percentile(lat, 0.50) * 1e6,
                "rtt_p99_us": percentile(lat, 0.99) * 1e6,
                "server_cpu_us_per_echo": srv / n * 1e6,
                "client_cpu_us_per_round_trip": me / n * 1e6,
            }
        )
    return out


async def client(kind: str, port: int, server_pid: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    payload = b"x" * args.size
    if kind == "raw":
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

        async def raw_send_recv() -> None:
            writer.write(payload)
            await reader.readexactly(len(payload))

        try:
            return await _measure(raw_send_recv, server_pid, args.gap_list, args.count, args.window)
        finally:
            writer.close()
    channel = Channel("127.0.0.1", port)
    message = WireBytes(payload)
    try:
        async with channel.request(
            _PATH, grpclib.const.Cardinality.STREAM_STREAM, WireBytes, WireBytes
        ) as stream:
            await stream.send_request()

            async def grpc_send_recv() -> None:
                await stream.send_message(message)
                await stream.recv_message()

            rows = await _measure(grpc_send_recv, server_pid, args.gap_list, args.count, args.window)
            await stream.end()
            return rows
    finally:
        channel.close()


def one(kind: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One kind, one fresh server process."""
    cmd = [sys.executable, __file__, "--serve", kind] + (["--no-uvloop"] if args.no_uvloop else [])
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        return run(client(kind, port, server.pid, args), use_uvloop=args.uvloop)
    finally:
        server.kill()
        server.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gaps", default="0,2,10", help="sleeps between round trips, ms (comma-separated)")
    ap.add_argument("--count", type=int, default=3000, help="round trips per gap (at most)")
    ap.add_argument("--window", type=float, default=3.0, help="seconds a gap's round trips may take")
    ap.add_argument("--repeat", type=int, default=3, help="rounds; the kinds alternate within each")
    ap.add_argument("--size", type=int, default=100, help="message bytes")
    ap.add_argument("--no-uvloop", action="store_true", help="the standard event loop on both sides")
    ap.add_argument("--out", default=str(RESULTS / "hop.json"))
    ap.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.uvloop = not args.no_uvloop and uvloop_available()
    if args.serve:
        run(serve(args.serve), use_uvloop=args.uvloop)
        return 0
    try:
        args.gap_list = [float(g) / 1000 for g in args.gaps.split(",")]
    except ValueError:
        ap.error(f"--gaps takes comma-separated milliseconds, got {args.gaps!r}")
    if any(g < 0 for g in args.gap_list) or args.count < 1 or args.repeat < 1 or args.size < 1:
        ap.error("--gaps must be >= 0; --count, --repeat and --size at least 1")
    settings = {k: v for k, v in vars(args).items() if k not in ("serve", "gap_list")}
    result = ResultFile("hop", settings)
    rounds: list[dict[str, Any]] = []
    print(
        f"{'round':>5} {'kind':>8} {'gap ms':>7} {'rtt p50 us':>11} {'rtt p99 us':>11} "
        f"{'server us/echo':>15} {'client us/rt':>13}"
    )
    for r in range(args.repeat):
        kinds = KINDS if r % 2 == 0 else KINDS[::-1]
        for kind in kinds:
            for row in one(kind, args):
                row.update(round=r, kind=kind)
                rounds.append(row)
                print(
                    f"{r:>5} {kind:>8} {row['gap_ms']:>7.0f} {row['rtt_p50_us']:>11.0f} "
                    f"{row['rtt_p99_us']:>11.0f} {row['server_cpu_us_per_echo']:>15.0f} "
                    f"{row['client_cpu_us_per_round_trip']:>13.0f}"
                )
    summary: dict[str, Any] = {"loop": "uvloop" if args.uvloop else "asyncio", "gaps": {}}
    keys = ("rtt_p50_us", "rtt_p99_us", "server_cpu_us_per_echo", "client_cpu_us_per_round_trip")
    for gap in sorted({row["gap_ms"] for row in rounds}):
        entry: dict[str, Any] = {}
        for kind in KINDS:
            rows = [row for row in rounds if row["kind"] == kind and row["gap_ms"] == gap]
            entry[kind] = {k: statistics.median(row[k] for row in rows) for k in keys}
        entry["ratio_rtt_p50"] = entry["grpclib"]["rtt_p50_us"] / entry["raw"]["rtt_p50_us"]
        summary["gaps"][f"{gap:g}"] = entry
    print("\nmedians of the rounds:")
    for gap, entry in summary["gaps"].items():
        raw, grpc = entry["raw"], entry["grpclib"]
        print(
            f"  gap {gap} ms: rtt p50 raw {raw['rtt_p50_us']:.0f} us, grpclib {grpc['rtt_p50_us']:.0f} us "
            f"(x{entry['ratio_rtt_p50']:.1f}); server CPU per echo raw "
            f"{raw['server_cpu_us_per_echo']:.0f} us, grpclib {grpc['server_cpu_us_per_echo']:.0f} us"
        )
    out = result.write(args.out, rounds, summary)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
