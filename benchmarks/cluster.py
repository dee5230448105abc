"""Throughput and latency of a real three-node cluster: three processes, gRPC on loopback,
SQLite with synchronous=FULL (every acknowledged write is fsynced on a majority).

The parent starts three members (benchmarks/_cluster_node.py), finds the leader and tells the
leader's process, over a JSON-lines pipe, to run each workload with ``await node.propose()``:

* ``closed:N``  N proposals in flight (N tasks, each proposing in a loop);
* ``open:R``    R proposals per second on a fixed schedule, latency counted from the schedule.

Each workload runs for ``--warmup`` seconds unmeasured, then ``--seconds`` measured, once per
command size. Reports committed ops/s, p50/p99/p99.9 latency and CPU seconds per process
(getrusage in each child, all threads). Prints a table, writes benchmarks/results/cluster.json
and, with ``--png``, a latency histogram. ``--py-spy DIR`` samples every member with py-spy
during each workload (collapsed stacks, one file per member and workload). Not a test.

Usage: python benchmarks/cluster.py [--seconds 5] [--modes closed:1,closed:100,open:1000]
                                    [--sizes 64,1024] [--png FILE] [--py-spy DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import IO, Any

from phalanx_aio._net import free_loopback_ports

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_MODES = "closed:1,closed:100,closed:10000,open:1000,open:5000"


class Member:
    """One child process and its control pipe."""

    def __init__(self, nid: str, addr: dict[str, str], workdir: pathlib.Path) -> None:
        self.id = nid
        cmd = [sys.executable, str(HERE / "_cluster_node.py"), "--id", nid, "--listen", addr[nid]]
        cmd += ["--db", str(workdir / f"{nid}.db")]
        for p, a in addr.items():
            if p != nid:
                cmd += ["--peer", f"{p}={a}"]
        self.log = open(workdir / f"{nid}.log", "w")  # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, bufsize=1
        )

    def ask(self, **req: Any) -> dict[str, Any]:
        self.send(**req)
        return self.recv()

    def send(self, **req: Any) -> None:
        stdin: IO[str] = self.proc.stdin  # type: ignore[assignment]
        stdin.write(json.dumps(req) + "\n")
        stdin.flush()

    def recv(self) -> dict[str, Any]:
        stdout: IO[str] = self.proc.stdout  # type: ignore[assignment]
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"member {self.id} exited (see {self.log.name})")
        return json.loads(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send(cmd="stop")
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def find_leader(members: list[Member]) -> Member:
    for _ in range(50):
        answers = [m.ask(cmd="leader") for m in members]
        leaders = [m for m, a in zip(members, answers, strict=True) if a["is_leader"]]
        if len(leaders) == 1:
            return leaders[0]
        time.sleep(0.1)
    raise RuntimeError("no single leader")


def run_one(
    members: list[Member], mode: str, param: float, size: int, args: argparse.Namespace
) -> dict[str, Any]:
    leader = find_leader(members)
    before = {m.id: m.ask(cmd="usage") for m in members}
    spies: list[subprocess.Popen[bytes]] = []
    if args.py_spy:
        out = pathlib.Path(args.py_spy)
        out.mkdir(parents=True, exist_ok=True)
        for m in members:
            role = "leader" if m is leader else "follower"
            f = out / f"{mode}-{param:g}-{size}B-{m.id}-{role}.txt"
            spies.append(
                subprocess.Popen(
                    [
                        "py-spy",
                        "record",
                        "--pid",
                        str(m.proc.pid),
                        "--format",
                        "raw",
                        "--rate",
                        "200",
                        "--duration",
                        str(int(args.warmup + args.seconds)),
                        "--output",
                        str(f),
                        "--nonblocking",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
    if args.cprofile:
        leader.ask(
            cmd="profile_start", path=str(pathlib.Path(args.cprofile) / f"{mode}-{param:g}-{size}B.prof")
        )
    t0 = time.perf_counter()
    res = leader.ask(cmd="run", mode=mode, param=param, size=size, seconds=args.seconds, warmup=args.warmup)
    wall = time.perf_counter() - t0
    if args.cprofile:
        leader.ask(cmd="profile_stop")
    for s in spies:
        s.wait()
    if "error" in res:
        raise RuntimeError(res["error"])
    time.sleep(0.3)  # let followers apply the tail
    after = {m.id: m.ask(cmd="usage") for m in members}
    cpu = {
        m.id: {
            "role": "leader" if m is leader else "follower",
            "user": after[m.id]["user"] - before[m.id]["user"],
            "system": after[m.id]["system"] - before[m.id]["system"],
            "applied": after[m.id]["applied"],
            "term": [before[m.id]["term"], after[m.id]["term"]],
        }
        for m in members
    }
    lat = res.pop("lat_ms")
    return {
        "mode": mode,
        "param": param,
        "size": size,
        "ops_per_s": res["ops"] / res["window"],
        **res,
        "wall_s": wall,
        "cpu": cpu,
        "_lat": lat,
    }


def label(r: dict[str, Any]) -> str:
    return f"closed {int(r['param'])} in flight" if r["mode"] == "closed" else f"open {r['param']:g}/s"


def table(results: list[dict[str, Any]]) -> str:
    head = f"{'workload':<22}{'size':>6}{'ops/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}"
    head += f"{'drop':>7}  {'CPU s/s leader':>14}  {'followers':>11}"
    lines = [head, "-" * len(head)]
    for r in results:
        span = r["wall_s"]
        lead = sum(c["user"] + c["system"] for c in r["cpu"].values() if c["role"] == "leader") / span
        fol = [(c["user"] + c["system"]) / span for c in r["cpu"].values() if c["role"] == "follower"]
        lines.append(
            f"{label(r):<22}{r['size']:>6}{r['ops_per_s']:>10,.0f}{r['p50']:>9.1f}{r['p99']:>9.1f}"
            f"{r['p999']:>10.1f}{r['dropped'] + r['errors']:>7}  {lead:>14.2f}"
            f"  {' / '.join(f'{x:.2f}' for x in fol):>11}"
        )
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no histogram")
        return
    fig, ax = plt.subplots(figsize=(10, 6))
    lo = max(1e-2, min((min(r["_lat"]) for r in results if r["_lat"]), default=0.1))
    hi = max((max(r["_lat"]) for r in results if r["_lat"]), default=1000.0)
    bins = [lo * (hi / lo) ** (i / 80) for i in range(81)]
    for r in results:
        if r["_lat"]:
            ax.hist(r["_lat"], bins=bins, histtype="step", density=True, label=f"{label(r)}, {r['size']} B")
    ax.set_xscale("log")
    ax.set_xlabel("proposal latency (ms, log scale)")
    ax.set_ylabel("density")
    ax.set_title(f"3-node cluster, loopback gRPC, SQLite FULL ({os.cpu_count()} cores)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    print(f"histogram written to {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0, help="measured seconds per workload")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each workload")
    ap.add_argument("--modes", default=DEFAULT_MODES, help=f"comma-separated (default {DEFAULT_MODES})")
    ap.add_argument("--sizes", default="64,1024", help="command sizes in bytes (default 64,1024)")
    ap.add_argument("--png", help="write a latency histogram here (needs matplotlib)")
    ap.add_argument("--json", default=str(HERE / "results" / "cluster.json"))
    ap.add_argument("--py-spy", metavar="DIR", help="sample every member with py-spy (raw stacks)")
    ap.add_argument("--cprofile", metavar="DIR", help="cProfile the leader during each workload")
    ap.add_argument("--keep", action="store_true", help="keep the data directory and member logs")
    args = ap.parse_args()
    modes = [(m.split(":")[0], float(m.split(":")[1])) for m in args.modes.split(",")]
    for mode, _ in modes:
        if mode not in ("closed", "open"):
            raise SystemExit(f"unknown mode {mode!r}")
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.cprofile:
        pathlib.Path(args.cprofile).mkdir(parents=True, exist_ok=True)

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="phalanx-bench-"))
    ids = ["n1", "n2", "n3"]
    addr = {nid: f"127.0.0.1:{p}" for nid, p in zip(ids, free_loopback_ports(3), strict=True)}
    members = [Member(nid, addr, workdir) for nid in ids]
    results: list[dict[str, Any]] = []
    try:
        for m in members:
            m.recv()  # {"ready": id}
        leader = find_leader(members)
        print(f"3 members on {', '.join(addr.values())}, data in {workdir}; leader {leader.id}")
        for size in sizes:
            for mode, param in modes:
                r = run_one(members, mode, param, size, args)
                results.append(r)
                print(table([r]).splitlines()[-1], flush=True)
    finally:
        for m in members:
            m.stop()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(table(results))
    out = pathlib.Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "settings": {
            "seconds": args.seconds,
            "warmup": args.warmup,
            "storage": "SQLite synchronous=FULL",
            "transport": "gRPC loopback",
            "config": "Config.lan()",
        },
        "results": [{k: v for k, v in r.items() if k != "_lat"} for r in results],
    }
    out.write_text(json.dumps(doc, indent=2))
    print(f"\nwritten to {out}")
    if args.png:
        plot(results, args.png)


if __name__ == "__main__":
    main()
