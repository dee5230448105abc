"""phalanx_aio against PySyncObj 0.3.17 at its best: the same workloads, machine and run.

Both sides are a three-member cluster of three processes on loopback, with proposals made
inside the leader's process (no client path), 64-byte commands (``--size``) and N proposals in
flight (closed loop, N = 100, 1,000, 10,000; ``--inflight``); the latency of a command runs from
its submission to its result.

phalanx_aio is durable: SQLite with ``synchronous=FULL``, every acknowledged command fsynced on
a majority. It runs three times: with its members under ``phalanx_aio.run`` (uvloop and the
tuned collector, ``phalanx_run``) and under plain ``asyncio.run`` (standard loop, CPython's
default collector thresholds, ``phalanx_asyncio``), see ``benchmarks/_cluster_node.py
--runner``, both with one task per proposal; and under ``phalanx_aio.run`` with callers that
batch (``phalanx_run_batch``: N / 100 tasks, each proposing 100 commands per
``node.propose_many`` call, every command counted with its call's latency). The batching side
is reported beside the others; the targets are checked on the one-task-per-proposal sides.

PySyncObj runs in two kinds:

* ``memory``: its in-memory journal, no durability at all;
* ``durable``: its file journal flushed to disk (``mmap.flush``, i.e. ``msync``) once per batch,
  on the leader before it sends entries and on a follower before it acknowledges them.
  PySyncObj 0.3.17 has no option for this, so the benchmark adds the two flushes in a subclass.
  With ``appendEntriesUseBatch`` off, a batch is one entry: that is the per-entry flush.

**Sweep phase.** One short run (``--sweep-seconds``) per PySyncObj configuration and kind, at
every in-flight count, over the settings that limit its throughput (read from its source):

* ``appendEntriesUseBatch`` (on: entries go out every ``appendEntriesPeriod``; off: at once);
* ``appendEntriesPeriod`` (default 0.1 s; also 0.01 and 0.005): how often a batching leader sends
  and how long one tick may spend taking commands off its queue;
* ``autoTickPeriod`` (default 0.05 s; also 0.005): the poll timeout of each tick. The members tick
  in their main thread (``autoTick=False`` and ``doTick(autoTickPeriod)`` in a loop), which is what
  PySyncObj's own tick thread does, without handing every callback across threads;
* the collector's thresholds: CPython's default, or those ``phalanx_aio.run`` sets (``tuned``);
* ``appendEntriesBatchSizeBytes`` and the socket buffers (default 64 KiB; also 1 MiB with the
  short periods): the size of one append_entries message.

``commandsQueueSize`` is raised to 200,000 so that 10,000 in flight never overflows it.
PySyncObj 0.3.17 has no rate limit (no ``maxCommandsPerSecond``); its log compaction, with no
``fullDumpFile``, pickles the tiny counter state in memory and is left at its defaults.
To keep the sweep near 5 minutes the grid leaves out combinations the source gives little
reason to try: with batching off, a new command wakes the tick at once (PySyncObj's pipe
notifier) and the period only paces heartbeats, so batching off runs with one tick and period;
the default period runs with the default tick only, big messages with the short periods only.

The best configuration of each kind at each in-flight count (highest ops/s) goes on.

**Comparison phase.** ``--repeat R`` rounds (default 3); in each, at every in-flight count,
phalanx_aio under both runners and PySyncObj's best in-memory and best durable configuration,
each a fresh cluster, the order reversed every other round. Each ratio is taken within its round
and the summary gives the medians (issue 18's results contract; ``benchmarks/report.py`` puts it
on docs/performance.md and ``benchmarks/check_targets.py`` checks the targets).

Writes ``benchmarks/results/vs_pysyncobj.json`` with the sweep's raw figures, every round and
the summary; prints tables. ``--sweep-from FILE`` reuses the best configurations of an earlier
result file and skips the sweep; ``--grid JSON`` sweeps the configurations given instead of the
built-in grid. ``--quick``: a smoke run (two configurations, short runs, one
round, about 1.5 minutes). Needs ``pip install pysyncobj==0.3.17``. Not a test.

Usage: python benchmarks/vs_pysyncobj.py [--repeat 3]          (about 10 minutes)
       python benchmarks/vs_pysyncobj.py --quick                (about 1.5 minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
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
from _results import ResultFile, figure  # noqa: E402

from phalanx_aio._net import free_loopback_ports  # noqa: E402
from phalanx_aio.node.runner import GC_THRESHOLDS  # noqa: E402

PSO_VERSION = "0.3.17"
KINDS = ("memory", "durable")
INFLIGHT = (100, 1000, 10000)
SAMPLE_MAX = 50_000
QUEUE_SIZE = 200_000
PSO_DEFAULTS: dict[str, Any] = {
    "use_batch": True,  # appendEntriesUseBatch
    "period": 0.1,  # appendEntriesPeriod, s
    "tick": 0.05,  # autoTickPeriod, s (the poll timeout of doTick)
    "gc": "default",  # "default": CPython's thresholds; "tuned": phalanx_aio.run's
    "batch_bytes": 2**16,  # appendEntriesBatchSizeBytes
    "buffers": 2**16,  # sendBufferSize and recvBufferSize
}
PHALANX = ("phalanx_run", "phalanx_asyncio", "phalanx_run_batch")
RUNNER_OF = {"phalanx_run": "phalanx", "phalanx_asyncio": "asyncio", "phalanx_run_batch": "phalanx"}
MODE_OF = {"phalanx_run_batch": "batch"}  # the workload of each side; "closed" if not named


def sweep_grid(quick: bool = False) -> list[dict[str, Any]]:
    """The PySyncObj configurations the sweep phase runs (each for both kinds)."""
    if quick:
        return [dict(PSO_DEFAULTS), dict(PSO_DEFAULTS, period=0.01, tick=0.005, gc="tuned")]
    grid = []
    for gc in ("default", "tuned"):
        grid.append(dict(PSO_DEFAULTS, use_batch=False, tick=0.005, gc=gc))
        grid.append(dict(PSO_DEFAULTS, gc=gc))
        grid.append(dict(PSO_DEFAULTS, period=0.01, gc=gc))
        for period in (0.01, 0.005):
            grid.append(dict(PSO_DEFAULTS, period=period, tick=0.005, gc=gc))
            grid.append(
                dict(PSO_DEFAULTS, period=period, tick=0.005, gc=gc, batch_bytes=2**20, buffers=2**20)
            )
    return grid


def config_label(cfg: dict[str, Any]) -> str:
    """A short name of a PySyncObj configuration, its differences from the defaults first."""
    c = {**PSO_DEFAULTS, **cfg}
    parts = [f"batch {'on' if c['use_batch'] else 'off'}"]
    if c["use_batch"]:
        parts.append(f"period {c['period']:g}")
    parts.append(f"tick {c['tick']:g}")
    parts.append(f"GC {c['gc']}")
    if c["batch_bytes"] != PSO_DEFAULTS["batch_bytes"] or c["buffers"] != PSO_DEFAULTS["buffers"]:
        size = c["batch_bytes"]
        parts.append(f"{size // 2**20} MiB msgs" if size >= 2**20 else f"{size // 1024} KiB msgs")
    return ", ".join(parts)


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

    cfg = {**PSO_DEFAULTS, **json.loads(args.pso_config)}
    journal_file = args.journal if args.pso_journal == "durable" else None
    flushed = args.pso_journal == "durable"
    tick = float(cfg["tick"])

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

    # "tuned": the collector setting phalanx_aio.run gives its members (the thresholds are passed
    # by the parent, so that this process imports nothing of phalanx_aio); "default": untouched.
    if cfg["gc"] == "tuned":
        gc.set_threshold(*(int(t) for t in args.gc_thresholds.split(",")))
    gc_clock = GcClock()
    others = [a for a in args.peer]
    conf = SyncObjConf(
        autoTick=False,
        journalFile=journal_file,
        appendEntriesUseBatch=bool(cfg["use_batch"]),
        appendEntriesPeriod=float(cfg["period"]),
        appendEntriesBatchSizeBytes=int(cfg["batch_bytes"]),
        sendBufferSize=int(cfg["buffers"]),
        recvBufferSize=int(cfg["buffers"]),
        commandsQueueSize=QUEUE_SIZE,
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
                node.doTick(tick)
        else:
            rate, i = float(req["param"]), 0
            while (now := clock()) < t_to:
                while (scheduled := t_start + i / rate) <= now:
                    submit(scheduled)
                    i += 1
                node.doTick(min(tick, max(0.0, t_start + i / rate - clock())))
        drain_until = clock() + 60.0  # a backlog must not spill into the next workload
        while st["inflight"] > 0 and clock() < drain_until:
            node.doTick(tick)
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
        node.doTick(min(tick, 0.005))
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
                        "gc_threshold": list(gc.get_threshold()),
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
        self, nid: str, addr: dict[str, str], workdir: pathlib.Path, kind: str, config: dict[str, Any]
    ) -> None:
        self.id = nid
        cmd = [sys.executable, __file__, "--child", "--id", nid, "--listen", addr[nid]]
        cmd += ["--pso-journal", kind, "--pso-config", json.dumps(config)]
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
            print(f"  {name}: {line(r)}", flush=True)
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


def run_cluster_retry(
    name: str, make: Any, modes: list[tuple[str, float]], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """:func:`run_cluster`, and once more on a fresh cluster for the workloads a failed member
    left undone (the failure stays in the results)."""
    results = run_cluster(name, make, modes, args)
    if any("failure" in r for r in results):
        done = {(r["mode"], r["param"]) for r in results if "failure" not in r}
        rest = [m for m in modes if m not in done]
        print(f"  {name}: once more on a fresh cluster for {len(rest)} workload(s)", flush=True)
        results += run_cluster(name, make, rest, args)
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


def _record(r: dict[str, Any], **tags: Any) -> dict[str, Any]:
    """A run's figures as kept in the result file (the latency sample is dropped)."""
    keep = ("mode", "param", "ops_per_s", "ops", "window", "p50", "p99", "p999", "max", "dropped", "errors")
    out = {**tags, **{k: r[k] for k in keep if k in r}}
    for k in (
        "error_kinds",
        "cpu_leader",
        "cpu_followers",
        "gc_leader",
        "leader_runtime",
        "rss_mb",
        "failure",
    ):
        if k in r:
            out[k] = r[k]
    return out


def pso_maker(kind: str, cfg: dict[str, Any]) -> Any:
    return lambda nid, addr, wd: PsoMember(nid, addr, wd, kind, cfg)


def phalanx_maker(runner: str) -> Any:
    return lambda nid, addr, wd: cluster.Member(nid, addr, wd, None, ("--runner", runner))


def run_sweep(args: argparse.Namespace, inflight: list[int]) -> list[dict[str, Any]]:
    """One short run of every configuration of the grid, for each kind, at every in-flight count."""
    sweep_args = argparse.Namespace(
        **{**vars(args), "seconds": args.sweep_seconds, "warmup": args.sweep_warmup}
    )
    modes = [("closed", float(n)) for n in inflight]
    records: list[dict[str, Any]] = []
    grid = args.grid
    for kind in args.kinds:
        for i, cfg in enumerate(grid):
            name = f"PSO {kind}: {config_label(cfg)}"
            print(f"[sweep {kind} {i + 1}/{len(grid)}] {name}", flush=True)
            for r in run_cluster_retry(name, pso_maker(kind, cfg), modes, sweep_args):
                records.append(_record(r, kind=kind, config=cfg, inflight=int(r["param"])))
    return records


def best_configs(records: list[dict[str, Any]], kinds: list[str], inflight: list[int]) -> dict[str, Any]:
    """``{kind: {"N": config}}``: the configuration with the most ops/s of each kind at each
    in-flight count (runs that failed do not count)."""
    best: dict[str, Any] = {}
    for kind in kinds:
        best[kind] = {}
        for n in inflight:
            ok = [
                r
                for r in records
                if r["kind"] == kind and r["inflight"] == n and "failure" not in r and r.get("ops_per_s")
            ]
            if ok:
                best[kind][str(n)] = max(ok, key=lambda r: r["ops_per_s"])["config"]
    return best


def comparison_round(
    rnd: int, args: argparse.Namespace, inflight: list[int], best: dict[str, Any]
) -> list[dict[str, Any]]:
    """One round: phalanx_aio under both runners at every in-flight count, and each best
    PySyncObj configuration at the counts it is best at (one cluster per configuration)."""
    plan: list[tuple[str, Any, list[int], dict[str, Any]]] = []
    for system in PHALANX:
        plan.append((system, phalanx_maker(RUNNER_OF[system]), inflight, {}))
    for kind in args.kinds:
        by_cfg: dict[str, tuple[dict[str, Any], list[int]]] = {}
        for n in inflight:
            cfg = best[kind].get(str(n))
            if cfg is not None:
                by_cfg.setdefault(json.dumps(cfg, sort_keys=True), (cfg, []))[1].append(n)
        for cfg, ns in by_cfg.values():
            plan.append((f"pso_{kind}", pso_maker(kind, cfg), ns, cfg))
    if rnd % 2 == 1:
        plan.reverse()  # alternate who goes first
    records = []
    for system, make, ns, cfg in plan:
        name = system if not cfg else f"{system} ({config_label(cfg)})"
        mode = MODE_OF.get(system, "closed")
        for r in run_cluster_retry(name, make, [(mode, float(n)) for n in ns], args):
            records.append(
                _record(r, round=rnd + 1, system=system, config=cfg or None, inflight=int(r["param"]))
            )
    return records


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def round_ratios(records: list[dict[str, Any]], inflight: list[int]) -> dict[str, dict[str, float | None]]:
    """The ratios of one round at each in-flight count (None where a side is missing)."""
    out = {}
    for n in inflight:
        ops = {
            r["system"]: r["ops_per_s"]
            for r in records
            if r["inflight"] == n and "failure" not in r and r.get("ops_per_s")
        }
        run, aio = ops.get("phalanx_run"), ops.get("phalanx_asyncio")
        batch = ops.get("phalanx_run_batch")
        mem, dur = ops.get("pso_memory"), ops.get("pso_durable")
        out[str(n)] = {
            "ratio_memory": _ratio(run, mem),
            "ratio_durable": _ratio(run, dur),
            "ratio_asyncio_vs_run": _ratio(aio, run),
            "ratio_asyncio_vs_memory": _ratio(aio, mem),
            "ratio_batch_memory": _ratio(batch, mem),
            "ratio_batch_durable": _ratio(batch, dur),
        }
    return out


def _median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None and x == x]
    return float(statistics.median(xs)) if xs else None


RATIOS = (
    "ratio_memory",
    "ratio_durable",
    "ratio_asyncio_vs_run",
    "ratio_asyncio_vs_memory",
    "ratio_batch_memory",
    "ratio_batch_durable",
)


def summarize(rounds: list[dict[str, Any]], inflight: list[int], best: dict[str, Any]) -> dict[str, Any]:
    """The contract's summary: per in-flight count, the median figures of each side over the
    rounds and the median of each per-round ratio."""
    records = [r for rd in rounds for r in rd["runs"] if "failure" not in r]
    summary: dict[str, Any] = {"inflight": {}}
    for n in inflight:
        s: dict[str, Any] = {}
        for system, key in (
            ("phalanx_run", "phalanx_run"),
            ("phalanx_asyncio", "phalanx_asyncio"),
            ("phalanx_run_batch", "phalanx_run_batch"),
            ("pso_memory", "pso_best_memory"),
            ("pso_durable", "pso_best_durable"),
        ):
            mine = [r for r in records if r["system"] == system and r["inflight"] == n]
            fig: dict[str, Any] = {}
            if system.startswith("pso_"):
                fig["config"] = best.get(system[4:], {}).get(str(n)) if mine else None
            fig |= figure(
                _median([r["ops_per_s"] for r in mine]),  # type: ignore[arg-type]
                _median([r["p50"] for r in mine]),  # type: ignore[arg-type]
                _median([r["p99"] for r in mine]),  # type: ignore[arg-type]
                _median([r["p999"] for r in mine]),
            )
            fig["rounds"] = len(mine)
            s[key] = fig
        for key in RATIOS:
            s[key] = _median([rd["ratios"][str(n)].get(key) for rd in rounds])
        summary["inflight"][str(n)] = s
    return summary


def _num(x: float | None, fmt: str) -> str:
    return format(x, fmt) if x is not None and x == x else "-"


def sweep_table(records: list[dict[str, Any]], inflight: list[int], best: dict[str, Any]) -> str:
    head = f"{'kind':<8}{'PySyncObj configuration':<52}" + "".join(
        f"{f'{n} in flight':>17}" for n in inflight
    )
    out = [head, "-" * len(head)]
    rows: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for r in records:
        rows.setdefault((r["kind"], json.dumps(r["config"], sort_keys=True)), {})[r["inflight"]] = r
    for (kind, cfg_s), by_n in rows.items():
        cfg = json.loads(cfg_s)
        cells = []
        for n in inflight:
            got = by_n.get(n)
            mark = "*" if best.get(kind, {}).get(str(n)) == cfg else " "
            cells.append(f"{_num(got.get('ops_per_s') if got else None, ',.0f'):>16}{mark}")
        out.append(f"{kind:<8}{config_label(cfg):<52}" + "".join(cells))
    out.append("(ops/s, one short run each; * the best of its kind at that in-flight count)")
    return "\n".join(out)


def summary_table(summary: dict[str, Any], repeat: int) -> str:
    head = f"{'in flight':>9}  {'side':<44}{'ops/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
    out = [f"medians of {repeat} round(s)", head, "-" * len(head)]
    names = {
        "phalanx_run": "phalanx_aio durable, phalanx_aio.run",
        "phalanx_asyncio": "phalanx_aio durable, asyncio.run",
        "phalanx_run_batch": "phalanx_aio durable, propose_many, run",
        "pso_best_memory": "PySyncObj best in memory",
        "pso_best_durable": "PySyncObj best durable",
    }
    for n, s in summary["inflight"].items():
        for key, name in names.items():
            f = s[key]
            cfg = f" ({config_label(f['config'])})" if f.get("config") else ""
            out.append(
                f"{n:>9}  {name:<44}{_num(f['ops'], ',.0f'):>10}{_num(f['p50_ms'], '.1f'):>9}"
                f"{_num(f['p99_ms'], '.1f'):>9}{cfg}"
            )
        out.append(
            f"{'':>9}  ratios: vs memory {_num(s['ratio_memory'], '.2f')}, vs durable "
            f"{_num(s['ratio_durable'], '.2f')}, asyncio/run {_num(s['ratio_asyncio_vs_run'], '.2f')}, "
            f"asyncio vs memory {_num(s['ratio_asyncio_vs_memory'], '.2f')}, propose_many vs memory "
            f"{_num(s['ratio_batch_memory'], '.2f')}, vs durable {_num(s['ratio_batch_durable'], '.2f')}"
        )
    return "\n".join(out)


def estimate_minutes(args: argparse.Namespace, inflight: list[int], sweep: bool) -> float:
    """A rough duration: 5 s to start and stop a cluster, the runs, 1 s per run to drain and
    measure; PySyncObj's best configurations taken as two clusters per kind and round."""
    per_run = args.warmup + args.seconds + 1.0
    phalanx = len(PHALANX) * (5 + len(inflight) * per_run)
    pso = len(args.kinds) * (2 * 5 + len(inflight) * per_run)
    total = args.repeat * (phalanx + pso)
    if sweep:
        per_sweep_run = args.sweep_warmup + args.sweep_seconds + 1.0
        total += len(args.grid) * len(args.kinds) * (5 + len(inflight) * per_sweep_run)
    return float(total) / 60


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=4.0, help="measured seconds per comparison run")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each run")
    ap.add_argument("--sweep-seconds", type=float, default=1.0, help="measured seconds per sweep run")
    ap.add_argument(
        "--sweep-warmup", type=float, default=0.5, help="unmeasured seconds before each sweep run"
    )
    ap.add_argument("--inflight", default=",".join(map(str, INFLIGHT)), help="in-flight counts")
    ap.add_argument("--kinds", default=",".join(KINDS), help="PySyncObj kinds: memory,durable")
    ap.add_argument("--size", type=int, default=64, help="command size in bytes (default 64)")
    ap.add_argument("--repeat", type=int, default=3, help="comparison rounds (default 3)")
    ap.add_argument("--sweep-from", metavar="FILE", help="take the best configurations from this result file")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 configurations, short runs, 1 round")
    ap.add_argument(
        "--grid", help="the sweep's PySyncObj configurations as a JSON list (keys of PSO_DEFAULTS)"
    )
    ap.add_argument("--json", default=str(HERE / "results" / "vs_pysyncobj.json"))
    # child side (a PySyncObj member)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--id", help=argparse.SUPPRESS)
    ap.add_argument("--listen", help=argparse.SUPPRESS)
    ap.add_argument("--peer", action="append", default=[], help=argparse.SUPPRESS)
    ap.add_argument("--journal", help=argparse.SUPPRESS)
    ap.add_argument("--pso-journal", choices=KINDS, default="memory", help=argparse.SUPPRESS)
    ap.add_argument("--pso-config", default="{}", help=argparse.SUPPRESS)
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
    if args.quick:
        args.seconds, args.warmup, args.repeat = min(args.seconds, 1.0), min(args.warmup, 0.5), 1
        args.sweep_seconds, args.sweep_warmup = min(args.sweep_seconds, 0.5), min(args.sweep_warmup, 0.3)
    inflight = [int(n) for n in args.inflight.split(",")]
    args.grid = (
        [{**PSO_DEFAULTS, **c} for c in json.loads(args.grid)] if args.grid else sweep_grid(args.quick)
    )
    args.kinds = args.kinds.split(",")
    if not set(args.kinds) <= set(KINDS) or args.repeat < 1:
        raise SystemExit(f"--kinds takes {','.join(KINDS)}; --repeat at least 1")
    args.py_spy = args.cprofile = None  # what cluster.run_one looks for
    settings = {k: v for k, v in vars(args).items() if k not in ("child", "id", "listen", "peer", "journal")}
    settings |= {
        "phalanx_aio": "SQLite synchronous=FULL, gRPC loopback, Config.lan(), proposals in the leader",
        "pysyncobj": f"{pysyncobj.version.VERSION}, TCP loopback, autoTick=False, doTick(tick) loop",
        "pysyncobj_defaults": PSO_DEFAULTS,
        "gc_tuned": list(GC_THRESHOLDS),
        "workload": "closed loop, N proposals in flight (phalanx_run_batch: 100 per propose_many call)",
    }
    result = ResultFile("vs_pysyncobj", settings)
    print(
        f"expected duration: about {estimate_minutes(args, inflight, not args.sweep_from):.0f} minutes",
        flush=True,
    )
    t_start = time.monotonic()

    if args.sweep_from:
        earlier = json.loads(pathlib.Path(args.sweep_from).read_text())
        sweep = dict(earlier["sweep"], reused_from=str(args.sweep_from))
        best = sweep["best"]
    else:
        records = run_sweep(args, inflight)
        best = best_configs(records, args.kinds, inflight)
        sweep = {
            "seconds": args.sweep_seconds,
            "warmup": args.sweep_warmup,
            "grid": args.grid,
            "records": records,
            "best": best,
        }
        print()
        print(sweep_table(records, inflight, best))
    print()

    rounds: list[dict[str, Any]] = []
    for rnd in range(args.repeat):
        print(f"comparison, round {rnd + 1} of {args.repeat}", flush=True)
        runs = comparison_round(rnd, args, inflight, best)
        rounds.append({"round": rnd + 1, "runs": runs, "ratios": round_ratios(runs, inflight)})
    summary = summarize(rounds, inflight, best)
    for rd in rounds:
        for r in rd["runs"]:
            if "failure" in r:
                print(f"round {rd['round']}, {r['system']}: a member failed: {r['failure']}")
    print()
    print(summary_table(summary, args.repeat))
    result.settings["elapsed_s"] = elapsed = time.monotonic() - t_start
    out = result.write(args.json, rounds, summary, sweep=sweep)
    print(f"\nwritten to {out} after {elapsed / 60:.1f} minutes")


if __name__ == "__main__":
    main()
