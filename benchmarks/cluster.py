"""Throughput and latency of a real three-node cluster: three processes, gRPC on loopback,
SQLite with synchronous=FULL (every acknowledged write is fsynced on a majority).

The parent starts three members (benchmarks/_cluster_node.py), finds the leader and tells the
leader's process, over a JSON-lines pipe, to run each workload with ``await node.propose()``:

* ``closed:N``  N proposals in flight (N tasks, each proposing in a loop);
* ``batch:N``   N proposals in flight through ``node.propose_many`` (N/100 tasks, each
  proposing 100 commands per call; the latency of each command is that of its call);
* ``open:R``    R proposals per second on a fixed schedule, latency counted from the schedule.

Each workload runs for ``--warmup`` seconds unmeasured, then ``--seconds`` measured, once per
command size. Reports committed ops/s, p50/p99/p99.9 latency, CPU seconds per process
(getrusage in each child, all threads) and the leader's seconds per second in the cyclic
garbage collector (timed by gc.callbacks in each child). Prints a table, writes
benchmarks/results/cluster.json and, with ``--png``, a latency histogram. ``--py-spy DIR``
samples every member with py-spy during each workload (collapsed stacks, one file per member
and workload). Not a test.

Side-by-side comparisons: ``--impl NAME=DIR`` (repeatable) runs the members with ``DIR`` first
on ``PYTHONPATH`` (a directory holding a ``phalanx_aio`` package, e.g. an export of an older
commit), and ``--repeat R`` runs R rounds, alternating the implementations within each round
(a fresh cluster per round and implementation); the summary gives the median of the rounds.
On a shared machine this is the only fair comparison: both sides see the same load. A
workload an implementation cannot run (``batch`` before ``propose_many`` existed) is skipped.

Runners: ``--runner phalanx,asyncio`` runs the members under ``phalanx_aio.run`` (uvloop, tuned
collector) and under plain ``asyncio.run`` (standard loop, CPython's default collector
thresholds), alternating within each round like ``--impl``; the results are labelled
``IMPL/RUNNER`` when more than one runner is asked for (``phalanx`` alone is the default).

Diagnostics: ``--log-level INFO`` and ``--stall-ms 100`` make the members log leader changes
and every event-loop stall longer than 100 ms; ``--keep`` keeps their logs.

Usage: python benchmarks/cluster.py [--seconds 5] [--modes closed:1,closed:100,open:1000]
                                    [--sizes 64,1024] [--png FILE] [--py-spy DIR]
                                    [--impl before=/tmp/old --impl after=.] [--repeat 3]
                                    [--runner phalanx,asyncio]
"""

from __future__ import annotations

import argparse
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
from typing import IO, Any

from phalanx_aio._net import free_loopback_ports

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_MODES = "closed:1,closed:100,closed:10000,batch:10000,open:1000,open:5000"


class Member:
    """One child process (``script``, by default ``_cluster_node.py``) and its control pipe."""

    stop_seconds = 10.0
    """How long :meth:`stop` waits for the child to exit before killing it."""

    def __init__(
        self,
        nid: str,
        addr: dict[str, str],
        workdir: pathlib.Path,
        impl: str | None = None,
        extra: tuple[str, ...] | list[str] = (),
        *,
        script: str = "_cluster_node.py",
        log_mode: str = "w",
    ) -> None:
        self.id = nid
        cmd = [sys.executable, str(HERE / script), "--id", nid, "--listen", addr[nid], *extra]
        cmd += ["--db", str(workdir / f"{nid}.db")]
        for p, a in addr.items():
            if p != nid:
                cmd += ["--peer", f"{p}={a}"]
        self.log = open(workdir / f"{nid}.log", log_mode)  # noqa: SIM115  (closed in stop)
        env = dict(os.environ)
        if impl is not None:
            env["PYTHONPATH"] = os.pathsep.join([impl, *filter(None, [env.get("PYTHONPATH")])])
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, bufsize=1, env=env
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
        answer: dict[str, Any] = json.loads(line)
        return answer

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send(cmd="stop")
                self.proc.wait(self.stop_seconds)
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
) -> dict[str, Any] | None:
    leader = find_leader(members)
    before = {m.id: m.ask(cmd="usage") for m in members}
    spies: list[subprocess.Popen[bytes]] = []
    if args.py_spy:
        out = pathlib.Path(args.py_spy)
        out.mkdir(parents=True, exist_ok=True)
        for m in members:
            role = "leader" if m is leader else "follower"
            f = out / f"{args.impl_name}-{mode}-{param:g}-{size}B-{m.id}-{role}.txt"
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
                        *(["--gil"] if args.py_spy_gil else []),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
    if args.cprofile:
        leader.ask(
            cmd="profile_start",
            path=str(pathlib.Path(args.cprofile) / f"{args.impl_name}-{mode}-{param:g}-{size}B.prof"),
        )
    t0 = time.perf_counter()
    res = leader.ask(cmd="run", mode=mode, param=param, size=size, seconds=args.seconds, warmup=args.warmup)
    wall = time.perf_counter() - t0
    if args.cprofile:
        leader.ask(cmd="profile_stop")
    for s in spies:
        s.wait()
    if "error" in res:
        print(f"[{args.impl_name}] {mode}:{param:g} {size} B skipped: {res['error']}", flush=True)
        return None
    time.sleep(0.3)  # let followers apply the tail
    after = {m.id: m.ask(cmd="usage") for m in members}
    cpu = {
        m.id: {
            "role": "leader" if m is leader else "follower",
            "user": after[m.id]["user"] - before[m.id]["user"],
            "system": after[m.id]["system"] - before[m.id]["system"],
            "applied": after[m.id]["applied"],
            "term": [before[m.id]["term"], after[m.id]["term"]],
            # time in the cyclic garbage collector, and its runs, per generation
            "gc_s": _minus(after[m.id]["gc_seconds"], before[m.id]["gc_seconds"]),
            "gc_runs": _minus(after[m.id]["gc_runs"], before[m.id]["gc_runs"]),
        }
        for m in members
    }
    lat = res.pop("lat_ms")
    span = wall
    runtime = {k: after[leader.id][k] for k in ("loop", "gc_threshold") if k in after[leader.id]}
    return {
        "impl": args.impl_name,
        "mode": mode,
        "param": param,
        "size": size,
        "ops_per_s": res["ops"] / res["window"],
        **res,
        "wall_s": wall,
        "cpu": cpu,
        "cpu_leader": sum(c["user"] + c["system"] for c in cpu.values() if c["role"] == "leader") / span,
        "cpu_followers": [(c["user"] + c["system"]) / span for c in cpu.values() if c["role"] == "follower"],
        "gc_leader": sum(sum(c["gc_s"]) for c in cpu.values() if c["role"] == "leader") / span,
        "leader_runtime": runtime,  # the leader's event loop class and collector thresholds
        "_lat": lat,
    }


def _minus(after: list[float], before: list[float]) -> list[float]:
    return [a - b for a, b in zip(after, before, strict=True)]


def label(r: dict[str, Any]) -> str:
    n = int(r["param"])
    if r["mode"] == "closed":
        return f"closed {n} in flight"
    if r["mode"] == "batch":
        return f"batch {n} in flight"
    return f"open {r['param']:g}/s"


def _fmt_ops(x: float) -> str:
    return f"{x:,.0f}" if x == x else "-"  # NaN (every round failed) prints as "-"


def table(results: list[dict[str, Any]]) -> str:
    w = max([10, *(len(r["impl"]) + 2 for r in results)])
    head = f"{'impl':<{w}}{'workload':<22}{'size':>6}{'ops/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}"
    head += f"{'failed':>8}  {'CPU s/s leader':>14}  {'followers':>11}  {'GC s/s leader':>13}"
    lines = [head, "-" * len(head)]
    for r in results:
        fol = r["cpu_followers"]
        lines.append(
            f"{r['impl']:<{w}}{label(r):<22}{r['size']:>6}{_fmt_ops(r['ops_per_s']):>10}{r['p50']:>9.1f}"
            f"{r['p99']:>9.1f}{r['p999']:>10.1f}{r['dropped'] + r['errors']:>8}  {r['cpu_leader']:>14.2f}"
            f"  {' / '.join(f'{x:.2f}' for x in fol):>11}  {r['gc_leader']:>13.3f}"
        )
    return "\n".join(lines)


def medians(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (implementation, workload, size): the median of each figure over the rounds."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["impl"], r["mode"], r["param"], r["size"]), []).append(r)
    out = []
    for (impl, mode, param, size), rs in groups.items():

        def med(key: str, rs: list[dict[str, Any]] = rs) -> float:
            return float(statistics.median(r[key] for r in rs))

        nfol = min(len(r["cpu_followers"]) for r in rs)
        out.append(
            {
                "impl": impl,
                "mode": mode,
                "param": param,
                "size": size,
                "rounds": len(rs),
                "ops_per_s": med("ops_per_s"),
                "ops_per_s_all": [r["ops_per_s"] for r in rs],
                "p50": med("p50"),
                "p99": med("p99"),
                "p999": med("p999"),
                "dropped": sum(r["dropped"] for r in rs),
                "errors": sum(r["errors"] for r in rs),
                "cpu_leader": med("cpu_leader"),
                "gc_leader": med("gc_leader"),
                "cpu_followers": [
                    float(statistics.median(r["cpu_followers"][i] for r in rs)) for i in range(nfol)
                ],
            }
        )
    return out


def plot(results: list[dict[str, Any]], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no histogram")
        return
    # One panel per command size; one line per implementation and workload, all rounds pooled.
    series: dict[tuple[int, str, str], list[float]] = {}
    for r in results:
        series.setdefault((r["size"], r["impl"], label(r)), []).extend(r["_lat"])
    sizes = sorted({k[0] for k in series})
    impls = sorted({k[1] for k in series})
    fig, axes = plt.subplots(len(sizes), 1, figsize=(11, 5 * len(sizes)), squeeze=False)
    lats = [x for v in series.values() for x in v]
    lo = max(1e-2, min(lats, default=0.1))
    hi = max(lats, default=1000.0)
    bins = [lo * (hi / lo) ** (i / 80) for i in range(81)]
    styles = ["-", "--", ":", "-."]
    for ax, size in zip(axes[:, 0], sizes, strict=True):
        for (sz, impl, name), lat in series.items():
            if sz == size and lat:
                prefix = f"{impl}: " if len(impls) > 1 else ""
                ls = styles[impls.index(impl) % len(styles)]
                ax.hist(lat, bins=bins, histtype="step", density=True, linestyle=ls, label=f"{prefix}{name}")
        ax.set_xscale("log")
        ax.set_xlabel("proposal latency (ms, log scale)")
        ax.set_ylabel("density")
        ax.set_title(f"{size}-byte commands: 3 nodes, loopback gRPC, SQLite FULL ({os.cpu_count()} cores)")
        ax.legend(fontsize="x-small", ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    print(f"histogram written to {path}")


def run_cluster(
    impl_name: str,
    impl_dir: str | None,
    modes: list[tuple[str, float]],
    sizes: list[int],
    args: argparse.Namespace,
    runner: str = "phalanx",
) -> list[dict[str, Any]]:
    """Start a fresh three-member cluster of one implementation under ``runner`` (the
    members' ``--runner``), run every workload, stop it."""
    args.impl_name = impl_name
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="phalanx-bench-"))
    ids = ["n1", "n2", "n3"]
    addr = {nid: f"127.0.0.1:{p}" for nid, p in zip(ids, free_loopback_ports(3), strict=True)}
    extra = ("--log-level", args.log_level, "--stall-ms", str(args.stall_ms), "--runner", runner)
    members = [Member(nid, addr, workdir, impl_dir, extra) for nid in ids]
    results: list[dict[str, Any]] = []
    try:
        for m in members:
            m.recv()  # {"ready": id}
        leader = find_leader(members)
        print(f"[{impl_name}] 3 members on {', '.join(addr.values())}, data in {workdir}; leader {leader.id}")
        for size in sizes:
            for mode, param in modes:
                r = run_one(members, mode, param, size, args)
                if r is None:
                    continue
                results.append(r)
                print(table([r]).splitlines()[-1], flush=True)
    finally:
        for m in members:
            m.stop()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return results


def run_cpu_per_op(runs: list[tuple[str, str | None, str]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """CPU microseconds per committed proposal of each implementation and runner
    (``--cpu-per-op``), alternating them over the rounds; prints the medians."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as cwd:  # nothing there shadows the implementations
        for rnd in range(args.repeat):
            for name, path, runner in runs if rnd % 2 == 0 else runs[::-1]:
                env = dict(os.environ)
                if path is not None:
                    env["PYTHONPATH"] = os.pathsep.join([path, *filter(None, [env.get("PYTHONPATH")])])
                cmd = [sys.executable, str(HERE / "_cluster_node.py"), "--cpu-per-op", str(args.cpu_per_op)]
                cmd += ["--seconds", str(args.seconds), "--runner", runner]
                line = subprocess.run(
                    cmd, env=env, cwd=cwd, capture_output=True, text=True, check=True
                ).stdout
                row = {"impl": name, **json.loads(line.strip().splitlines()[-1])}
                rows.append(row)
                print(
                    f"[{name}] {row['cpu_us_per_op']:.1f} us CPU per proposal, {row['ops_per_s']:,.0f} ops/s"
                )
    print(f"\nmedian of {args.repeat} rounds, {args.cpu_per_op} in flight, 3 members in one process:")
    for name, _, _ in runs:
        mine = [r for r in rows if r["impl"] == name]
        cpu = statistics.median(r["cpu_us_per_op"] for r in mine)
        print(f"{name:<18} {cpu:6.1f} us CPU per committed proposal")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0, help="measured seconds per workload")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each workload")
    ap.add_argument("--modes", default=DEFAULT_MODES, help=f"comma-separated (default {DEFAULT_MODES})")
    ap.add_argument("--sizes", default="64,1024", help="command sizes in bytes (default 64,1024)")
    ap.add_argument("--png", help="write a latency histogram here (needs matplotlib)")
    ap.add_argument("--json", default=str(HERE / "results" / "cluster.json"))
    ap.add_argument("--py-spy", metavar="DIR", help="sample every member with py-spy (raw stacks)")
    ap.add_argument("--py-spy-gil", action="store_true", help="with --py-spy: sample the GIL holder only")
    ap.add_argument("--cprofile", metavar="DIR", help="cProfile the leader during each workload")
    ap.add_argument("--keep", action="store_true", help="keep the data directory and member logs")
    ap.add_argument(
        "--impl",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="run members with DIR first on PYTHONPATH (repeatable; default: this checkout)",
    )
    ap.add_argument("--log-level", default="WARNING", help="members' log level (logs kept with --keep)")
    ap.add_argument("--stall-ms", type=float, default=0.0, help="members log event-loop stalls above this")
    ap.add_argument(
        "--cpu-per-op",
        type=int,
        metavar="INFLIGHT",
        help="instead of the cluster: CPU time per proposal, 3 members in one process, no I/O",
    )
    ap.add_argument("--repeat", type=int, default=1, help="rounds (implementations alternate in each)")
    ap.add_argument(
        "--runner",
        default="phalanx",
        help="members' runners, comma-separated: phalanx (phalanx_aio.run), asyncio (asyncio.run)",
    )
    args = ap.parse_args()
    runners = args.runner.split(",")
    if not runners or not set(runners) <= {"phalanx", "asyncio"}:
        raise SystemExit(f"--runner takes phalanx, asyncio or both, got {args.runner!r}")
    modes = [(m.split(":")[0], float(m.split(":")[1])) for m in args.modes.split(",")]
    for mode, _ in modes:
        if mode not in ("closed", "open", "batch"):
            raise SystemExit(f"unknown mode {mode!r}")
    sizes = [int(s) for s in args.sizes.split(",")]
    impls: list[tuple[str, str | None]] = []
    for spec in args.impl:
        name, sep, path = spec.partition("=")
        if not sep or not name or not (pathlib.Path(path) / "phalanx_aio" / "__init__.py").is_file():
            raise SystemExit(f"--impl wants NAME=DIR with DIR/phalanx_aio/__init__.py, got {spec!r}")
        impls.append((name, str(pathlib.Path(path).resolve())))
    if not impls:
        impls = [("current", None)]
    if args.repeat < 1:
        raise SystemExit("--repeat must be at least 1")
    if args.cprofile:
        pathlib.Path(args.cprofile).mkdir(parents=True, exist_ok=True)

    # Every (implementation, runner) pair, labelled IMPL/RUNNER when several runners run.
    runs = [
        (f"{name}/{runner}" if len(runners) > 1 else name, path, runner)
        for name, path in impls
        for runner in runners
    ]
    if args.cpu_per_op:
        cpu_rows = run_cpu_per_op(runs, args)
        out = pathlib.Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"cpu_per_op": cpu_rows, "loadavg_at_end": os.getloadavg()}, indent=2))
        print(f"written to {out}")
        return

    results: list[dict[str, Any]] = []
    for rnd in range(args.repeat):
        order = runs if rnd % 2 == 0 else runs[::-1]  # alternate who goes first
        for name, path, runner in order:
            results.extend(run_cluster(name, path, modes, sizes, args, runner))

    summary = medians(results)
    summary.sort(key=lambda r: (r["size"], r["mode"], r["param"], [n for n, _, _ in runs].index(r["impl"])))
    print()
    if args.repeat > 1:
        print(f"median of {args.repeat} rounds:")
    print(table(summary))
    out = pathlib.Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_at_end": os.getloadavg(),
        },
        "settings": {
            "seconds": args.seconds,
            "warmup": args.warmup,
            "repeat": args.repeat,
            "impls": dict(impls),
            "runners": runners,
            "storage": "SQLite synchronous=FULL",
            "transport": "gRPC loopback",
            "config": "Config.lan()",
        },
        "summary": summary,
        "results": [{k: v for k, v in r.items() if k != "_lat"} for r in results],
    }
    out.write_text(json.dumps(doc, indent=2))
    print(f"\nwritten to {out}")
    if args.png:
        plot(results, args.png)


if __name__ == "__main__":
    main()
