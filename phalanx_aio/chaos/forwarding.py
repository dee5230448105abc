"""Forwarded proposals when the leader is SIGKILLed: does every one end, once, and fast?

Two members run as ``phalanx-aio serve`` processes; the third is a :class:`RaftNode` in this
process, a follower, that proposes KV puts of distinct keys at a fixed rate, each in its own
task (an open loop: proposals keep coming while the leader is dead, and are forwarded to it
until the follower notices). Once the load runs, the leader's process is SIGKILLed; the load
goes on until a new leader has served it for a while. Then every proposal's outcome is
checked against the log as this node applied it:

* none ends in :class:`~phalanx_aio.errors.Timeout` (each ends in success or a definite error);
* a success was applied exactly once, with its own result (a put's result is the key's
  previous value: none, since each key is written once);
* a :class:`~phalanx_aio.errors.NotApplied` proposal was never applied;
* nothing else was applied.

It also measures, for every proposal in flight at the kill or made before the follower knew
the next leader, how long after the kill it ended. ``tests/node/test_forward_failover.py``
runs it once; ``benchmarks/forward_failover.py`` runs it several times and reports the times.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import pathlib
import time
from collections import Counter
from dataclasses import dataclass, field

from phalanx_aio.cli.demo import LocalCluster
from phalanx_aio.core.config import Config
from phalanx_aio.errors import NotApplied, PhalanxError, Timeout
from phalanx_aio.kv.state_machine import KVCommand, KVOp, KVStateMachine, decode_command, encode_command
from phalanx_aio.node.raft_node import RaftNode
from phalanx_aio.storage.sqlite import SQLiteStorage

__all__ = ["FailoverReport", "forward_failover"]


class _CountingKV(KVStateMachine):
    """The KV state machine, counting how often each key is put."""

    def __init__(self) -> None:
        super().__init__()
        self.puts: Counter[bytes] = Counter()

    def apply(self, command: bytes) -> object:
        result = super().apply(command)
        self.puts[decode_command(command).key] += 1
        return result


@dataclass(slots=True)
class FailoverReport:
    """What :func:`forward_failover` saw."""

    proposals: int = 0
    succeeded: int = 0
    not_applied: int = 0
    unknown: int = 0
    """Outcome unknown, other than a timeout (the leader could not check an earlier copy)."""
    timeouts: int = 0
    in_flight_at_kill: int = 0
    """Proposals in flight at the kill or made before the next leader was known."""
    ended_after_kill_s: list[float] = field(default_factory=list)
    """For each of those: seconds from the kill to its outcome."""
    problems: list[str] = field(default_factory=list)
    """Broken promises: applied twice, applied although refused, a result not its own."""

    @property
    def worst_s(self) -> float:
        """The longest time from the kill to the outcome of a proposal in flight then."""
        return max(self.ended_after_kill_s, default=0.0)


async def forward_failover(
    workdir: pathlib.Path,
    *,
    rate: float = 500.0,
    before_s: float = 1.0,
    after_s: float = 3.0,
    timeout_s: float = 10.0,
) -> FailoverReport:
    """Run the scenario once in ``workdir`` (see the module's text) and report."""
    cluster = LocalCluster(3, workdir)
    me = cluster.ids[2]
    for nid in cluster.ids[:2]:
        cluster.start(nid)
    sm = _CountingKV()
    node = RaftNode(
        me,
        address=cluster.addr[me],
        peers={nid: cluster.addr[nid] for nid in cluster.ids if nid != me},
        state_machine=sm,
        storage=SQLiteStorage(workdir / f"{me}.db"),
        config=Config.lan(),
    )
    report = FailoverReport()
    outcomes: dict[bytes, object] = {}
    started: dict[bytes, float] = {}
    ended: dict[bytes, float] = {}
    kill_at: list[float] = []
    try:
        async with node:
            leader = await node.wait_for_leader(30.0)
            if leader == me:
                leader = await node.transfer_leadership(cluster.ids[0], timeout=30.0)
            tasks: set[asyncio.Task[None]] = set()

            async def one(key: bytes) -> None:
                started[key] = time.monotonic()
                cmd = encode_command(KVCommand(KVOp.PUT, key, b"v"))
                try:
                    outcomes[key] = await node.propose(cmd, timeout=timeout_s)
                except PhalanxError as exc:
                    outcomes[key] = exc
                ended[key] = time.monotonic()

            keys = itertools.count()

            async def load(seconds: float) -> None:
                t0 = time.monotonic()
                n = 0
                while (now := time.monotonic()) < t0 + seconds:
                    due = int((now - t0) * rate) + 1
                    while n < due:
                        task = asyncio.create_task(one(b"k%d" % next(keys)))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                        n += 1
                    await asyncio.sleep(1 / rate)

            await load(before_s)
            kill_at.append(time.monotonic())
            cluster.kill(leader)
            loading = asyncio.create_task(load(1e9))
            await node.wait_for_leader(30.0, exclude=leader)
            known_at = time.monotonic()
            await asyncio.sleep(after_s)
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
            await asyncio.gather(*list(tasks))
            # Everything committed so far is applied here once a new proposal of ours is.
            await node.propose(encode_command(KVCommand(KVOp.PUT, b"barrier", b"")), timeout=30.0)
            for key, t in started.items():
                if t < known_at and ended[key] > kill_at[0]:
                    report.ended_after_kill_s.append(ended[key] - kill_at[0])
            report.in_flight_at_kill = len(report.ended_after_kill_s)
    finally:
        with contextlib.suppress(Exception):
            cluster.stop_all()
    report.proposals = len(outcomes)
    for key, outcome in outcomes.items():
        applied = sm.puts[key]
        if isinstance(outcome, Timeout):
            report.timeouts += 1
        elif isinstance(outcome, NotApplied):
            report.not_applied += 1
            if applied:
                report.problems.append(f"{key!r} was refused ({outcome}) but applied {applied} times")
        elif isinstance(outcome, BaseException):
            report.unknown += 1
        else:
            report.succeeded += 1
            if applied != 1:
                report.problems.append(f"{key!r} succeeded but was applied {applied} times")
            if outcome is not None:
                report.problems.append(f"{key!r} got the result {outcome!r}, not its own (None)")
    strays = set(sm.puts) - set(outcomes) - {b"barrier"}
    if strays:
        report.problems.append(f"{len(strays)} keys applied that nobody proposed: {sorted(strays)[:3]}")
    return report
