"""The client path side by side with etcd, etcd driven as its users drive it: a three-member
etcd and a three-member phalanx_aio cluster on loopback, the same put workload, the same
machine, alternating rounds.

etcd is the production reference: Debian's package (``apt-get install etcd-server``, 3.4.23
on bookworm; ``--etcd PATH`` for another binary), three ``etcd`` processes with their data in
a temporary directory (etcd fsyncs its write-ahead log before it acknowledges a put). It is
driven the way etcd's own ``benchmark put`` tool drives it: ``--connections`` HTTP/2
connections (default 8), the callers spread over them (caller c on connection c mod N), the
connections either all to the leader (``benchmark --target-leader``) or spread over the three
members (``spread``: connection j to member j mod 3; a follower forwards each put to the
leader). The calls are unary ``etcdserverpb.KV/Put`` over gRPC with grpcio's asyncio API
(``--etcd-client grpcio``, what Python's etcd clients are built on; each channel has its own
subchannel pool so it really is its own connection) or with grpclib (``--etcd-client
grpclib``); a ``PutRequest`` is two bytes fields, encoded here by hand, so no etcd client
library and no generated code are needed.

phalanx_aio: three ``phalanx-aio serve`` processes (SQLite ``synchronous=FULL``), driven by
``--connections`` :class:`~phalanx_aio.kv.KVClient` objects with the callers spread over them
(``kvclients``: the same shape as etcd's connections), and by one ``KVClient`` shared by all
callers (``shared``), both on the batched stream.

Each workload: N callers (``--callers``, default 1, 64 and 256) each doing ``put(key, value)``
in a loop, 64-byte values, ``--warmup`` seconds unmeasured then ``--seconds`` measured;
completed ops/s, p50/p99/p99.9 latency, errors, the CPU of the load generator (``getrusage``
of each load process over the measured window) and of every server process (from /proc over
the same window), and the leader's CPU per completed put. ``--loadgen-procs`` (default 1,2)
also runs each workload of at least two callers from two child processes (the callers and
connections split between them) to show whether one Python process is what limits etcd; on a
two-core machine those processes compete with the servers for the cores, which the CPU
figures show. Before each round a disk probe records the median ``fdatasync`` and SQLite
commit times, since both systems wait for the disk on every write.

``--repeat R`` runs R rounds (the system that goes first alternates); the summary gives the
median of each figure over the rounds and, for the ratios (phalanx_aio / etcd), the median of
the ratios taken within each round. Then ``etcdctl check perf`` (etcd's own health check of a
cluster's write performance, about 60 s at its default load ``s``) runs against a fresh
three-member etcd and its verdict is parsed into the result (``--no-check-perf`` skips it).

Prints the figures and writes ``benchmarks/results/vs_etcd.json``. Not a test.

Usage: python benchmarks/vs_etcd.py [--callers 1,64,256] [--connections 8] [--seconds 5]
           [--repeat 3] [--etcd-target leader,spread] [--loadgen-procs 1,2] [--no-check-perf]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.exceptions import GRPCError, StreamTerminatedError

from phalanx_aio._grpc import WireBytes
from phalanx_aio._net import free_loopback_ports
from phalanx_aio._protowire import LEN, VARINT, fields, uvarint
from phalanx_aio.errors import PhalanxError
from phalanx_aio.kv import KVClient
from phalanx_aio.node.runner import run, uvloop_available

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _results import latency_figures
from client import Cluster, cpu_seconds, drive, git_commit, machine, now_iso, wait_for_leader

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results" / "vs_etcd.json"
PUT = "/etcdserverpb.KV/Put"
STATUS = "/etcdserverpb.Maintenance/Status"
_FAILURES: tuple[type[BaseException], ...] = (TimeoutError, GRPCError, OSError, StreamTerminatedError)
try:  # grpcio: optional at import time, so the grpclib path works without it
    import grpc
    import grpc.aio

    _FAILURES += (grpc.RpcError,)
except ImportError:  # pragma: no cover
    grpc = None  # type: ignore[assignment]


# ---------------------------------------------------------------------- protobuf, by hand


def put_request(key: bytes, value: bytes) -> bytes:
    """An ``etcdserverpb.PutRequest``: field 1 ``key``, field 2 ``value`` (both bytes)."""
    return b"\x0a" + uvarint(len(key)) + key + b"\x12" + uvarint(len(value)) + value


def _fields(data: bytes) -> dict[int, int | bytes]:
    """The varint and length-delimited fields of a protobuf message (last one wins)."""
    out: dict[int, int | bytes] = {}
    for number, wire, a, b in fields(data, 0, len(data), "etcd message", len(data) + 1):
        if wire == VARINT:
            out[number] = a
        elif wire == LEN:
            out[number] = data[a:b]
    return out


def leader_of_status(reply: bytes) -> tuple[int, int]:
    """(this member's id, the leader's id) from an ``etcdserverpb.StatusResponse``: field 1 is
    the ``ResponseHeader`` (its field 2 the member id), field 4 the leader's id."""
    top = _fields(reply)
    header = top.get(1, b"")
    member = _fields(header).get(2, 0) if isinstance(header, bytes) else 0
    leader = top.get(4, 0)
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


# ---------------------------------------------------------------------- the load


class EtcdPuts:
    """Connections to etcd members (one port per connection); ``put(conn, key, value)`` sends
    one unary ``KV/Put`` on connection ``conn`` (modulo their number)."""

    def __init__(self, ports: list[int], kind: str = "grpcio") -> None:
        if kind == "grpcio" and grpc is None:
            raise RuntimeError("grpcio is not installed: use --etcd-client grpclib")
        self.ports = ports
        self.kind = kind
        self._channels: list[Any] = []
        self._calls: list[Callable[[bytes], Any]] = []

    async def open(self) -> None:
        for port in self.ports:
            if self.kind == "grpcio":
                # Its own subchannel pool: otherwise channels to one address share one connection.
                ch = grpc.aio.insecure_channel(
                    f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
                )
                stub = ch.unary_unary(PUT)
                self._calls.append(lambda payload, stub=stub: stub(payload, timeout=10.0))
            else:
                ch = Channel("127.0.0.1", port)
                self._calls.append(lambda payload, ch=ch: _unary(ch, PUT, payload, 10.0))
            self._channels.append(ch)
        for call in self._calls:  # connect every connection before the clock starts
            await call(put_request(b"bench-warmup", b"x"))

    async def put(self, conn: int, key: bytes, value: bytes) -> None:
        await self._calls[conn % len(self._calls)](put_request(key, value))

    async def close(self) -> None:
        for ch in self._channels:
            if self.kind == "grpcio":
                await ch.close()
            else:
                ch.close()


class PhalanxPuts:
    """``n`` KVClients, each given every endpoint (each finds the leader itself)."""

    def __init__(self, endpoints: list[str], n: int) -> None:
        self.endpoints = endpoints
        self.n = n
        self._stack = contextlib.AsyncExitStack()
        self._clients: list[KVClient] = []

    async def open(self) -> None:
        for _ in range(self.n):
            kv = await self._stack.enter_async_context(KVClient(self.endpoints, timeout=10.0))
            await kv.put(b"bench-warmup", b"x")  # find the leader before the clock starts
            self._clients.append(kv)

    async def put(self, conn: int, key: bytes, value: bytes) -> None:
        await self._clients[conn % self.n].put(key, value)

    async def close(self) -> None:
        await self._stack.aclose()


def make_target(spec: Mapping[str, Any]) -> EtcdPuts | PhalanxPuts:
    """The load target a worker spec names: ``{"system": "etcd", "ports": [...], "client": ...}``
    or ``{"system": "phalanx_aio", "endpoints": [...], "kvclients": n}``."""
    if spec["system"] == "etcd":
        return EtcdPuts(list(spec["ports"]), spec.get("client", "grpcio"))
    return PhalanxPuts(list(spec["endpoints"]), int(spec["kvclients"]))


def _rusage_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


_TICKS = os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds every core of the machine has spent busy (not idle, not waiting for I/O)
    since boot, from /proc/stat: with the load generator's and the servers' figures it shows
    what the rest of the machine took."""
    try:
        fields = [int(x) for x in pathlib.Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / _TICKS


def _with_machine(servers: Callable[[], dict[str, float]]) -> Callable[[], dict[str, float]]:
    return lambda: {**servers(), "_machine": machine_busy_s()}


async def _window(
    start: float, warmup: float, seconds: float, probe: Callable[[], dict[str, float]]
) -> dict[str, float]:
    """``probe()``'s change over the measured window [start + warmup, start + warmup + seconds]."""
    clock = time.perf_counter
    await asyncio.sleep(max(0.0, start + warmup - clock()))
    a = probe()
    await asyncio.sleep(max(0.0, start + warmup + seconds - clock()))
    b = probe()
    return {k: round(b[k] - a[k], 3) for k in b}


async def load(
    spec: Mapping[str, Any], servers: Callable[[], dict[str, float]] | None = None
) -> dict[str, Any]:
    """One load process's share of a workload: its callers (``spec["callers"]``, global ids)
    each putting in a loop on connection (caller mod connections), from ``spec["start"]`` (a
    perf_counter instant; now, once connected, if absent). Returns the drive() figures with
    the sorted latencies, this process's CPU seconds over the measured window
    (``loadgen_cpu_s``) and, if ``servers`` is given, the servers' CPU over it too."""
    target = make_target(spec)
    await target.open()
    try:
        ids = list(spec["callers"])
        value = b"v" * int(spec["size"])
        warmup, seconds = float(spec["warmup"]), float(spec["seconds"])
        start = spec.get("start") or time.perf_counter() + 0.05

        async def call(c: int, i: int) -> None:
            g = ids[c]
            await target.put(g, b"c%d-%d" % (g, i % 1000), value)

        def probe() -> dict[str, float]:
            return {"loadgen": _rusage_s(), **(servers() if servers else {})}

        r, cpu = await asyncio.gather(
            drive(len(ids), call, (*_FAILURES, PhalanxError), warmup, seconds, start=start, raw=True),
            _window(start, warmup, seconds, probe),
        )
    finally:
        await target.close()
    r["loadgen_cpu_s"] = cpu.pop("loadgen")
    if servers:
        r["server_cpu_s"] = cpu
    return r


def _worker_main(spec_json: str, out: str) -> int:
    """A child load process: run ``load`` for the spec and write its result as JSON to ``out``
    (a file: the event loop may leave stdout non-blocking)."""
    spec = json.loads(spec_json)
    r = run(load(spec), use_uvloop=bool(spec.get("uvloop")))
    pathlib.Path(out).write_text(json.dumps(r))
    return 0


def workload(
    spec: dict[str, Any],
    procs: int,
    servers: Callable[[], dict[str, float]],
    use_uvloop: bool,
) -> dict[str, Any]:
    """Run one workload from this process (``procs`` 1) or from ``procs`` child processes
    sharing one window (callers and connections dealt out between them); merge the results."""
    callers = list(range(int(spec["callers_n"])))
    if procs <= 1:
        spec = {**spec, "callers": callers}
        r = run(load(spec, _with_machine(servers)), use_uvloop=use_uvloop)
        parts = [r]
        server_cpu = r.pop("server_cpu_s")
    else:
        start = time.perf_counter() + 2.5  # time for the children to import and connect
        tmp = pathlib.Path(tempfile.mkdtemp(prefix="phalanx-vs-etcd-load-"))
        children = []
        for w in range(procs):
            mine = callers[w::procs]
            if not mine:
                continue
            sub = {**spec, "callers": mine, "start": start, "uvloop": use_uvloop}
            if spec["system"] == "etcd":
                sub["ports"] = spec["ports"][w::procs] or spec["ports"][:1]
            else:
                sub["kvclients"] = max(1, int(spec["kvclients"]) // procs)
            result = tmp / f"load-{w}.json"
            cmd = [sys.executable, __file__, "--worker", json.dumps(sub), str(result)]
            children.append((subprocess.Popen(cmd), result))
        window = _window(start, float(spec["warmup"]), float(spec["seconds"]), _with_machine(servers))
        server_cpu = run(window)
        parts = []
        for child, result in children:
            if child.wait() != 0:
                raise RuntimeError(f"a load process failed (exit {child.returncode})")
            parts.append(json.loads(result.read_text()))
        shutil.rmtree(tmp, ignore_errors=True)
    lat = sorted(x for p in parts for x in p.pop("lat_ms"))
    errors: dict[str, int] = {}
    for p in parts:
        for k, v in p["errors"].items():
            errors[k] = errors.get(k, 0) + v
    ops = sum(p["ops"] for p in parts)
    seconds = float(spec["seconds"])
    busy = server_cpu.pop("_machine")
    out = {
        "ops": ops,
        "ops_per_s": round(ops / seconds, 1),
        **latency_figures(lat),
        "errors": errors,
        "late_s": max(p.get("late_s", 0.0) for p in parts),
        "loadgen_cpu_s": round(sum(p["loadgen_cpu_s"] for p in parts), 3),
        "server_cpu_s": server_cpu,
    }
    out["loadgen_cpu_s_per_s"] = round(out["loadgen_cpu_s"] / seconds, 3)
    out["server_cpu_s_per_s"] = round(sum(server_cpu.values()) / seconds, 3)
    # The whole machine's busy cores over the window; what neither the load nor the servers
    # took is the rest of the machine (other processes, the kernel's softirq work).
    out["machine_cpu_s_per_s"] = round(busy / seconds, 3)
    out["other_cpu_s_per_s"] = round(
        out["machine_cpu_s_per_s"] - out["loadgen_cpu_s_per_s"] - out["server_cpu_s_per_s"], 3
    )
    return out


# ---------------------------------------------------------------------- the run


def _line(r: dict[str, Any]) -> str:
    errs = f"  errors {r['errors']}" if r["errors"] else ""
    late = f"  late {r['late_s']:.2f} s" if r.get("late_s", 0) > 0.05 else ""
    return (
        f"  {r['system']:<11} {r['config']:<30} {r['callers']:>4} callers {r['ops_per_s']:>8,.0f} ops/s"
        f"  p50 {r['p50']:>7.2f}  p99 {r['p99']:>7.2f} ms  cpu/s load {r['loadgen_cpu_s_per_s']:.2f}"
        f" servers {r['server_cpu_s_per_s']:.2f} other {r['other_cpu_s_per_s']:.2f}"
        f"  leader {r['leader_cpu_us_per_op']:.0f} us/op{errs}{late}"
    )


def _finish(r: dict[str, Any], leader: str, **labels: Any) -> dict[str, Any]:
    ops = r["ops"]
    r["leader"] = leader
    r["leader_cpu_us_per_op"] = round(r["server_cpu_s"][leader] / ops * 1e6, 1) if ops else float("nan")
    r.update(labels)
    return r


def etcd_rounds(args: argparse.Namespace, rnd: int, use_uvloop: bool) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="phalanx-vs-etcd-") as tmp:
        etcd = EtcdCluster(args.etcd, pathlib.Path(tmp))
        etcd.start_all()
        try:
            leader = run(find_etcd_leader(etcd), use_uvloop=use_uvloop)
            print(f"etcd 3 members, leader {leader} [round {rnd}]")
            others = [nid for nid in etcd.ids if nid != leader]
            for target in args.etcd_target.split(","):
                order = [leader] * 3 if target == "leader" else [leader, *others]
                ports = [etcd.client[order[j % 3]] for j in range(args.connections)]
                for procs in args.procs:
                    for n in (n for n in args.callers if n >= procs):  # x2 procs of 1 caller: same
                        spec = {
                            "system": "etcd",
                            "ports": ports,
                            "client": args.etcd_client,
                            "callers_n": n,
                            "size": args.size,
                            "warmup": args.warmup,
                            "seconds": args.seconds,
                        }
                        config = f"{args.etcd_client} {args.connections} conns {target}" + (
                            f" x{procs} procs" if procs > 1 else ""
                        )
                        r = workload(spec, procs, etcd.cpu, use_uvloop)
                        r = _finish(
                            r, leader, system="etcd", config=config, target=target, procs=procs,
                            callers=n, connections=args.connections, round=rnd,
                        )  # fmt: skip
                        if etcd.dead():
                            r["dead_members"] = etcd.dead()
                        results.append(r)
                        print(_line(r), flush=True)
        finally:
            etcd.stop_all()
    return results


def phalanx_rounds(args: argparse.Namespace, rnd: int, use_uvloop: bool) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="phalanx-vs-etcd-") as tmp:
        cluster = Cluster(pathlib.Path(tmp))
        cluster.start_all()
        try:
            endpoints = list(cluster.addr.values())
            leader = run(wait_for_leader(endpoints), use_uvloop=use_uvloop)
            print(f"phalanx_aio 3 members, leader {leader} [round {rnd}]")
            for mode in args.phalanx_mode.split(","):
                kvclients = args.connections if mode == "kvclients" else 1
                for procs in args.procs:
                    for n in (n for n in args.callers if n >= procs):  # x2 procs of 1 caller: same
                        spec = {
                            "system": "phalanx_aio",
                            "endpoints": endpoints,
                            "kvclients": kvclients,
                            "callers_n": n,
                            "size": args.size,
                            "warmup": args.warmup,
                            "seconds": args.seconds,
                        }
                        config = (
                            f"{args.connections} KVClients" if mode == "kvclients" else "1 shared KVClient"
                        ) + (f" x{procs} procs" if procs > 1 else "")
                        r = workload(spec, procs, cluster.cpu, use_uvloop)
                        r = _finish(
                            r, leader, system="phalanx_aio", config=config, mode=mode, procs=procs,
                            callers=n, connections=kvclients, round=rnd,
                        )  # fmt: skip
                        if cluster.dead():
                            r["dead_members"] = cluster.dead()
                        results.append(r)
                        print(_line(r), flush=True)
        finally:
            cluster.stop_all()
    return results


# ---------------------------------------------------------------------- etcdctl check perf

_VERDICT = re.compile(r"^(PASS|FAIL)(?::\s*(.*))?$")


def parse_check_perf(text: str) -> dict[str, Any]:
    """The verdict lines of ``etcdctl check perf`` (its progress bar dropped): the overall
    PASS/FAIL and each check's, with the throughput (writes/s), the slowest request and the
    standard deviation (in ms)."""
    out: dict[str, Any] = {"result": None, "checks": [], "raw": ""}
    lines = []
    for line in text.splitlines():
        m = _VERDICT.match(line.strip())
        if not m:
            continue
        lines.append(line.strip())
        verdict, what = m.group(1), m.group(2)
        if what is None:
            out["result"] = verdict
            continue
        out["checks"].append({"verdict": verdict, "text": what})
        if t := re.search(r"Throughput is (\d+(?:\.\d+)?) writes/s", what):
            out["throughput_writes_per_s"] = float(t.group(1))
            out["throughput_pass"] = verdict == "PASS"
        elif t := re.search(r"Slowest request took (\d+(?:\.\d+)?)s", what):
            out["slowest_request_ms"] = round(float(t.group(1)) * 1000, 3)
            out["slowest_pass"] = verdict == "PASS"
        elif t := re.search(r"Stddev is (\d+(?:\.\d+)?)s", what):
            out["stddev_ms"] = round(float(t.group(1)) * 1000, 3)
            out["stddev_pass"] = verdict == "PASS"
    out["raw"] = "\n".join(lines)
    return out


def check_perf(args: argparse.Namespace, use_uvloop: bool) -> dict[str, Any]:
    """``etcdctl check perf --load LOAD`` against a fresh three-member etcd, every member's
    client URL given as endpoint; its result parsed, the servers' CPU over it."""
    etcdctl = args.etcdctl
    with tempfile.TemporaryDirectory(prefix="phalanx-vs-etcd-") as tmp:
        etcd = EtcdCluster(args.etcd, pathlib.Path(tmp))
        etcd.start_all()
        try:
            leader = run(find_etcd_leader(etcd), use_uvloop=use_uvloop)
            eps = ",".join(f"127.0.0.1:{etcd.client[nid]}" for nid in etcd.ids)
            cmd = [etcdctl, "--endpoints", eps, "check", "perf", "--load", args.check_perf_load]
            print(f"etcdctl check perf --load {args.check_perf_load} (about 60 s) ...", flush=True)
            before, me = etcd.cpu(), resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"})
            wall = time.perf_counter() - t0
            after, me2 = etcd.cpu(), resource.getrusage(resource.RUSAGE_CHILDREN)
        finally:
            etcd.stop_all()
    out = parse_check_perf(proc.stdout + "\n" + proc.stderr)
    out.update(
        load=args.check_perf_load,
        exit_status=proc.returncode,
        wall_s=round(wall, 1),
        leader=leader,
        server_cpu_s={nid: round(after[nid] - before[nid], 2) for nid in after},
        etcdctl_cpu_s=round(me2.ru_utime - me.ru_utime + me2.ru_stime - me.ru_stime, 2),
        command="etcdctl --endpoints <the 3 members> check perf --load " + args.check_perf_load,
    )
    return out


# ---------------------------------------------------------------------- summary


def _med(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return round(statistics.median(xs), 3) if xs else float("nan")


def summarise(results: list[dict[str, Any]], callers: list[int]) -> dict[str, Any]:
    """Medians over the rounds for every (system, config, callers); per caller count the
    best configuration of each system (most ops/s) and the ratios phalanx_aio / etcd of
    those two, the median of the ratios taken within each round."""
    configs: dict[str, Any] = {}
    for r in results:
        key = f"{r['system']} | {r['config']} | {r['callers']}"
        configs.setdefault(key, []).append(r)
    table: dict[str, dict[str, Any]] = {}
    for key, rs in configs.items():
        table[key] = {
            "system": rs[0]["system"],
            "config": rs[0]["config"],
            "callers": rs[0]["callers"],
            "rounds": len(rs),
            "ops": _med([r["ops_per_s"] for r in rs]),
            "p50_ms": _med([r["p50"] for r in rs]),
            "p99_ms": _med([r["p99"] for r in rs]),
            "p999_ms": _med([r["p999"] for r in rs]),
            "loadgen_cpu_s_per_s": _med([r["loadgen_cpu_s_per_s"] for r in rs]),
            "server_cpu_s_per_s": _med([r["server_cpu_s_per_s"] for r in rs]),
            "other_cpu_s_per_s": _med([r["other_cpu_s_per_s"] for r in rs]),
            "leader_cpu_us_per_op": _med([r["leader_cpu_us_per_op"] for r in rs]),
            "ops_by_round": [r["ops_per_s"] for r in rs],
        }
    by_callers: dict[str, Any] = {}
    rounds = sorted({r["round"] for r in results})
    for n in callers:

        def best(system: str, n: int = n) -> dict[str, Any] | None:
            rows = [t for t in table.values() if t["system"] == system and t["callers"] == n]
            return max(rows, key=lambda t: t["ops"]) if rows else None

        e, p = best("etcd"), best("phalanx_aio")
        if e is None or p is None:
            continue
        keep = (
            "config", "ops", "p50_ms", "p99_ms", "p999_ms",
            "loadgen_cpu_s_per_s", "server_cpu_s_per_s", "other_cpu_s_per_s",
        )  # fmt: skip
        c: dict[str, Any] = {
            "etcd": {k: e[k] for k in (*keep, "leader_cpu_us_per_op")},
            "phalanx": {k: p[k] for k in (*keep, "leader_cpu_us_per_op")},
        }
        r_ops, r_p50 = [], []
        for rnd in rounds:
            a = [r for r in results if r["round"] == rnd and r["callers"] == n and r["config"] == p["config"]]
            b = [r for r in results if r["round"] == rnd and r["callers"] == n and r["config"] == e["config"]]
            a = [r for r in a if r["system"] == "phalanx_aio"]
            b = [r for r in b if r["system"] == "etcd"]
            if a and b and b[0]["ops_per_s"] > 0 and b[0]["p50"] > 0:
                r_ops.append(a[0]["ops_per_s"] / b[0]["ops_per_s"])
                r_p50.append(a[0]["p50"] / b[0]["p50"])
        c["ratio_ops"] = _med(r_ops)
        c["ratio_p50"] = _med(r_p50)
        by_callers[str(n)] = c
    return {"callers": by_callers, "configs": list(table.values())}


def disk_probe(directory: str | None = None, n: int = 200) -> dict[str, float]:
    """The disk both systems write to, as it is now: the median of ``n`` 150-byte appends each
    followed by ``fdatasync`` (what etcd's write-ahead log does per batch), and of ``n``
    one-row SQLite commits in WAL mode with ``synchronous=FULL`` (what a phalanx_aio member
    does per batch), in microseconds. Neighbours' I/O on a shared machine shows here."""
    import sqlite3

    with tempfile.TemporaryDirectory(prefix="phalanx-disk-", dir=directory) as tmp:
        fd = os.open(os.path.join(tmp, "wal"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        sync: list[float] = []
        try:
            for _ in range(n):
                t0 = time.perf_counter()
                os.write(fd, b"x" * 150)
                os.fdatasync(fd)
                sync.append(time.perf_counter() - t0)
        finally:
            os.close(fd)
        conn = sqlite3.connect(os.path.join(tmp, "db"), isolation_level=None)
        commits: list[float] = []
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
            for i in range(n):
                t0 = time.perf_counter()
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO t VALUES (?, ?)", (i, b"v" * 100))
                conn.execute("COMMIT")
                commits.append(time.perf_counter() - t0)
        finally:
            conn.close()
    return {
        "fdatasync_p50_us": round(statistics.median(sync) * 1e6, 1),
        "sqlite_full_commit_p50_us": round(statistics.median(commits) * 1e6, 1),
    }


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print each workload and the summary, write the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", default="1,64,256", help="comma-separated caller counts")
    parser.add_argument("--connections", type=int, default=8, help="etcd connections / KVClients")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--size", type=int, default=64, help="value size in bytes")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (the first system alternates)")
    parser.add_argument("--etcd-target", default="leader,spread", help="leader and/or spread")
    parser.add_argument("--etcd-client", choices=["grpcio", "grpclib"], default="grpcio")
    parser.add_argument("--phalanx-mode", default="kvclients,shared", help="kvclients and/or shared")
    parser.add_argument(
        "--loadgen-procs",
        default="1,2",
        help="comma-separated load process counts (each from the callers >= it)",
    )
    parser.add_argument("--no-check-perf", action="store_true", help="skip etcdctl check perf")
    parser.add_argument("--check-perf-load", default="s", choices=["s", "m", "l", "xl"])
    parser.add_argument("--etcd", default=shutil.which("etcd"), help="the etcd binary")
    parser.add_argument("--etcdctl", default=shutil.which("etcdctl"), help="the etcdctl binary")
    parser.add_argument("--json", default=str(RESULTS))
    args = parser.parse_args(argv)
    if not args.etcd or not os.access(args.etcd, os.X_OK):
        parser.error("no etcd binary: install Debian's etcd-server or pass --etcd PATH")
    if not args.no_check_perf and not (args.etcdctl and os.access(args.etcdctl, os.X_OK)):
        parser.error("no etcdctl: install Debian's etcd-client, pass --etcdctl PATH or --no-check-perf")
    if any(t not in ("leader", "spread") for t in args.etcd_target.split(",")):
        parser.error("--etcd-target takes leader and/or spread")
    if any(m not in ("kvclients", "shared") for m in args.phalanx_mode.split(",")):
        parser.error("--phalanx-mode takes kvclients and/or shared")
    if args.repeat < 1 or args.seconds <= 0 or args.warmup < 0 or args.connections < 1:
        parser.error("--repeat and --connections at least 1, --seconds positive, --warmup not negative")
    args.callers = _ints(args.callers)
    args.procs = _ints(args.loadgen_procs)
    version = subprocess.run([args.etcd, "--version"], capture_output=True, text=True, check=False).stdout
    use_uvloop = uvloop_available()
    load_before = os.getloadavg()
    created = now_iso()
    print(f"etcd: {version.splitlines()[0] if version else args.etcd}; load average {load_before[0]:.2f}")
    results: list[dict[str, Any]] = []
    disk: list[dict[str, Any]] = []
    for rnd in range(1, args.repeat + 1):
        probe = disk_probe()
        disk.append({"round": rnd, **probe})
        print(
            f"round {rnd}: disk fdatasync p50 {probe['fdatasync_p50_us']:.0f} us, "
            f"SQLite FULL commit p50 {probe['sqlite_full_commit_p50_us']:.0f} us"
        )
        sides = [etcd_rounds, phalanx_rounds]
        for side in sides if rnd % 2 else sides[::-1]:
            results += side(args, rnd, use_uvloop)
    summary = summarise(results, args.callers)
    cp = None if args.no_check_perf else check_perf(args, use_uvloop)
    print(f"\nmedians of {args.repeat} round(s), each system's best configuration per caller count;")
    print(
        "ratios phalanx_aio / etcd taken within each round (ops: above 1 favours phalanx_aio; p50: below 1)"
    )
    for n, c in summary["callers"].items():
        e, p = c["etcd"], c["phalanx"]
        print(
            f"{n:>4} callers  etcd [{e['config']}] {e['ops']:,.0f} ops/s p50 {e['p50_ms']:.2f} p99 "
            f"{e['p99_ms']:.2f} ms, loadgen {e['loadgen_cpu_s_per_s']:.2f} cpu/s\n"
            f"{'':>13}phalanx_aio [{p['config']}] {p['ops']:,.0f} ops/s p50 {p['p50_ms']:.2f} p99 "
            f"{p['p99_ms']:.2f} ms, loadgen {p['loadgen_cpu_s_per_s']:.2f} cpu/s, leader "
            f"{p['leader_cpu_us_per_op']:.0f} us/op\n"
            f"{'':>13}ratio ops {c['ratio_ops']:.2f}, ratio p50 {c['ratio_p50']:.2f}"
        )
        for name, x in (("etcd", e), ("phalanx_aio", p)):
            busy = x["loadgen_cpu_s_per_s"] + x["server_cpu_s_per_s"]
            print(
                f"{'':>13}{name}'s run kept {busy:.2f} of {os.cpu_count()} cores busy (load generator "
                f"{x['loadgen_cpu_s_per_s']:.2f}, servers {x['server_cpu_s_per_s']:.2f}); the rest of "
                f"the machine took {x['other_cpu_s_per_s']:.2f}"
            )
    if cp is not None:
        print(f"etcdctl check perf --load {cp['load']}: {cp['result']}")
        for line in cp["raw"].splitlines():
            print(f"  {line}")
    report = {
        "benchmark": "vs_etcd",
        "created": created,
        **git_commit(),
        "machine": {**machine(load_before), "etcd": version.strip()},
        "settings": {
            "callers": args.callers,
            "connections": args.connections,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "size": args.size,
            "repeat": args.repeat,
            "etcd_target": args.etcd_target.split(","),
            "etcd_client": args.etcd_client,
            "phalanx_mode": args.phalanx_mode.split(","),
            "loadgen_procs": args.procs,
            "check_perf": None if args.no_check_perf else args.check_perf_load,
            "uvloop": use_uvloop,
            "etcd": "three etcd processes on loopback, default settings (WAL fsynced before a put is "
            "acknowledged); unary KV/Put over gRPC, callers spread over the connections",
            "phalanx_aio": "three `phalanx-aio serve` processes, SQLite synchronous=FULL; KVClient "
            "(batched stream) in the load process(es)",
            "ratios": "phalanx_aio / etcd, best configuration of each by ops/s, median of per-round ratios",
        },
        "rounds": results,
        "summary": {
            "connections": args.connections,
            "callers": summary["callers"],
            "configs": summary["configs"],
            "etcdctl_check_perf": cp,
            "disk": disk,
        },
    }
    report["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    out = pathlib.Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        sys.exit(_worker_main(sys.argv[2], sys.argv[3]))
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
