"""One member of the large-state benchmark (started by benchmarks/large_state.py; not run by hand).

Runs a RaftNode with a KVStateMachine on SQLite (synchronous=FULL) and the LAN preset, watches
itself, and obeys JSON lines on stdin, answering with JSON lines on stdout:

    {"cmd": "leader"}                  -> {"leader": id, "is_leader": bool}
    {"cmd": "reset"}                   -> {"ok": true}      (starts a new measuring window)
    {"cmd": "stats"}                   -> what the window saw (see _Watch.stats)
    {"cmd": "load", "first": i, "n": n, "batch": b, "value": bytes}
                                       -> {"seconds": s}    (leader only: PUTs of n keys)
    {"cmd": "arm", "margin": bytes}    -> {"log_bytes": n}  (next snapshot due after margin bytes)
    {"cmd": "put", "key": str, "value_size": n} -> {"ok": true}
    {"cmd": "stop"}

What it watches, from the start of the window:
- the largest gap between two message batches received from each peer (the transport hands
  batches to ``RaftNode.on_messages`` on this node's loop, so a stall here shows up as a gap,
  as it would to the node's election timer); the first batch of the window starts the count;
- the largest event-loop stall (a task sleeping 10 ms, its overshoot);
- elections started, term changes, leader changes (node events);
- snapshots taken and restored (time, index, size);
- the longest collection of the cyclic garbage collector (and its generation).
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
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import phalanx_aio
from phalanx_aio import Config, RaftNode, SQLiteStorage
from phalanx_aio.kv import KVCommand, KVOp, KVStateMachine, encode_command
from phalanx_aio.node.events import (
    ElectionStarted,
    LeaderChanged,
    NodeEvent,
    SnapshotRestored,
    SnapshotTaken,
    TermChanged,
)


class NoLaterKV(KVStateMachine):
    """KVStateMachine without ``snapshot_later``: the node encodes the snapshot on its loop."""

    def snapshot_later(self) -> Callable[[], bytes] | None:  # type: ignore[override]
        return None

    def snapshot(self) -> bytes:
        return KVStateMachine.snapshot_later(self)()  # the copy and the encoding, on the loop


class _Watch:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        now = time.perf_counter()
        self.t0 = now
        self.last: dict[str, float] = {}
        self.max_gap: dict[str, float] = {}
        self.max_gap_at: dict[str, float] = {}
        self.max_stall = 0.0
        self.max_stall_at = 0.0
        self.elections = 0
        self.term_changes = 0
        self.leader_changes: list[Any] = []
        self.snapshots: list[dict[str, Any]] = []
        self.max_gc = 0.0
        self.max_gc_gen = -1
        self.max_gc_at = 0.0
        self._gc_start = 0.0

    def gc(self, phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._gc_start = now
        elif now - self._gc_start > self.max_gc:
            self.max_gc, self.max_gc_gen = now - self._gc_start, info["generation"]
            self.max_gc_at = self._gc_start - self.t0

    def messages(self, sender: str) -> None:
        now = time.perf_counter()
        prev = self.last.get(sender)
        self.last[sender] = now
        if prev is not None and now - prev > self.max_gap.get(sender, 0.0):
            self.max_gap[sender] = now - prev
            self.max_gap_at[sender] = prev - self.t0

    def event(self, ev: NodeEvent) -> None:
        at = round(time.perf_counter() - self.t0, 3)
        if isinstance(ev, ElectionStarted):
            self.elections += 1
        elif isinstance(ev, TermChanged):
            self.term_changes += 1
        elif isinstance(ev, LeaderChanged):
            self.leader_changes.append([at, ev.previous, ev.leader])
        elif isinstance(ev, SnapshotTaken):
            self.snapshots.append({"kind": "taken", "at": at, "index": ev.index, "size": ev.size})
        elif isinstance(ev, SnapshotRestored):
            self.snapshots.append({"kind": "restored", "at": at, "index": ev.index, "source": ev.source})

    async def watch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(0.01)
            late = loop.time() - t0 - 0.01
            if late > self.max_stall:
                self.max_stall = late
                self.max_stall_at = t0 - (loop.time() - time.perf_counter()) - self.t0

    def stats(self, node: RaftNode, sm: KVStateMachine) -> dict[str, Any]:
        st = node.status()
        return {
            "id": node.id,
            "window": time.perf_counter() - self.t0,
            "term": st.term,
            "leader": st.leader,
            "role": st.role,
            "applied": st.applied,
            "first_index": st.first_index,
            "keys": len(sm.data),
            "max_gap_ms": {p: round(g * 1000, 1) for p, g in self.max_gap.items()},
            "max_gap_at": {p: round(t, 3) for p, t in self.max_gap_at.items()},
            "max_stall_ms": round(self.max_stall * 1000, 1),
            "max_stall_at": round(self.max_stall_at, 3),
            "max_gc_ms": round(self.max_gc * 1000, 1),
            "max_gc_generation": self.max_gc_gen,
            "max_gc_at": round(self.max_gc_at, 3),
            "elections": self.elections,
            "term_changes": self.term_changes,
            "leader_changes": self.leader_changes,
            "snapshots": self.snapshots,
        }


def _reply(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _key(i: int) -> bytes:
    return b"k%08d" % i


async def _load(node: RaftNode, first: int, n: int, batch: int, value: bytes) -> float:
    t0 = time.perf_counter()
    inflight: set[asyncio.Task[Any]] = set()
    for start in range(first, first + n, batch):
        cmds = [
            encode_command(KVCommand(KVOp.PUT, _key(i), value))
            for i in range(start, min(first + n, start + batch))
        ]
        if len(inflight) >= 4:
            done, inflight = await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                t.result()
        inflight.add(asyncio.ensure_future(node.propose_many(cmds, timeout=120)))
    for t in inflight:
        for r in await t:
            if isinstance(r, BaseException):
                raise r
    return time.perf_counter() - t0


async def main(args: argparse.Namespace) -> None:
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s.%(msecs)03d %(name)s %(levelname)s %(message)s",
        datefmt="%X",
    )
    peers = dict(p.split("=", 1) for p in args.peer)
    sm = KVStateMachine() if args.snapshot_later == "on" else NoLaterKV()
    watch = _Watch()
    gc.callbacks.append(watch.gc)
    node = RaftNode(
        args.id,
        address=args.listen,
        peers=peers,
        state_machine=sm,
        storage=SQLiteStorage(pathlib.Path(args.db), synchronous="FULL"),
        config=Config.lan(),
        snapshot_every=10**9,
        snapshot_bytes=args.snapshot_bytes,
        max_pending=200_000,
        default_timeout=120,
        on_event=watch.event,
    )
    # Timestamp every batch of messages the transport delivers (on this node's loop).
    deliver = node.on_messages

    def on_messages(sender: str, messages: Sequence[Any]) -> None:
        watch.messages(sender)
        deliver(sender, messages)

    node.on_messages = on_messages  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    watcher = asyncio.create_task(watch.watch_loop())
    prof = cProfile.Profile()
    if args.profile_all:  # diagnostics: the loop's thread from start (a restarted member)
        prof.enable()
    async with node:
        _reply({"ready": args.id})
        while line := await reader.readline():
            req = json.loads(line)
            cmd = req["cmd"]
            if cmd == "leader":
                leader = await node.wait_for_leader(timeout=30)
                _reply({"leader": leader, "is_leader": node.is_leader})
            elif cmd == "reset":
                watch.reset()
                _reply({"ok": True})
            elif cmd == "stats":
                _reply(watch.stats(node, sm))
            elif cmd == "load":
                secs = await _load(node, req["first"], req["n"], req["batch"], b"v" * req["value"])
                _reply({"seconds": secs})
            elif cmd == "arm":
                # Benchmark only: the next snapshot becomes due once ``margin`` more bytes of
                # commands are applied here (the node's own threshold, which it otherwise sets
                # from snapshot_bytes; the snapshot is then taken by the node's usual path).
                # This lets one PUT trigger it on every member at the same moment.
                node._log_bytes_due = node.log_bytes + req["margin"]
                _reply({"log_bytes": node.log_bytes})
            elif cmd == "put":
                await node.propose(
                    encode_command(KVCommand(KVOp.PUT, req["key"].encode(), b"x" * req["value_size"]))
                )
                _reply({"ok": True})
            elif cmd == "profile_start":  # diagnostics: cProfile of the loop's thread
                prof = cProfile.Profile()
                prof.enable()
                _reply({"ok": True})
            elif cmd == "profile_stop":
                prof.disable()
                prof.dump_stats(req["path"])
                _reply({"ok": True})
            elif cmd == "stop":
                break
    if args.profile_all:
        prof.disable()
        prof.dump_stats(args.profile_all)
    watcher.cancel()
    with contextlib.suppress(Exception):
        _reply({"stopped": args.id})


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--id", required=True)
    p.add_argument("--listen", required=True)
    p.add_argument("--peer", action="append", default=[])
    p.add_argument("--db", required=True)
    p.add_argument("--snapshot-later", choices=["on", "off"], default="on")
    p.add_argument("--snapshot-bytes", type=int, required=True)
    p.add_argument("--log-level", default="WARNING")
    p.add_argument("--profile-all", metavar="PATH", help="cProfile the loop's thread from start to stop")
    phalanx_aio.run(main(p.parse_args()))
