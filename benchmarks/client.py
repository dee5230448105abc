"""The client path: KVClient callers in this process against a three-node cluster of
``phalanx-aio serve`` processes (gRPC on loopback, SQLite with synchronous=FULL).

The parent process starts three ``phalanx-aio serve`` members in a temporary directory, waits
for a leader, then runs each workload from this process (a separate process from every
member, on uvloop unless ``--no-uvloop``): N concurrent callers sharing one
:class:`~phalanx_aio.kv.KVClient`, each doing ``await kv.put(key, value)`` (64-byte values by
default) in a loop. A workload runs
``--warmup`` seconds unmeasured, then ``--seconds`` measured, and reports completed ops/s,
p50/p99/p99.9 latency, errors, and the CPU seconds of this process and of every member
(from /proc). ``--transport`` picks the client path: ``stream`` (the default: the batched
``Stream`` call) and/or ``unary`` (one gRPC call per operation), for a side-by-side figure.

Prints a table and writes benchmarks/results/client.json. Not a test.

Usage: python benchmarks/client.py [--callers 1,64] [--seconds 5] [--warmup 1] [--size 64]
                                   [--op put|get] [--transport stream,unary] [--no-uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from phalanx_aio.cli.demo import LocalCluster
from phalanx_aio.errors import PhalanxError
from phalanx_aio.kv import KVClient
from phalanx_aio.node.runner import run, uvloop_available

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _results
from _results import latency_figures, machine, now_iso

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results" / "client.json"
_TICKS = os.sysconf("SC_CLK_TCK")


class Cluster(LocalCluster):
    """Three ``phalanx-aio serve`` processes on loopback (the demo's), with their CPU time."""

    def __init__(self, workdir: pathlib.Path, n: int = 3) -> None:
        super().__init__(n, workdir)

    def cpu(self) -> dict[str, float]:
        """CPU seconds (user + system) of each member so far."""
        return cpu_seconds(self.procs)

    def dead(self) -> list[str]:
        """The members that have exited (a crash, or a port taken by another process)."""
        return [nid for nid, proc in self.procs.items() if proc.poll() is not None]


def cpu_seconds(procs: Mapping[str, subprocess.Popen[bytes]]) -> dict[str, float]:
    """CPU seconds (user + system, from /proc) of each process so far; NaN if unreadable."""
    out = {}
    for nid, proc in procs.items():
        try:
            fields = pathlib.Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[nid] = (int(fields[11]) + int(fields[12])) / _TICKS
        except (OSError, IndexError, ValueError):
            out[nid] = float("nan")
    return out


def git_commit() -> dict[str, Any]:
    """``{"commit": sha or None, "commit_dirty": bool}`` of the tree this script is in (dirty:
    tracked files differ from that commit), in the keys of this script's result files."""
    sha, clean = _results.git_commit()
    return {"commit": sha, "commit_dirty": None if sha is None else not clean}


async def wait_for_leader(endpoints: list[str], timeout: float = 30.0) -> str:
    """The leader's id once the cluster answers a write."""
    deadline = time.monotonic() + timeout
    async with KVClient(endpoints, timeout=5.0) as kv:
        while True:
            try:
                await kv.put(b"bench-warmup", b"x")
                st = await kv.status()
                return st.leader_id
            except PhalanxError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)


async def drive(
    callers: int,
    call: Callable[[int, int], Awaitable[object]],
    failures: tuple[type[BaseException], ...],
    warmup: float,
    seconds: float,
    *,
    start: float | None = None,
    raw: bool = False,
) -> dict[str, Any]:
    """``callers`` tasks, each awaiting ``call(caller, i)`` for i = 0, 1, ... until the window
    closes: ``warmup`` seconds unmeasured, then ``seconds`` measured. Counts the calls that
    complete inside the window (latency only of those that also started in it) and, by type,
    the exceptions in ``failures``.

    ``start`` (a ``time.perf_counter()`` instant, the same clock in every process on Linux)
    makes the callers wait for it, so that several load processes share one window; the
    result then says how late this process was (``late_s``). ``raw`` adds the sorted
    latencies (``lat_ms``) for merging with another process's."""
    clock = time.perf_counter
    lat: list[float] = []
    errors: dict[str, int] = {}
    ops = 0
    late = 0.0
    if start is not None:
        late = max(0.0, clock() - start)
        await asyncio.sleep(max(0.0, start - clock()))
    t_start = clock() if start is None else start
    t_from, t_to = t_start + warmup, t_start + warmup + seconds

    async def caller(c: int) -> None:
        nonlocal ops
        i = 0
        while True:
            t0 = clock()
            if t0 >= t_to:
                return
            try:
                await call(c, i)
            except failures as exc:
                name = type(exc).__name__
                errors[name] = errors.get(name, 0) + 1
                continue
            finally:
                i += 1
            t1 = clock()
            if t_from <= t1 <= t_to:
                ops += 1
                if t0 >= t_from:
                    lat.append((t1 - t0) * 1000.0)

    await asyncio.gather(*(caller(c) for c in range(callers)))
    lat.sort()
    return {
        "ops": ops,
        "ops_per_s": round(ops / seconds, 1),
        **latency_figures(lat),
        "errors": errors,
        **({"late_s": round(late, 4)} if start is not None else {}),
        **({"lat_ms": lat} if raw else {}),
    }


async def run_workload(
    endpoints: list[str], transport: str, callers: int, op: str, size: int, warmup: float, seconds: float
) -> dict[str, Any]:
    """``callers`` tasks sharing one client, each running ``op`` in a loop."""
    value = b"v" * size
    async with KVClient(endpoints, timeout=10.0, stream=transport == "stream") as kv:
        await kv.put(b"bench-warmup", b"x")  # find the leader before the clock starts

        async def call(c: int, i: int) -> object:
            key = b"c%d-%d" % (c, i % 1000)
            return await (kv.put(key, value) if op == "put" else kv.get(key))

        return await drive(callers, call, (PhalanxError,), warmup, seconds)


def _spy(args: argparse.Namespace, leader_pid: int, name: str) -> list[subprocess.Popen[bytes]]:
    """py-spy recorders (collapsed stacks) of the leader and of this process for one workload."""
    out = pathlib.Path(args.py_spy)
    out.mkdir(parents=True, exist_ok=True)
    spies = []
    for who, pid in (("leader", leader_pid), ("client", os.getpid())):
        cmd = ["py-spy", "record", "--pid", str(pid), "--format", "raw", "--rate", "200", "--nonblocking"]
        seconds = str(int(args.warmup + args.seconds))
        cmd += ["--duration", seconds, "--output", str(out / f"{name}-{who}.txt")]
        spies.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return spies


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print a table and write benchmarks/results/client.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", default="1,64", help="comma-separated caller counts")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--size", type=int, default=64, help="value size in bytes")
    parser.add_argument("--op", choices=["put", "get"], default="put")
    parser.add_argument("--transport", default="stream", help="comma-separated: stream, unary")
    parser.add_argument(
        "--no-uvloop", action="store_true", help="run this (client) process on the standard event loop"
    )
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--py-spy", metavar="DIR", help="sample the leader and this process with py-spy")
    args = parser.parse_args(argv)
    callers = [int(x) for x in args.callers.split(",")]
    transports = args.transport.split(",")
    if any(t not in ("stream", "unary") for t in transports):
        parser.error("--transport takes stream and/or unary")
    use_uvloop = not args.no_uvloop and uvloop_available()
    created = now_iso()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="phalanx-client-bench-") as tmp:
        cluster = Cluster(pathlib.Path(tmp))
        cluster.start_all()
        try:
            endpoints = list(cluster.addr.values())
            leader = run(wait_for_leader(endpoints), use_uvloop=use_uvloop)
            if cluster.dead():
                for nid in cluster.dead():
                    log = (cluster.workdir / f"{nid}.log").read_text()[-2000:]
                    print(f"member {nid} exited at start; the end of its log:\n{log}", file=sys.stderr)
                return 1
            load = os.getloadavg()
            print(f"leader {leader}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
            head = f"{'transport':>9} {'callers':>7} {'ops/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9}"
            print(head + "  cpu s")
            for transport in transports:
                for n in callers:
                    spies = _spy(args, cluster.procs[leader].pid, f"{transport}-{n}") if args.py_spy else []
                    cpu_before = cluster.cpu()
                    me_before = resource.getrusage(resource.RUSAGE_SELF)
                    r = run(
                        run_workload(endpoints, transport, n, args.op, args.size, args.warmup, args.seconds),
                        use_uvloop=use_uvloop,
                    )
                    me_after = resource.getrusage(resource.RUSAGE_SELF)
                    for spy in spies:
                        spy.wait()
                    cpu_after = cluster.cpu()
                    r["cpu_s"] = {nid: round(cpu_after[nid] - cpu_before[nid], 2) for nid in cpu_after}
                    r["cpu_s"]["client"] = round(
                        me_after.ru_utime - me_before.ru_utime + me_after.ru_stime - me_before.ru_stime, 2
                    )
                    r.update(transport=transport, callers=n, op=args.op, size=args.size)
                    if cluster.dead():
                        r["dead_members"] = cluster.dead()
                        for nid in cluster.dead():
                            log = (cluster.workdir / f"{nid}.log").read_text()[-2000:]
                            print(f"member {nid} exited; the end of its log:\n{log}", file=sys.stderr)
                    results.append(r)
                    cpu = " ".join(f"{k}={v}" for k, v in r["cpu_s"].items())
                    print(
                        f"{transport:>9} {n:>7} {r['ops_per_s']:>9.0f} {r['p50']:>8.2f} {r['p99']:>8.2f} "
                        f"{r['p999']:>9.2f}  {cpu}" + (f"  errors {r['errors']}" if r["errors"] else "")
                    )
        finally:
            cluster.stop_all()
    summary: dict[str, Any] = {}
    for r in results:
        summary.setdefault(r["transport"], {})[str(r["callers"])] = {
            "ops": r["ops_per_s"],
            "p50_ms": r["p50"],
            "p99_ms": r["p99"],
            "p999_ms": r["p999"],
        }
    report = {
        "benchmark": "client",
        "created": created,
        **git_commit(),
        "machine": machine(load),
        "settings": {
            "callers": callers,
            "transport": transports,
            "op": args.op,
            "size": args.size,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "storage": "SQLite synchronous=FULL",
            "cluster": "three `phalanx-aio serve` processes, gRPC on loopback, preset lan",
            "client": "one KVClient in a separate process, shared by the callers"
            + (" (uvloop)" if use_uvloop else " (standard event loop)"),
            "cpu_s": "CPU seconds of each member and of this process over warm-up and measured window",
        },
        "rounds": results,
        "summary": summary,
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
