"""The client path side by side with etcd: a three-member etcd and a three-member phalanx_aio
cluster on loopback, the same put workload, the same machine, the same run.

etcd is the production reference: Debian's package (``apt-get install etcd-server``, 3.4.23
on bookworm; ``--etcd PATH`` for another binary), three ``etcd`` processes with their data
in a temporary directory (etcd fsyncs its write-ahead log before it acknowledges a put). It is
driven from this process over gRPC (grpclib, the library phalanx_aio's transport uses): each
caller sends ``etcdserverpb.KV/Put`` unary calls on one shared HTTP/2 connection to the etcd
leader, which is what a Python application using etcd's gRPC API does. The requests are
encoded here by hand (a ``PutRequest`` is two bytes fields), so no etcd client library and
no generated code are needed.

phalanx_aio runs exactly as in ``benchmarks/client.py`` (its functions are reused): three
``phalanx-aio serve`` processes, SQLite ``synchronous=FULL``, one
:class:`~phalanx_aio.kv.KVClient` in this process shared by the callers, on its batched
stream (``--transport unary`` adds its one-call-per-operation path).

Each workload: N callers (``--callers``, default 1 and 64) each doing ``put(key, value)`` in a
loop, 64-byte values, ``--warmup`` seconds unmeasured then ``--seconds`` measured; completed
ops/s, p50/p99/p99.9 latency, errors, and the CPU seconds of every server process. Prints
each pair with the ratio of throughputs and writes ``benchmarks/results/vs_etcd.json``.
``--repeat R`` runs the sequence R times and prints the medians. Not a test.

Usage: python benchmarks/vs_etcd.py [--callers 1,64] [--seconds 5] [--repeat 3] [--etcd /usr/bin/etcd]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.exceptions import GRPCError, StreamTerminatedError

from phalanx_aio._grpc import WireBytes
from phalanx_aio._net import free_loopback_ports
from phalanx_aio.node.runner import run, uvloop_available

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from client import Cluster, cpu_seconds, drive, run_workload, wait_for_leader

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results" / "vs_etcd.json"
PUT = "/etcdserverpb.KV/Put"
STATUS = "/etcdserverpb.Maintenance/Status"
_FAILURES = (TimeoutError, GRPCError, OSError, StreamTerminatedError)


# ---------------------------------------------------------------------- protobuf, by hand


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def put_request(key: bytes, value: bytes) -> bytes:
    """An ``etcdserverpb.PutRequest``: field 1 ``key``, field 2 ``value`` (both bytes)."""
    return b"\x0a" + _varint(len(key)) + key + b"\x12" + _varint(len(value)) + value


def _fields(data: bytes) -> dict[int, int | bytes]:
    """The varint and length-delimited fields of a protobuf message (last one wins)."""
    out: dict[int, int | bytes] = {}
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            out[number], pos = _read_varint(data, pos)
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            out[number], pos = data[pos : pos + length], pos + length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unexpected wire type {wire}")
    return out


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def leader_of_status(reply: bytes) -> tuple[int, int]:
    """(this member's id, the leader's id) from an ``etcdserverpb.StatusResponse``: field 1 is
    the ``ResponseHeader`` (its field 2 the member id), field 4 the leader's id."""
    fields = _fields(reply)
    header = fields.get(1, b"")
    member = _fields(header).get(2, 0) if isinstance(header, bytes) else 0
    leader = fields.get(4, 0)
    return int(member) if isinstance(member, int) else 0, leader if isinstance(leader, int) else 0


# ---------------------------------------------------------------------- an etcd cluster


class EtcdCluster:
    """Three ``etcd`` processes on loopback with their data under ``workdir``."""

    def __init__(self, binary: str, workdir: pathlib.Path, n: int = 3) -> None:
        self.binary = binary
        self.workdir = workdir
        self.ids = [f"e{i + 1}" for i in range(n)]
        ports = free_loopback_ports(2 * n)
        self.client = {nid: ports[i] for i, nid in enumerate(self.ids)}
        self.peer = {nid: ports[n + i] for i, nid in enumerate(self.ids)}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start_all(self) -> None:
        initial = ",".join(f"{nid}=http://127.0.0.1:{self.peer[nid]}" for nid in self.ids)
        for nid in self.ids:
            client, peer = f"http://127.0.0.1:{self.client[nid]}", f"http://127.0.0.1:{self.peer[nid]}"
            cmd = [
                self.binary, "--name", nid, "--data-dir", str(self.workdir / nid),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--initial-cluster-token", "phalanx-bench", "--log-outputs", "stderr",
            ]  # fmt: skip
            log = (self.workdir / f"{nid}.log").open("wb")
            self.procs[nid] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            log.close()

    def cpu(self) -> dict[str, float]:
        return cpu_seconds(self.procs)

    def dead(self) -> list[str]:
        return [nid for nid, proc in self.procs.items() if proc.poll() is not None]

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _unary(channel: Channel, path: str, payload: bytes, timeout: float) -> bytes:
    async with channel.request(path, Cardinality.UNARY_UNARY, WireBytes, WireBytes, timeout=timeout) as call:
        await call.send_message(WireBytes(payload), end=True)
        reply = await call.recv_message()
    if reply is None:
        raise ConnectionError(f"{path}: no reply")
    return reply.data


async def find_etcd_leader(cluster: EtcdCluster, timeout: float = 30.0) -> str:
    """The name of the member every member names as leader, once a put succeeds through it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            ids: dict[int, str] = {}
            leaders = set()
            for nid in cluster.ids:
                channel = Channel("127.0.0.1", cluster.client[nid])
                try:
                    member, leader = leader_of_status(await _unary(channel, STATUS, b"", 2.0))
                    if leader:
                        await _unary(channel, PUT, put_request(b"bench-warmup", b"x"), 2.0)
                finally:
                    channel.close()
                ids[member] = nid
                leaders.add(leader)
            if len(leaders) == 1 and (leader := leaders.pop()) in ids:
                return ids[leader]
        except _FAILURES:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("etcd elected no leader")
        await asyncio.sleep(0.2)


async def etcd_workload(port: int, callers: int, size: int, warmup: float, seconds: float) -> dict[str, Any]:
    """``callers`` tasks sharing one gRPC connection to the etcd member at ``port``, each
    sending unary puts in a loop (measured as :func:`client.run_workload` measures)."""
    value = b"v" * size
    channel = Channel("127.0.0.1", port)
    try:
        await _unary(channel, PUT, put_request(b"bench-warmup", b"x"), 10.0)

        async def call(c: int, i: int) -> bytes:
            return await _unary(channel, PUT, put_request(b"c%d-%d" % (c, i % 1000), value), 10.0)

        return await drive(callers, call, _FAILURES, warmup, seconds)
    finally:
        channel.close()


# ---------------------------------------------------------------------- the run


def _measure(system: str, cpu: Any, workload: Any, use_uvloop: bool, **labels: Any) -> dict[str, Any]:
    before = cpu()
    r: dict[str, Any] = run(workload, use_uvloop=use_uvloop)
    after = cpu()
    r["cpu_s"] = {nid: round(after[nid] - before[nid], 2) for nid in after}
    r.update(system=system, **labels)
    return r


def _line(r: dict[str, Any]) -> str:
    name = r["system"] + ("" if r["system"] == "etcd" else f" ({r['transport']})")
    cpu = sum(r["cpu_s"].values())
    errs = f"  errors {r['errors']}" if r["errors"] else ""
    return (
        f"  {name:<24} {r['callers']:>3} callers {r['ops_per_s']:>9,.0f} ops/s  p50 {r['p50']:>7.2f}"
        f"  p99 {r['p99']:>7.2f}  p99.9 {r['p999']:>7.2f} ms  servers' CPU {cpu:.2f} s{errs}"
    )


def one_round(args: argparse.Namespace, binary: str, use_uvloop: bool, rnd: int) -> list[dict[str, Any]]:
    callers = [int(x) for x in args.callers.split(",")]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="phalanx-vs-etcd-") as tmp:
        etcd = EtcdCluster(binary, pathlib.Path(tmp))
        etcd.start_all()
        try:
            leader = run(find_etcd_leader(etcd), use_uvloop=use_uvloop)
            print(f"etcd 3 members, leader {leader} [round {rnd}]")
            for n in callers:
                work = etcd_workload(etcd.client[leader], n, args.size, args.warmup, args.seconds)
                r = _measure("etcd", etcd.cpu, work, use_uvloop, callers=n, round=rnd, leader=leader)
                if etcd.dead():
                    r["dead_members"] = etcd.dead()
                results.append(r)
                print(_line(r))
        finally:
            etcd.stop_all()
    with tempfile.TemporaryDirectory(prefix="phalanx-vs-etcd-") as tmp:
        cluster = Cluster(pathlib.Path(tmp))
        cluster.start_all()
        try:
            endpoints = list(cluster.addr.values())
            leader = run(wait_for_leader(endpoints), use_uvloop=use_uvloop)
            print(f"phalanx_aio 3 members, leader {leader} [round {rnd}]")
            for transport in args.transport.split(","):
                for n in callers:
                    work = run_workload(endpoints, transport, n, "put", args.size, args.warmup, args.seconds)
                    r = _measure(
                        "phalanx_aio",
                        cluster.cpu,
                        work,
                        use_uvloop,
                        callers=n,
                        transport=transport,
                        round=rnd,
                    )
                    if cluster.dead():
                        r["dead_members"] = cluster.dead()
                    results.append(r)
                    print(_line(r))
        finally:
            cluster.stop_all()
    return results


def summary(results: list[dict[str, Any]], transports: list[str], callers: list[int]) -> list[dict[str, Any]]:
    """Per caller count and phalanx_aio transport: medians over rounds, and the median of the
    ratios taken within each round."""
    rows = []
    rounds = sorted({r["round"] for r in results})
    for transport in transports:
        for n in callers:
            ours = [
                r
                for r in results
                if r["system"] == "phalanx_aio" and r["callers"] == n and r["transport"] == transport
            ]
            theirs = [r for r in results if r["system"] == "etcd" and r["callers"] == n]
            ratios = []
            for rnd in rounds:
                a = [r["ops_per_s"] for r in ours if r["round"] == rnd]
                b = [r["ops_per_s"] for r in theirs if r["round"] == rnd]
                if a and b and b[0] > 0:
                    ratios.append(a[0] / b[0])
            med = lambda rs, k: statistics.median(r[k] for r in rs) if rs else float("nan")  # noqa: E731
            rows.append(
                {
                    "callers": n,
                    "transport": transport,
                    "phalanx_ops_per_s": med(ours, "ops_per_s"),
                    "etcd_ops_per_s": med(theirs, "ops_per_s"),
                    "phalanx_p50": med(ours, "p50"),
                    "etcd_p50": med(theirs, "p50"),
                    "phalanx_p99": med(ours, "p99"),
                    "etcd_p99": med(theirs, "p99"),
                    "ratio": statistics.median(ratios) if ratios else float("nan"),
                    "ratio_range": [min(ratios), max(ratios)] if ratios else [],
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print each pair and the ratios, write benchmarks/results/vs_etcd.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", default="1,64", help="comma-separated caller counts")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--size", type=int, default=64, help="value size in bytes")
    parser.add_argument(
        "--transport", default="stream", help="phalanx_aio's client path: stream and/or unary"
    )
    parser.add_argument("--repeat", type=int, default=1, help="rounds of the whole sequence")
    parser.add_argument(
        "--etcd", default=shutil.which("etcd"), help="the etcd binary (default: etcd on PATH)"
    )
    parser.add_argument("--json", default=str(RESULTS))
    args = parser.parse_args(argv)
    if not args.etcd or not os.access(args.etcd, os.X_OK):
        parser.error(
            "no etcd binary: install Debian's etcd-server (apt-get install etcd-server) or pass --etcd PATH"
        )
    transports = args.transport.split(",")
    if any(t not in ("stream", "unary") for t in transports):
        parser.error("--transport takes stream and/or unary")
    if args.repeat < 1 or args.seconds <= 0 or args.warmup < 0:
        parser.error("--repeat must be at least 1, --seconds positive, --warmup not negative")
    version = subprocess.run([args.etcd, "--version"], capture_output=True, text=True, check=False).stdout
    use_uvloop = uvloop_available()
    load = os.getloadavg()
    print(f"etcd: {version.splitlines()[0] if version else args.etcd}; load average {load[0]:.2f}")
    results: list[dict[str, Any]] = []
    for rnd in range(1, args.repeat + 1):
        results += one_round(args, args.etcd, use_uvloop, rnd)
    callers = [int(x) for x in args.callers.split(",")]
    rows = summary(results, transports, callers)
    print(f"\nmedians of {args.repeat} round(s); x = phalanx_aio / etcd ops/s, taken within each round")
    head = f"{'callers':>7} {'phalanx_aio':>16} {'ops/s':>9} {'etcd ops/s':>10} {'x':>6}"
    print(head + "  p50 ms (ours / etcd)  p99 ms")
    for row in rows:
        rng = row["ratio_range"]
        print(
            f"{row['callers']:>7} {row['transport']:>16} {row['phalanx_ops_per_s']:>9,.0f} "
            f"{row['etcd_ops_per_s']:>10,.0f} {row['ratio']:>6.2f}  "
            f"{row['phalanx_p50']:.2f} / {row['etcd_p50']:.2f}"
            f"  {row['phalanx_p99']:.2f} / {row['etcd_p99']:.2f}"
            + (f"  (x {rng[0]:.2f} to {rng[1]:.2f})" if len(rng) == 2 and args.repeat > 1 else "")
        )
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_at_start": load,
            "etcd": version.strip(),
        },
        "settings": {
            "seconds": args.seconds,
            "warmup": args.warmup,
            "size": args.size,
            "repeat": args.repeat,
            "etcd": "three etcd processes on loopback, default settings (WAL fsynced per batch); "
            "unary KV/Put calls from this process on one HTTP/2 connection to the leader (grpclib)",
            "phalanx_aio": "three `phalanx-aio serve` processes, SQLite synchronous=FULL; one KVClient "
            "in this process" + (" (uvloop)" if use_uvloop else ""),
        },
        "results": results,
        "summary": rows,
    }
    out = pathlib.Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
