"""The client path under an open loop: puts issued on a fixed schedule (``--rates`` per
second), latency counted from each put's scheduled instant, so a server that falls behind
shows it in the latency instead of slowing the load down (no coordinated omission).

Two series, each against a fresh three-member cluster on loopback and driven from this
process: ``etcd (gRPC client)``, Debian's etcd 3.4 with its write-ahead log fsynced, unary
``KV/Put`` calls over ``--connections`` grpcio connections to the leader (put i on
connection i mod N), as in ``benchmarks/vs_etcd.py``; and ``phalanx_aio KVClient (durable)``,
three ``phalanx-aio serve`` processes with SQLite ``synchronous=FULL`` and ``--kvclients``
KVClients (default one, the batched stream; put i on client i mod N).

For each rate: ``--warmup`` seconds of schedule unmeasured, then ``--seconds`` measured; the
figures are the puts completed inside the measured window per second (``ops``) and the
latency percentiles of the puts scheduled inside it (from the schedule to the answer). Puts
still unanswered ``--drain`` seconds after the window count as missing. A series stops after
the first rate it falls far behind (completed under ``--behind`` of the rate, or puts
missing): higher rates only pile up more waiting puts. At most ``--max-inflight`` puts are on
the wire at once (default 1,024); a put over that waits for a place, and the wait counts in
its latency (without the bound, an overloaded Python client spends itself on starting calls
and answers almost none).

Prints each point and writes ``benchmarks/results/open_loop_client.json`` (``summary``:
``{"series": {label: [{"rate", "ops", "p50_ms", "p99_ms", ...}]}}``). Not a test.

Usage: python benchmarks/open_loop_client.py [--rates 500,1000,2000,5000,10000,20000,40000]
           [--seconds 3] [--warmup 1] [--connections 8] [--kvclients 1] [--systems etcd,phalanx]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import resource
import shutil
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _results import percentile
from client import Cluster, git_commit, machine, now_iso, wait_for_leader
from vs_etcd import (
    _FAILURES,
    EtcdCluster,
    EtcdPuts,
    PhalanxPuts,
    find_etcd_leader,
)

from phalanx_aio.errors import PhalanxError
from phalanx_aio.node.runner import run, uvloop_available

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results" / "open_loop_client.json"
ETCD = "etcd (gRPC client)"
PHALANX = "phalanx_aio KVClient (durable)"
_BURST = 64


async def open_loop(
    target: EtcdPuts | PhalanxPuts,
    rate: float,
    size: int,
    warmup: float,
    seconds: float,
    drain: float,
    max_inflight: int = 1024,
) -> dict[str, Any]:
    """Issue puts at ``rate`` per second for ``warmup + seconds``, each as its own task at its
    scheduled instant (several at once when the loop wakes late), at most ``max_inflight``
    on the wire (the others wait their turn, which counts in their latency); measure as the
    module says."""
    clock = time.perf_counter
    value = b"v" * size
    total = int(rate * (warmup + seconds))
    t0 = clock() + 0.01
    t_from, t_to = t0 + warmup, t0 + warmup + seconds
    lat: list[float] = []
    done_in_window = 0
    errors: dict[str, int] = {}
    scheduled_in_window = 0
    pending: set[asyncio.Task[None]] = set()
    failures = (*_FAILURES, PhalanxError)

    gate = asyncio.Semaphore(max_inflight)

    async def one(i: int, due: float) -> None:
        nonlocal done_in_window
        try:
            async with gate:
                await target.put(i, b"o%d" % (i % 10000), value)
        except failures as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            return
        t = clock()
        if t_from <= t <= t_to:
            done_in_window += 1
        if t_from <= due < t_to:
            lat.append((t - due) * 1000.0)

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    i = 0
    while i < total:
        now = clock()
        # At most _BURST puts per wake-up: when the loop is late, the answers waiting in it get
        # their turn between bursts (the lateness still counts, from each put's schedule).
        due_n = min(total, int((now - t0) * rate) + 1, i + _BURST)
        while i < due_n:
            due = t0 + i / rate
            if t_from <= due < t_to:
                scheduled_in_window += 1
            task = asyncio.create_task(one(i, due))
            pending.add(task)
            task.add_done_callback(pending.discard)
            i += 1
        if i < total:
            await asyncio.sleep(max(0.0, t0 + i / rate - clock()))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(
            asyncio.gather(*pending, return_exceptions=True), timeout=drain + max(0.0, t_to - clock())
        )
    missing = len(pending)
    for task in list(pending):
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    lat.sort()
    cpu = cpu1.ru_utime - cpu0.ru_utime + cpu1.ru_stime - cpu0.ru_stime
    return {
        "rate": rate,
        "ops": round(done_in_window / seconds, 1),
        "p50_ms": round(percentile(lat, 0.50), 3),
        "p99_ms": round(percentile(lat, 0.99), 3),
        "p999_ms": round(percentile(lat, 0.999), 3),
        "scheduled": scheduled_in_window,
        "answered": len(lat),
        "missing": missing,
        "errors": errors,
        "loadgen_cpu_s_per_s": round(cpu / (warmup + seconds), 3),
    }


async def series(
    target: EtcdPuts | PhalanxPuts, args: argparse.Namespace, label: str
) -> list[dict[str, Any]]:
    await target.open()
    points = []
    try:
        for rate in args.rates:
            p = await open_loop(
                target, rate, args.size, args.warmup, args.seconds, args.drain, args.max_inflight
            )
            points.append(p)
            print(
                f"  {label:<32} {rate:>7,} /s  done {p['ops']:>9,.0f} /s  p50 {p['p50_ms']:>9.2f}"
                f"  p99 {p['p99_ms']:>9.2f} ms  missing {p['missing']}"
                f"  loadgen {p['loadgen_cpu_s_per_s']:.2f} cpu/s",
                flush=True,
            )
            if p["ops"] < args.behind * rate or p["missing"] or p["errors"]:
                print(f"  {label}: far behind at {rate:,}/s; the series stops here")
                break
            await asyncio.sleep(0.5)  # let the last puts' effects settle before the next rate
    finally:
        await target.close()
    return points


def run_etcd(args: argparse.Namespace, use_uvloop: bool) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="phalanx-open-loop-") as tmp:
        etcd = EtcdCluster(args.etcd, pathlib.Path(tmp))
        etcd.start_all()
        try:
            leader = run(find_etcd_leader(etcd), use_uvloop=use_uvloop)
            print(f"etcd 3 members, leader {leader}")
            target = EtcdPuts([etcd.client[leader]] * args.connections, args.etcd_client)
            return run(series(target, args, ETCD), use_uvloop=use_uvloop)
        finally:
            etcd.stop_all()


def run_phalanx(args: argparse.Namespace, use_uvloop: bool) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="phalanx-open-loop-") as tmp:
        cluster = Cluster(pathlib.Path(tmp))
        cluster.start_all()
        try:
            endpoints = list(cluster.addr.values())
            leader = run(wait_for_leader(endpoints), use_uvloop=use_uvloop)
            print(f"phalanx_aio 3 members, leader {leader}")
            target = PhalanxPuts(endpoints, args.kvclients)
            return run(series(target, args, PHALANX), use_uvloop=use_uvloop)
        finally:
            cluster.stop_all()


def main(argv: list[str] | None = None) -> int:
    """Run the sweep; print each point and write the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="500,1000,2000,5000,10000,20000,40000")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--drain", type=float, default=2.0, help="seconds to wait for the last answers")
    parser.add_argument("--behind", type=float, default=0.8, help="stop below this fraction of the rate")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument(
        "--max-inflight", type=int, default=1024, help="puts on the wire at once; the rest wait their turn"
    )
    parser.add_argument("--connections", type=int, default=8, help="etcd connections")
    parser.add_argument("--kvclients", type=int, default=1, help="phalanx_aio KVClients")
    parser.add_argument("--etcd-client", choices=["grpcio", "grpclib"], default="grpcio")
    parser.add_argument("--systems", default="etcd,phalanx")
    parser.add_argument("--etcd", default=shutil.which("etcd"))
    parser.add_argument("--json", default=str(RESULTS))
    args = parser.parse_args(argv)
    args.rates = [int(x) for x in args.rates.split(",") if x]
    systems = args.systems.split(",")
    if "etcd" in systems and not (args.etcd and os.access(args.etcd, os.X_OK)):
        parser.error("no etcd binary: install Debian's etcd-server or pass --etcd PATH")
    use_uvloop = uvloop_available()
    load_before = os.getloadavg()
    created = now_iso()
    out: dict[str, list[dict[str, Any]]] = {}
    for system in systems:
        if system == "etcd":
            out[ETCD] = run_etcd(args, use_uvloop)
        elif system == "phalanx":
            out[PHALANX] = run_phalanx(args, use_uvloop)
        else:
            parser.error(f"unknown system {system!r}: etcd, phalanx")
    report = {
        "benchmark": "open_loop_client",
        "created": created,
        **git_commit(),
        "machine": machine(load_before),
        "settings": {
            "rates": args.rates,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "drain": args.drain,
            "behind": args.behind,
            "size": args.size,
            "max_inflight": args.max_inflight,
            "connections": args.connections,
            "kvclients": args.kvclients,
            "etcd_client": args.etcd_client,
            "systems": systems,
            "uvloop": use_uvloop,
            "etcd": "three etcd 3.4 processes on loopback, default settings (WAL fsynced); unary KV/Put "
            "on N connections to the leader",
            "phalanx_aio": "three `phalanx-aio serve` processes, SQLite synchronous=FULL; KVClient(s) "
            "on the batched stream",
            "latency": "from each put's scheduled instant to its answer",
        },
        "rounds": [{"label": k, "points": v} for k, v in out.items()],
        "summary": {
            "series": {
                k: [
                    {"rate": p["rate"], "ops": p["ops"], "p50_ms": p["p50_ms"], "p99_ms": p["p99_ms"]}
                    for p in v
                ]
                for k, v in out.items()
            }
        },
    }
    path = pathlib.Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
