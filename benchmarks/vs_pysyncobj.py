"""phalanx_aio against PySyncObj 0.3.17: the same workloads, the same machine, the same run.

Both sides are a three-member cluster of three processes on loopback, with proposals made
inside the leader's process and 64-byte commands (``--size``), measured with the workloads of
``benchmarks/cluster.py`` (closed loop with N in flight, open loop at a fixed rate; latency of
each command from its submission, or from its scheduled time in the open loop, to its result).

PySyncObj is run in these configurations (``--pso``):

* ``memory``: its in-memory journal (no durability at all);
* ``file``: its file journal (``journalFile``: an mmap'ed file, never synced, so a crash of
  the machine loses acknowledged entries);
* ``flushed``: its file journal flushed to disk (``mmap.flush``, i.e. ``msync``) once per batch:
  on the leader before it sends entries, on a follower before it acknowledges them. PySyncObj
  0.3.17 has no option for this, so the benchmark adds the two flushes in a subclass.

each with ``appendEntriesUseBatch=True`` (its default: entries are sent every
``appendEntriesPeriod``, 0.1 s, which favours throughput) and ``False`` (entries are sent as
soon as they are appended, which favours latency); ``--pso-batch`` picks one or both. Each
member drives its own ``doTick`` loop in one thread (``autoTick=False``); a command's latency
runs from the replicated call to its callback.

phalanx_aio runs as in ``benchmarks/cluster.py`` (its functions are reused): SQLite with
``synchronous=FULL``, so every acknowledged command was fsynced on a majority. Its members
run under ``phalanx_aio.run``, which raises the garbage collector's thresholds
(``phalanx_aio.tune_gc``); the PySyncObj members get the same thresholds.

Prints one row per workload and configuration, with phalanx_aio's figures beside it and the
ratio of throughputs (phalanx_aio / PySyncObj) and of p99 latencies (PySyncObj / phalanx_aio;
above 1 means phalanx_aio is faster). Also reports the resident memory of every member after
the run. ``--repeat R`` runs the whole sequence R times, takes each ratio within its round
(the two sides minutes apart at most) and then prints the medians and the range of the
ratios. Writes ``benchmarks/results/vs_pysyncobj.json``. Needs ``pip install
pysyncobj==0.3.17``. Not a test.

Usage: python benchmarks/vs_pysyncobj.py [--seconds 5] [--modes closed:1,closed:100,closed:10000,open:5000]
                                         [--pso memory,file,flushed] [--pso-batch on,off] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import cluster  # noqa: E402  (benchmarks/cluster.py, reused rather than duplicated)
from _gc_clock import GcClock  # noqa: E402

from phalanx_aio._net import free_loopback_ports  # noqa: E402
from phalanx_aio.node.runner import GC_THRESHOLDS  # noqa: E402

DEFAULT_MODES = "closed:1,closed:100,closed:10000,open:5000"
PSO_JOURNALS = ("memory", "file", "flushed")
PSO_VERSION = "0.3.17"
SAMPLE_MAX = 50_000


def rss_mb_of(pid: int) -> float:
    """Resident memory of process ``pid`` in MB (0 where there is no /proc)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# ---------------------------------------------------------------------- PySyncObj member


def _pso_child(args: argparse.Namespace) -> None:
    """One PySyncObj member: ticks its node and obeys JSON lines on stdin (the protocol of
    benchmarks/_cluster_node.py: leader, usage, run, stop)."""
    import gc
    import resource

    from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated  # type: ignore[import-untyped]

    journal_file = args.journal if args.pso_journal != "memory" else None
    flushed = args.pso_journal == "flushed"

    class Counter(SyncObj):  # type: ignore[misc]
        """Counts applied commands; with ``flushed``, syncs its journal before it sends or
        acknowledges entries."""

        def __init__(self, me: str, others: list[str], conf: Any) -> None:
            super().__init__(me, others, conf)
            self.value = 0
            self.flushes = 0
            self._dirty = False
            if flushed:
                journal = self._SyncObj__raftLog
                for name in ("add", "clear", "deleteEntriesFrom", "deleteEntriesTo"):
                    setattr(journal, name, self._marking(getattr(journal, name)))

        def _marking(self, fn: Any) -> Any:
            def wrapper(*a: Any) -> Any:
                self._dirty = True
                return fn(*a)

            return wrapper

        def _flush(self) -> None:
            if self._dirty:
                self._dirty = False
                self._SyncObj__raftLog.flush()
                self.flushes += 1

        def _SyncObj__sendAppendEntries(self) -> None:  # the leader, before it sends entries
            self._flush()
            SyncObj._SyncObj__sendAppendEntries(self)

        def _SyncObj__sendNextNodeIdx(self, *a: Any, **kw: Any) -> None:  # a follower's ack
            self._flush()
            SyncObj._SyncObj__sendNextNodeIdx(self, *a, **kw)

        @replicated  # type: ignore[untyped-decorator]
        def incr(self, command: bytes) -> int:
            self.value += 1
            return self.value

    # The collector setting phalanx_aio.run gives the members on the other side: same terms
    # (passed by the parent, so that this process imports nothing of phalanx_aio).
    gc.set_threshold(*(int(t) for t in args.gc_thresholds.split(",")))
    gc_clock = GcClock()
    others = [a for a in args.peer]
    conf = SyncObjConf(
        autoTick=False,
        journalFile=journal_file,
        appendEntriesUseBatch=args.pso_use_batch == "on",
        commandsQueueSize=200_000,
    )
    node = Counter(args.listen, others, conf)
    clock = time.perf_counter
    buf = b""

    def reply(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    def lines() -> list[dict[str, Any]]:
        nonlocal buf
        out = []
        while select.select([0], [], [], 0)[0]:
            chunk = os.read(0, 65536)
            if not chunk:
                return [{"cmd": "stop"}]
            buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            out.append(json.loads(line))
        return out

    def run(req: dict[str, Any]) -> dict[str, Any]:
        cmd = b"x" * int(req["size"])
        t_start = clock()
        t_from = t_start + float(req.get("warmup", 1.0))
        t_to = t_from + float(req["seconds"])
        st = {"ops": 0, "dropped": 0, "errors": 0, "inflight": 0}
        lat: list[float] = []
        kinds: dict[str, int] = {}
        closed = req["mode"] == "closed"

        def submit(t0: float) -> None:
            st["inflight"] += 1
            node.incr(cmd, callback=lambda res, err: done(t0, err))

        def done(t0: float, err: int) -> None:
            st["inflight"] -= 1
            now = clock()
            if err != FAIL_REASON.SUCCESS:
                key = "dropped" if err == FAIL_REASON.QUEUE_FULL else "errors"
                st[key] += 1
                kinds[str(err)] = kinds.get(str(err), 0) + 1
            elif t_from <= now <= t_to:
                st["ops"] += 1
                if t0 >= t_from:
                    lat.append((now - t0) * 1000.0)
            if closed and now < t_to:
                submit(now)

        if closed:
            for _ in range(int(req["param"])):
                submit(clock())
            while clock() < t_to:
                node.doTick(0.001)
        else:
            rate, i = float(req["param"]), 0
            while (now := clock()) < t_to:
                while (scheduled := t_start + i / rate) <= now:
                    submit(scheduled)
                    i += 1
                node.doTick(min(0.001, max(0.0, t_start + i / rate - clock())))
        drain_until = clock() + 60.0  # a backlog must not spill into the next workload
        while st["inflight"] > 0 and clock() < drain_until:
            node.doTick(0.001)
        lat.sort()
        step = max(1, len(lat) // SAMPLE_MAX)

        def pct(p: float) -> float:
            return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")

        return {
            "ops": st["ops"],
            "window": t_to - t_from,
            "dropped": st["dropped"],
            "errors": st["errors"],
            "error_kinds": kinds,
            "p50": pct(0.50),
            "p99": pct(0.99),
            "p999": pct(0.999),
            "max": lat[-1] if lat else float("nan"),
            "lat_ms": lat[::step],
        }

    reply({"ready": args.id})
    while True:
        node.doTick(0.005)
        for req in lines():
            kind = req["cmd"]
            if kind == "leader":
                deadline = clock() + 30
                while node._getLeader() is None and clock() < deadline:
                    node.doTick(0.01)
                leader = node._getLeader()
                reply({"leader": str(leader) if leader else None, "is_leader": bool(node._isLeader())})
            elif kind == "usage":
                ru = resource.getrusage(resource.RUSAGE_SELF)
                reply(
                    {
                        "user": ru.ru_utime,
                        "system": ru.ru_stime,
                        "applied": node.value,
                        "term": node.raftCurrentTerm,
                        "flushes": node.flushes,
                        **gc_clock.usage(),
                    }
                )
            elif kind == "run":
                if not node._isLeader():
                    reply({"error": f"{args.id} is not the leader"})
                else:
                    reply(run(req))
            elif kind in ("profile_start", "profile_stop"):
                reply({"ok": True})
            elif kind == "stop":
                node.destroy()
                reply({"stopped": args.id})
                return


class PsoMember(cluster.Member):
    """A PySyncObj member process, spoken to like a phalanx_aio one (cluster.Member's pipe)."""

    def __init__(
        self, nid: str, addr: dict[str, str], workdir: pathlib.Path, journal: str, use_batch: str
    ) -> None:
        self.id = nid
        cmd = [sys.executable, __file__, "--child", "--id", nid, "--listen", addr[nid]]
        cmd += ["--pso-journal", journal, "--pso-use-batch", use_batch]
        cmd += ["--gc-thresholds", ",".join(map(str, GC_THRESHOLDS))]
        cmd += ["--journal", str(workdir / f"{nid}.journal")]
        for p, a in addr.items():
            if p != nid:
                cmd += ["--peer", a]
        self.log = open(workdir / f"{nid}.log", "w")  # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, bufsize=1
        )


# ---------------------------------------------------------------------- the comparison


def run_cluster(
    name: str,
    make: Any,
    modes: list[tuple[str, float]],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Start three members with ``make(nid, addr, workdir)``, run every workload on the leader,
    stop them; returns cluster.run_one's results plus each member's resident memory.

    If a member dies, the end of each member's log is printed, the failure is recorded as a
    result with a ``"failure"`` key, and the remaining workloads of this cluster are skipped.
    """
    workdir = pathlib.Path(tempfile.mkdtemp(prefix=f"phalanx-vs-{name}-"))
    ids = ["n1", "n2", "n3"]
    addr = {nid: f"127.0.0.1:{p}" for nid, p in zip(ids, free_loopback_ports(3), strict=True)}
    members = [make(nid, addr, workdir) for nid in ids]
    results: list[dict[str, Any]] = []
    args.impl_name = name  # what cluster.run_one labels its results with
    try:
        for m in members:
            m.recv()  # {"ready": id}
        stable_leader(members)
        for mode, param in modes:
            r = cluster.run_one(members, mode, param, args.size, args)
            if r is None:  # the leader changed under the workload (cluster.run_one said so): once more
                stable_leader(members)
                r = cluster.run_one(members, mode, param, args.size, args)
            if r is None:
                continue
            r["system"] = name
            r["rss_mb"] = {m.id: rss_mb_of(m.proc.pid) for m in members}
            results.append(r)
            print(f"  {name:<24}{line(r)}", flush=True)
    except (OSError, RuntimeError, ValueError) as exc:  # a member died (broken pipe, EOF)
        print(f"  {name}: a member failed ({exc!r}); skipping the rest of this configuration")
        logs = {}
        for m in members:
            m.log.flush()
            logs[m.id] = pathlib.Path(m.log.name).read_text()[-3000:]
            if logs[m.id]:
                print(f"--- {name}, member {m.id}: end of its log ---\n{logs[m.id]}", file=sys.stderr)
        done = {(r["mode"], r["param"]) for r in results}
        failed_at = next(((mo, pa) for mo, pa in modes if (mo, pa) not in done), modes[-1])
        results.append(
            {"system": name, "mode": failed_at[0], "param": failed_at[1], "failure": repr(exc), "logs": logs}
        )
    finally:
        for m in members:
            m.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def stable_leader(members: list[Any]) -> None:
    """Wait until the same member has led for a second (a new cluster may change leader early)."""
    last = cluster.find_leader(members)
    for _ in range(20):
        time.sleep(1.0)
        now = cluster.find_leader(members)
        if now is last:
            return
        last = now
    raise RuntimeError("the leader keeps changing")


def line(r: dict[str, Any]) -> str:
    fail = r["dropped"] + r["errors"]
    return (
        f"{cluster.label(r):<22}{r['ops_per_s']:>10,.0f} ops/s  p50 {r['p50']:>8.1f}  p99 {r['p99']:>8.1f}"
        f"  p99.9 {r['p999']:>8.1f} ms  failed {fail}  RSS {max(r['rss_mb'].values()):.0f} MB"
    )


def comparison(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (workload, PySyncObj configuration) with both sides and the ratios."""
    by_mode = {(r["mode"], r["param"]): r for r in ours if "failure" not in r}
    rows = []
    for t in theirs:
        o = by_mode.get((t["mode"], t["param"]))
        if o is None or "failure" in t:
            continue
        rows.append(
            {
                "workload": cluster.label(t),
                "pysyncobj": t["system"],
                "phalanx_ops": o["ops_per_s"],
                "pso_ops": t["ops_per_s"],
                "ops_ratio": o["ops_per_s"] / t["ops_per_s"] if t["ops_per_s"] else float("inf"),
                "phalanx_p50": o["p50"],
                "pso_p50": t["p50"],
                "phalanx_p99": o["p99"],
                "pso_p99": t["p99"],
                "p99_ratio": t["p99"] / o["p99"] if o["p99"] else float("nan"),
            }
        )
    return rows


_MEDIAN_KEYS = ("phalanx_ops", "pso_ops", "ops_ratio", "phalanx_p50", "pso_p50", "phalanx_p99", "pso_p99")


def medians(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (workload, PySyncObj configuration): the median of each figure over the
    rounds, each ratio having been taken within its own round; ``ops_ratio_range`` is the
    lowest and highest of those ratios."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["workload"], r["pysyncobj"]), []).append(r)
    out = []
    for (workload, pso), rs in groups.items():
        row: dict[str, Any] = {"workload": workload, "pysyncobj": pso, "rounds": len(rs)}
        for key in _MEDIAN_KEYS:
            row[key] = statistics.median(r[key] for r in rs)
        row["p99_ratio"] = row["pso_p99"] / row["phalanx_p99"] if row["phalanx_p99"] else float("nan")
        ratios = [r["ops_ratio"] for r in rs]
        row["ops_ratio_range"] = [min(ratios), max(ratios)]
        out.append(row)
    return out


def _ms(x: float, width: int) -> str:
    """A latency, or "-" where no command both started and ended inside the window."""
    return f"{x:>{width}.1f}" if x == x else f"{'-':>{width}}"


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'workload':<24}{'PySyncObj':<22}{'phalanx ops/s':>14}{'PSO ops/s':>11}{'x':>7}"
        f"{'p50 ms':>15}{'p99 ms':>17}{'p99 x':>7}"
    )
    out = [head, "-" * len(head)]
    for r in rows:
        out.append(
            f"{r['workload']:<24}{r['pysyncobj']:<22}{r['phalanx_ops']:>14,.0f}{r['pso_ops']:>11,.0f}"
            f"{r['ops_ratio']:>7.2f}{_ms(r['phalanx_p50'], 7)} /{_ms(r['pso_p50'], 7)}"
            f"{_ms(r['phalanx_p99'], 8)} /{_ms(r['pso_p99'], 7)}{_ms(r['p99_ratio'], 7)}"
        )
    out.append(
        "(x: phalanx_aio / PySyncObj ops/s; p50, p99: phalanx_aio / PySyncObj; p99 x: PySyncObj / ours)"
    )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0, help="measured seconds per workload")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each workload")
    ap.add_argument("--modes", default=DEFAULT_MODES, help=f"comma-separated (default {DEFAULT_MODES})")
    ap.add_argument("--size", type=int, default=64, help="command size in bytes (default 64)")
    ap.add_argument("--pso", default=",".join(PSO_JOURNALS), help="PySyncObj journals: memory,file,flushed")
    ap.add_argument("--pso-batch", default="on,off", help="appendEntriesUseBatch settings to run: on,off")
    ap.add_argument("--json", default=str(HERE / "results" / "vs_pysyncobj.json"))
    ap.add_argument(
        "--repeat", type=int, default=1, help="rounds of the whole sequence; ratios per round, then medians"
    )
    # child side (a PySyncObj member)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--id", help=argparse.SUPPRESS)
    ap.add_argument("--listen", help=argparse.SUPPRESS)
    ap.add_argument("--peer", action="append", default=[], help=argparse.SUPPRESS)
    ap.add_argument("--journal", help=argparse.SUPPRESS)
    ap.add_argument("--pso-journal", choices=PSO_JOURNALS, default="memory", help=argparse.SUPPRESS)
    ap.add_argument("--pso-use-batch", choices=("on", "off"), default="on", help=argparse.SUPPRESS)
    ap.add_argument("--gc-thresholds", default="700,10,10", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _pso_child(args)
        return
    try:
        import pysyncobj.version  # type: ignore[import-untyped]
    except ImportError:
        raise SystemExit(f"PySyncObj is not installed: pip install pysyncobj=={PSO_VERSION}") from None
    if pysyncobj.version.VERSION != PSO_VERSION:
        print(f"warning: PySyncObj {pysyncobj.version.VERSION} installed, the figures are for {PSO_VERSION}")
    modes = [(m.split(":")[0], float(m.split(":")[1])) for m in args.modes.split(",")]
    for mode, _ in modes:
        if mode not in ("closed", "open"):
            raise SystemExit(f"unknown mode {mode!r} (closed:N, open:R)")
    journals = args.pso.split(",")
    batches = args.pso_batch.split(",")
    if not set(journals) <= set(PSO_JOURNALS) or not set(batches) <= {"on", "off"}:
        raise SystemExit(f"--pso takes {','.join(PSO_JOURNALS)}; --pso-batch takes on,off")
    args.py_spy = args.cprofile = None  # what cluster.run_one looks for

    ours: list[dict[str, Any]] = []
    theirs: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for rnd in range(args.repeat):
        tag = f" [round {rnd + 1} of {args.repeat}]" if args.repeat > 1 else ""
        print(f"phalanx_aio (SQLite FULL, gRPC), {args.size}-byte commands{tag}")
        ours_r = run_cluster("phalanx_aio", cluster.Member, modes, args)
        theirs_r: list[dict[str, Any]] = []
        for journal in journals:
            for batch in batches:
                name = f"{journal}, batch {batch}"
                print(f"PySyncObj {pysyncobj.version.VERSION} ({name}){tag}")
                theirs_r += run_cluster(
                    name,
                    lambda nid, addr, wd, j=journal, b=batch: PsoMember(nid, addr, wd, j, b),
                    modes,
                    args,
                )
        rows_r = comparison(ours_r, theirs_r)
        for r in ours_r + theirs_r + rows_r:
            r["round"] = rnd + 1
        ours += ours_r
        theirs += theirs_r
        rows += rows_r
        print()
        print(table(rows_r))
    summary = medians(rows)
    if args.repeat > 1:
        print(f"\nmedians of {args.repeat} rounds (each ratio taken within its round)")
        print(table(summary))
        for r in summary:
            lo, hi = r["ops_ratio_range"]
            print(f"  x over the rounds, {r['workload']}, {r['pysyncobj']}: {lo:.2f} to {hi:.2f}")
    for r in ours + theirs:
        if "failure" in r:
            print(f"{r['system']}: a member failed during {cluster.label(r)}: {r['failure']}")
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
            "size": args.size,
            "phalanx_aio": "SQLite synchronous=FULL, gRPC loopback, Config.lan()",
            "pysyncobj": f"{pysyncobj.version.VERSION}, TCP loopback, autoTick=False, doTick loop per member",
        },
        "rounds": args.repeat,
        "comparison": rows,
        "summary": summary,
        "results": [{k: v for k, v in r.items() if k != "_lat"} for r in ours + theirs],
    }
    out.write_text(json.dumps(doc, indent=2))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
