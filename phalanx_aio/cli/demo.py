"""``phalanx-aio demo``: a live three-node cluster on this machine, a leader killed mid-run.

Starts the members as separate ``phalanx-aio serve`` processes on loopback gRPC, with SQLite
in a temporary directory; writes keys from concurrent clients with a progress bar; SIGKILLs
the leader half-way and measures the failover; then checks that every acknowledged write is
readable, prints a summary and cleans up.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import TextIO

from phalanx_aio._net import free_loopback_ports
from phalanx_aio.errors import NotApplied, PhalanxError

__all__ = ["DemoResult", "LocalCluster", "run_demo"]


@dataclass(slots=True)
class DemoResult:
    """What the demo measured."""

    ops: int = 0
    failed: int = 0
    """Writes refused (certainly not applied)."""
    unknown: int = 0
    """Writes whose outcome is unknown (they may or may not have happened)."""
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    elections: int = 0
    failover_s: float | None = None
    killed: str | None = None
    verified: int = 0
    lost: int = 0

    def table(self) -> str:
        """The summary as an aligned two-column table."""
        lat = sorted(self.latencies_ms)

        def pct(p: float) -> str:
            return f"{lat[min(len(lat) - 1, int(p * len(lat)))]:.1f} ms" if lat else "-"

        rows = [
            ("acknowledged writes", f"{self.ops}"),
            ("throughput", f"{self.ops / self.seconds:,.0f} ops/s" if self.seconds else "-"),
            ("latency p50 / p99", f"{pct(0.50)} / {pct(0.99)}"),
            ("refused / unknown outcome", f"{self.failed} / {self.unknown}"),
            ("leader killed", self.killed or "-"),
            ("failover time", f"{self.failover_s:.2f} s" if self.failover_s is not None else "-"),
            ("elections (terms)", f"{self.elections}"),
            ("writes verified by reads", f"{self.verified}"),
            ("acknowledged writes lost", f"{self.lost}"),
        ]
        width = max(len(k) for k, _ in rows)
        line = "+" + "-" * (width + 2) + "+" + "-" * 22 + "+"
        body = [f"| {k:<{width}} | {v:>20} |" for k, v in rows]
        return "\n".join([line, *body, line])


class LocalCluster:
    """``n`` ``phalanx-aio serve`` processes on loopback (ids ``n1``...), SQLite and a log per
    member in ``workdir``; used by the demo and the client benchmark."""

    def __init__(self, n: int, workdir: pathlib.Path) -> None:
        self.ids = [f"n{i + 1}" for i in range(n)]
        self.addr = {nid: f"127.0.0.1:{p}" for nid, p in zip(self.ids, free_loopback_ports(n), strict=True)}
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: list[TextIO] = []

    def start(self, nid: str) -> None:
        """Start member ``nid`` (founding the cluster on its first start)."""
        cmd = [sys.executable, "-m", "phalanx_aio.cli.main", "serve", "--id", nid, "--listen", self.addr[nid]]
        cmd.append("--bootstrap")  # found the cluster on the first start; ignored once the store exists
        for p, a in self.addr.items():
            if p != nid:
                cmd += ["--peer", f"{p}={a}"]
        cmd += ["--data-dir", str(self.workdir / nid)]
        logf = open(self.workdir / f"{nid}.log", "w")  # noqa: SIM115  (closed in stop_all)
        self.logs.append(logf)
        self.procs[nid] = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)

    def start_all(self) -> None:
        """Start every member."""
        for nid in self.ids:
            self.start(nid)

    def kill(self, nid: str) -> None:
        """SIGKILL member ``nid`` and reap it."""
        proc = self.procs.get(nid)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()

    def stop_all(self) -> None:
        """SIGTERM every member, SIGKILL those still running after 10 s, close the logs."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for f in self.logs:
            f.close()


class _Progress:
    def __init__(self, out: TextIO, total_s: float) -> None:
        self.out = out
        self.total = total_s
        self.tty = out.isatty()
        self.last_line = 0.0

    def show(self, elapsed: float, ops: int, leader: str | None, note: str = "") -> None:
        frac = min(1.0, elapsed / self.total)
        bar = "#" * int(frac * 30) + "." * (30 - int(frac * 30))
        rate = ops / elapsed if elapsed > 0 else 0.0
        who = leader or "?"
        text = f"[{bar}] {frac * 100:3.0f}%  {ops:7d} writes  {rate:7.0f} ops/s  leader {who:4s} {note}"
        if self.tty:
            self.out.write("\r" + text.ljust(100))
            self.out.flush()
        elif elapsed - self.last_line >= 2.0 or note:
            self.last_line = elapsed
            self.out.write(text + "\n")

    def done(self) -> None:
        if self.tty:
            self.out.write("\n")


async def _find_leader(client: object, timeout: float) -> tuple[str, int]:
    """Poll the cluster's status until a leader is known; returns (leader id, term)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(PhalanxError, OSError):
            st = await client.status()  # type: ignore[attr-defined]
            if st.leader_id:
                return str(st.leader_id), int(st.term)
        if time.monotonic() > deadline:
            raise TimeoutError("no leader elected")
        await asyncio.sleep(0.1)


async def run_demo(
    *, nodes: int = 3, seconds: float = 15.0, clients: int = 16, out: TextIO = sys.stdout, keep: bool = False
) -> DemoResult:
    """Run the demo and return its measurements (see the module docstring)."""
    from phalanx_aio.kv.client import KVClient

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="phalanx-demo-"))
    cluster = LocalCluster(nodes, workdir)
    res = DemoResult()
    try:
        out.write(f"starting {nodes} nodes ({', '.join(cluster.addr.values())}), data in {workdir}\n")
        cluster.start_all()
        endpoints = list(cluster.addr.values())
        async with KVClient(endpoints, timeout=15.0) as admin:
            leader, first_term = await _find_leader(admin, 30.0)
            out.write(f"leader {leader} elected in term {first_term}; writing with {clients} clients\n")
            acked: dict[bytes, bytes] = {}
            stop = asyncio.Event()
            killed_at: float | None = None
            # When the first write sent after the kill succeeded. (Replies the old leader sent
            # just before it died still arrive after the kill: they say nothing about failover.)
            first_after_kill: list[float] = []
            progress = _Progress(out, seconds)

            async def writer(w: int) -> None:
                async with KVClient(endpoints, timeout=10.0) as kv:
                    i = 0
                    while not stop.is_set():
                        key, value = b"w%d-%d" % (w, i), b"v%d" % i
                        i += 1
                        t0 = time.perf_counter()
                        try:
                            await kv.put(key, value)
                        except NotApplied:
                            res.failed += 1
                            continue
                        except PhalanxError:
                            res.unknown += 1
                            continue
                        now = time.perf_counter()
                        res.latencies_ms.append((now - t0) * 1000)
                        acked[key] = value
                        res.ops += 1
                        if killed_at is not None and t0 >= killed_at and not first_after_kill:
                            first_after_kill.append(now)

            start = time.perf_counter()
            tasks = [asyncio.create_task(writer(w)) for w in range(clients)]
            current = leader
            while (elapsed := time.perf_counter() - start) < seconds:
                note = ""
                if killed_at is None and elapsed >= seconds / 2:
                    current_leader, _ = await _find_leader(admin, 10.0)
                    cluster.kill(current_leader)
                    killed_at = time.perf_counter()
                    res.killed = current_leader
                    note = f"<- killed leader {current_leader}"
                    current = "?"
                elif killed_at is not None and res.failover_s is None and first_after_kill:
                    res.failover_s = first_after_kill[0] - killed_at
                    note = f"<- writes flow again after {res.failover_s:.2f} s"
                    with contextlib.suppress(TimeoutError):
                        current, _ = await _find_leader(admin, 5.0)
                progress.show(elapsed, res.ops, current, note)
                await asyncio.sleep(0.2)
            stop.set()
            await asyncio.gather(*tasks)
            res.seconds = time.perf_counter() - start
            if killed_at is not None and res.failover_s is None and first_after_kill:
                res.failover_s = first_after_kill[0] - killed_at
            progress.show(res.seconds, res.ops, current)
            progress.done()
            _, last_term = await _find_leader(admin, 30.0)
            res.elections = last_term - first_term + 1
            out.write(f"verifying {len(acked)} acknowledged writes with linearizable reads...\n")
            items = list(acked.items())
            for lo in range(0, len(items), 64):
                chunk = items[lo : lo + 64]
                got = await asyncio.gather(*(admin.get(k) for k, _ in chunk))
                for (_, value), read in zip(chunk, got, strict=True):
                    if read == value:
                        res.verified += 1
                    else:
                        res.lost += 1
        out.write(res.table() + "\n")
        return res
    finally:
        cluster.stop_all()
        if keep:
            out.write(f"kept {workdir}\n")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
