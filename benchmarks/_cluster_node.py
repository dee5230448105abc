"""One member of the benchmark cluster (started by benchmarks/cluster.py; not run by hand).

Runs a RaftNode with a counting state machine on SQLite (synchronous=FULL), then obeys JSON
lines on stdin and answers with JSON lines on stdout:

    {"cmd": "leader"}   -> {"leader": id, "is_leader": bool}
    {"cmd": "usage"}    -> {"user": s, "system": s, "applied": n,   (getrusage of this process,
                            "gc_seconds": [s, s, s], "gc_runs": [n, n, n],   the collector's per generation,
                            "gc_threshold": [a, b, c], "loop": "module.Class"}   and what the runner set)
    {"cmd": "run", "mode": "closed"|"batch"|"open", "param": N|rate, "size": bytes, "seconds": s, "warmup": s}
                        -> {"ops": n, "window": s, "dropped": n, "errors": n, "lat_ms": [sorted sample],
                            "p50": ms, "p99": ms, "p999": ms, "max": ms}
    {"cmd": "profile_start", "path": p} / {"cmd": "profile_stop"}   (cProfile of this process)
    {"cmd": "stop"}

``--runner phalanx`` (the default) runs the member under ``phalanx_aio.run`` (uvloop and the
collector thresholds of ``phalanx_aio.tune_gc``); ``--runner asyncio`` under plain ``asyncio.run``:
the standard event loop and CPython's default collector thresholds, as in a host program that
owns its loop and leaves the collector alone. Nothing else in this process installs uvloop or
touches the collector's thresholds; the ``usage`` reply reports both, so a run can show it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import json
import logging
import pathlib
import resource
import struct
import sys
import time
from collections.abc import Coroutine
from typing import Any

from _gc_clock import GcClock
from _results import latency_figures

import phalanx_aio
from phalanx_aio import Config, RaftNode, SQLiteStorage, StateMachine
from phalanx_aio.errors import PhalanxError, ProposalDropped

SAMPLE_MAX = 50_000


class Counter(StateMachine):
    """Counts applied commands."""

    def __init__(self) -> None:
        self.value = 0

    def apply(self, command: bytes) -> int:
        self.value += 1
        return self.value

    def snapshot(self) -> bytes:
        return struct.pack(">q", self.value)

    def restore(self, data: bytes) -> None:
        (self.value,) = struct.unpack(">q", data)


class _Recorder:
    """Completions inside the measuring window [t_from, t_to] and their latencies."""

    def __init__(self, t_from: float, t_to: float) -> None:
        self.t_from, self.t_to = t_from, t_to
        self.ops = 0
        self.lat: list[float] = []
        self.dropped = 0
        self.errors = 0
        self.error_kinds: dict[str, int] = {}

    def error(self, exc: BaseException) -> None:
        self.errors += 1
        name = type(exc).__name__
        self.error_kinds[name] = self.error_kinds.get(name, 0) + 1

    def done(self, started: float, ended: float) -> None:
        if self.t_from <= ended <= self.t_to:
            self.ops += 1
            if started >= self.t_from:
                self.lat.append((ended - started) * 1000.0)

    def result(self) -> dict[str, Any]:
        lat = sorted(self.lat)
        step = max(1, len(lat) // SAMPLE_MAX)
        return {
            "ops": self.ops,
            "window": self.t_to - self.t_from,
            "dropped": self.dropped,
            "errors": self.errors,
            "error_kinds": self.error_kinds,
            **latency_figures(lat),
            "lat_ms": lat[::step],
        }


async def _closed(node: RaftNode, inflight: int, cmd: bytes, rec: _Recorder) -> None:
    """``inflight`` tasks, each proposing in a loop until the window ends."""
    clock = time.perf_counter

    async def worker() -> None:
        while clock() < rec.t_to:
            t0 = clock()
            try:
                await node.propose(cmd)
            except ProposalDropped:
                rec.dropped += 1
                await asyncio.sleep(0.001)
                continue
            except PhalanxError as exc:
                rec.error(exc)
                continue
            rec.done(t0, clock())

    await asyncio.gather(*(worker() for _ in range(inflight)))


BATCH = 100


async def _batch(node: RaftNode, inflight: int, cmd: bytes, rec: _Recorder) -> None:
    """``inflight // BATCH`` tasks, each proposing ``BATCH`` commands per ``propose_many`` call;
    every command of a call counts with the call's latency."""
    clock = time.perf_counter
    cmds = [cmd] * BATCH

    async def worker() -> None:
        while clock() < rec.t_to:
            t0 = clock()
            try:
                results = await node.propose_many(cmds)
            except ProposalDropped:
                rec.dropped += BATCH
                await asyncio.sleep(0.001)
                continue
            except PhalanxError as exc:
                rec.error(exc)
                continue
            t1 = clock()
            for r in results:
                if isinstance(r, ProposalDropped):
                    rec.dropped += 1
                elif isinstance(r, BaseException):
                    rec.error(r)
                else:
                    rec.done(t0, t1)

    await asyncio.gather(*(worker() for _ in range(max(1, inflight // BATCH))))


async def _open(node: RaftNode, rate: float, cmd: bytes, rec: _Recorder, t_start: float) -> None:
    """Proposals issued on a fixed schedule; latency counts from the scheduled time, so a
    stalled leader is charged for the proposals it delayed (no coordinated omission)."""
    clock = time.perf_counter
    tasks: set[asyncio.Task[None]] = set()

    async def one(scheduled: float) -> None:
        try:
            await node.propose(cmd)
        except ProposalDropped:
            rec.dropped += 1
            return
        except PhalanxError as exc:
            rec.error(exc)
            return
        rec.done(scheduled, clock())

    i = 0
    while True:
        now = clock()
        if now >= rec.t_to:
            break
        while (scheduled := t_start + i / rate) <= now:
            t = asyncio.create_task(one(scheduled))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            i += 1
        # Sleep until the next proposal is due, but at least 1 ms: the event loop's timers
        # have 1 ms resolution, so a shorter sleep returns at once and this loop would spin,
        # taking the leader's CPU from the node (proposals due meanwhile go out together,
        # and their latency still counts from their scheduled time).
        await asyncio.sleep(max(0.001, t_start + i / rate - clock()))
    if tasks:
        await asyncio.wait(tasks, timeout=30)


async def _run_workload(node: RaftNode, req: dict[str, Any]) -> dict[str, Any]:
    cmd = b"x" * int(req["size"])
    t_start = time.perf_counter()
    warmup = float(req.get("warmup", 1.0))
    rec = _Recorder(t_start + warmup, t_start + warmup + float(req["seconds"]))
    if req["mode"] == "closed":
        await _closed(node, int(req["param"]), cmd, rec)
    elif req["mode"] == "batch":
        await _batch(node, int(req["param"]), cmd, rec)
    else:
        await _open(node, float(req["param"]), cmd, rec, t_start)
    return rec.result()


_GC = GcClock()


def _usage(node: RaftNode, sm: Counter) -> dict[str, Any]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    st = node.status()
    return {
        "user": ru.ru_utime,
        "system": ru.ru_stime,
        **_GC.usage(),
        "gc_threshold": list(gc.get_threshold()),
        "loop": f"{type(asyncio.get_running_loop()).__module__}.{type(asyncio.get_running_loop()).__name__}",
        "applied": sm.value,
        "term": st.term,
        "leader": st.leader,
    }


def _reply(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _watch_stalls(threshold: float) -> None:
    """Log every event-loop turn that overran ``threshold`` seconds (diagnostics)."""
    loop = asyncio.get_running_loop()
    lg = logging.getLogger("bench.stall")
    while True:
        t0 = loop.time()
        await asyncio.sleep(0.005)
        late = loop.time() - t0 - 0.005
        if late > threshold:
            lg.warning("event loop stalled %.0f ms", late * 1000)


async def main(args: argparse.Namespace) -> None:
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s.%(msecs)03d %(name)s %(levelname)s %(message)s",
        datefmt="%X",
    )
    peers = dict(p.split("=", 1) for p in args.peer)
    sm = Counter()
    node = RaftNode(
        args.id,
        address=args.listen,
        peers=peers,
        state_machine=sm,
        storage=SQLiteStorage(pathlib.Path(args.db), synchronous="FULL"),
        config=Config.lan(),
        max_pending=args.max_pending,
    )
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    prof: cProfile.Profile | None = None
    prof_path = ""
    watcher = asyncio.create_task(_watch_stalls(args.stall_ms / 1000)) if args.stall_ms > 0 else None
    async with node:
        _reply({"ready": args.id})
        while line := await reader.readline():
            req = json.loads(line)
            cmd = req["cmd"]
            if cmd == "leader":
                leader = await node.wait_for_leader(timeout=30)
                _reply({"leader": leader, "is_leader": node.is_leader})
            elif cmd == "usage":
                _reply(_usage(node, sm))
            elif cmd == "run":
                if not node.is_leader:
                    _reply({"error": f"{args.id} is not the leader"})
                    continue
                try:
                    _reply(await _run_workload(node, req))
                except Exception as exc:  # e.g. an older implementation without propose_many
                    _reply({"error": f"{type(exc).__name__}: {exc}"})
            elif cmd == "profile_start":
                prof, prof_path = cProfile.Profile(), req["path"]
                prof.enable()
                _reply({"ok": True})
            elif cmd == "profile_stop":
                if prof is not None:
                    prof.disable()
                    prof.dump_stats(prof_path)
                    prof = None
                _reply({"ok": True})
            elif cmd == "stop":
                break
    if watcher is not None:
        watcher.cancel()
    with contextlib.suppress(Exception):
        _reply({"stopped": args.id})


async def cpu_per_op(inflight: int, seconds: float) -> None:
    """Three members in this process on the in-memory transport and storage (no fsync, no
    encoding): print the process CPU time per committed 64-byte proposal as one JSON line.
    CPU time, unlike throughput, hardly depends on what else the machine runs."""
    from phalanx_aio.storage import MemoryStorage
    from phalanx_aio.transport.memory import MemoryNetwork

    net = MemoryNetwork()
    ids = ["a", "b", "c"]
    nodes = [
        RaftNode(
            i,
            address=f"mem://{i}",
            peers={p: f"mem://{p}" for p in ids if p != i},
            state_machine=Counter(),
            storage=MemoryStorage(i),
            config=Config.lan(),
            transport=net.transport(i),
            seed=n,
            max_pending=inflight + 1,
        )
        for n, i in enumerate(ids)
    ]
    for node in nodes:
        await node.start()
    leader = nodes[0]
    await leader.wait_for_leader(30)
    leader = next(n for n in nodes if n.is_leader)
    cmd = b"x" * 64
    clock = time.perf_counter
    stop = clock() + seconds
    ops = 0

    async def worker() -> None:
        nonlocal ops
        while clock() < stop:
            await leader.propose(cmd)
            ops += 1

    cpu0, wall0 = time.process_time(), clock()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    cpu, wall = time.process_time() - cpu0, clock() - wall0
    for node in nodes:
        await node.aclose()
    _reply({"ops_per_s": ops / wall, "cpu_us_per_op": cpu / max(ops, 1) * 1e6, "inflight": inflight})


RUNNERS = ("phalanx", "asyncio")


def run(coro: Coroutine[Any, Any, None], runner: str) -> None:
    """Run ``coro`` under ``phalanx_aio.run`` or plain ``asyncio.run`` (see the module's doc)."""
    if runner == "phalanx":
        phalanx_aio.run(coro)
    else:
        asyncio.run(coro)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--id")
    p.add_argument("--listen")
    p.add_argument("--peer", action="append", default=[])
    p.add_argument("--db")
    p.add_argument("--max-pending", type=int, default=50_000)
    p.add_argument("--log-level", default="WARNING")
    p.add_argument("--stall-ms", type=float, default=0.0, help="log event-loop stalls above this (0: off)")
    p.add_argument("--cpu-per-op", type=int, metavar="INFLIGHT", help="see cpu_per_op(); no cluster")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument(
        "--runner",
        choices=RUNNERS,
        default="phalanx",
        help="phalanx: phalanx_aio.run (uvloop, tuned GC); asyncio: asyncio.run, default GC",
    )
    a = p.parse_args()
    if a.cpu_per_op:
        run(cpu_per_op(a.cpu_per_op, a.seconds), a.runner)
    else:
        if not (a.id and a.listen and a.db):
            p.error("--id, --listen and --db are required")
        run(main(a), a.runner)
