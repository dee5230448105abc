"""One member of the benchmark cluster (started by benchmarks/cluster.py; not run by hand).

Runs a RaftNode with a counting state machine on SQLite (synchronous=FULL), then obeys JSON
lines on stdin and answers with JSON lines on stdout:

    {"cmd": "leader"}   -> {"leader": id, "is_leader": bool}
    {"cmd": "usage"}    -> {"user": s, "system": s, "applied": n}   (getrusage of this process)
    {"cmd": "run", "mode": "closed"|"open", "param": N|rate, "size": bytes, "seconds": s, "warmup": s}
                        -> {"ops": n, "window": s, "dropped": n, "errors": n, "lat_ms": [sorted sample],
                            "p50": ms, "p99": ms, "p999": ms, "max": ms}
    {"cmd": "profile_start", "path": p} / {"cmd": "profile_stop"}   (cProfile of this process)
    {"cmd": "stop"}
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import pathlib
import resource
import struct
import sys
import time
from typing import Any

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


def _pct(lat: list[float], p: float) -> float:
    return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")


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
            "p50": _pct(lat, 0.50),
            "p99": _pct(lat, 0.99),
            "p999": _pct(lat, 0.999),
            "max": lat[-1] if lat else float("nan"),
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
        await asyncio.sleep(min(0.001, max(0.0, t_start + i / rate - clock())))
    if tasks:
        await asyncio.wait(tasks, timeout=30)


async def _run_workload(node: RaftNode, req: dict[str, Any]) -> dict[str, Any]:
    cmd = b"x" * int(req["size"])
    t_start = time.perf_counter()
    warmup = float(req.get("warmup", 1.0))
    rec = _Recorder(t_start + warmup, t_start + warmup + float(req["seconds"]))
    if req["mode"] == "closed":
        await _closed(node, int(req["param"]), cmd, rec)
    else:
        await _open(node, float(req["param"]), cmd, rec, t_start)
    return rec.result()


def _usage(node: RaftNode, sm: Counter) -> dict[str, Any]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    st = node.status()
    return {
        "user": ru.ru_utime,
        "system": ru.ru_stime,
        "applied": sm.value,
        "term": st.term,
        "leader": st.leader,
    }


def _reply(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main(args: argparse.Namespace) -> None:
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
                _reply(await _run_workload(node, req))
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
    with contextlib.suppress(Exception):
        _reply({"stopped": args.id})


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--id", required=True)
    p.add_argument("--listen", required=True)
    p.add_argument("--peer", action="append", default=[])
    p.add_argument("--db", required=True)
    p.add_argument("--max-pending", type=int, default=50_000)
    phalanx_aio.run(main(p.parse_args()))
