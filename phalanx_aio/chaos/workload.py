"""Concurrent KV clients that record every operation into a history.

Each client of :func:`run_clients` is a :class:`~phalanx_aio.kv.client.KVClient` of its own (its
own write session) that loops until told to stop, choosing by a seeded random generator among:

* on a small set of *shared* keys (contended on purpose): ``put`` of a unique value, a
  linearizable ``get``, a ``cas`` from the last value the client saw to a unique value, and a
  rare ``delete``;
* on *write-once* keys (``u<client>-<n>``): one ``put`` each. At the end every acknowledged one
  must read back exactly; one that does not is an acknowledged write lost.

Every call is recorded by a :class:`HistoryRecorder` as an
:class:`~phalanx_aio.chaos.linearizability.Operation` with its call time, return time and outcome,
following :class:`~phalanx_aio.kv.client.KVClient`'s rules: a value means it took effect exactly
once; :class:`~phalanx_aio.errors.NotApplied` means it certainly did not; anything else (a
timeout, :class:`~phalanx_aio.errors.OutcomeUnknown`, a lost connection) means unknown.

``KVClient.cas`` returns whether it swapped, not the value it found. A swap is recorded as a cas
that found ``expected``; a cas that did not swap changed nothing and told only that the value was
not ``expected``, which the model cannot express, so it is recorded as ``failed`` (no effect) and
the checker drops it. That is sound, and gets already constrain reads.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from phalanx_aio.chaos.linearizability import Operation, OpKind, Outcome
from phalanx_aio.errors import NotApplied
from phalanx_aio.kv.client import KVClient

__all__ = ["WRITE_ONCE_PREFIX", "HistoryRecorder", "WorkloadConfig", "record", "run_clients", "shared_key"]

WRITE_ONCE_PREFIX = "u"
"""Write-once keys are named ``u<client>-<n>``; shared keys ``k<i>``."""


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    """The client workload.

    Weights are relative; ``write_once`` is the weight of a put to a fresh write-once key.
    """

    clients: int = 6
    shared_keys: int = 4
    timeouts: tuple[float, ...] = (5.0, 1.0)
    """The deadline of one call (``KVClient(timeout=...)``), retries included, by client:
    client ``c`` uses ``timeouts[c % len(timeouts)]``. Short ones, about an election timeout,
    give up during failovers and leave writes of unknown outcome."""
    put: float = 3.0
    get: float = 3.0
    cas: float = 2.0
    delete: float = 0.3
    write_once: float = 2.0
    think: float = 0.0
    """Seconds a client waits between two operations."""

    def __post_init__(self) -> None:
        if self.clients < 1 or self.shared_keys < 1:
            raise ValueError("a workload needs at least one client and one shared key")
        if not self.timeouts or min(self.timeouts) <= 0 or self.think < 0:
            raise ValueError("timeouts must be positive (at least one) and think non-negative")
        weights = (self.put, self.get, self.cas, self.delete, self.write_once)
        if min(weights) < 0 or sum(weights) <= 0:
            raise ValueError("operation weights must be non-negative and not all zero")


@dataclass(slots=True)
class HistoryRecorder:
    """Collects operations with times relative to ``origin`` (a ``time.monotonic()`` reading)."""

    origin: float = field(default_factory=time.monotonic)
    ops: list[Operation] = field(default_factory=list)
    """Every finished operation, in the order they finished."""
    acked_once: dict[str, str] = field(default_factory=dict)
    """Write-once keys whose put was acknowledged, with the value written."""
    attempted_keys: set[str] = field(default_factory=set)
    """Every key any operation was called on."""
    failed_once: dict[str, str] = field(default_factory=dict)
    """Write-once keys whose put certainly failed (``NotApplied``): they must stay absent."""
    unknown_once: dict[str, str] = field(default_factory=dict)
    """Write-once keys whose put had an unknown outcome."""
    cas_not_swapped: int = 0
    """Compare-and-sets that answered "not swapped" (recorded as failed: no effect)."""
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def now(self) -> float:
        """Seconds since ``origin``."""
        return time.monotonic() - self.origin

    def next_id(self) -> int:
        """A fresh operation id."""
        return next(self._ids)

    def add(self, op: Operation) -> None:
        """Record a finished operation."""
        self.ops.append(op)
        self.attempted_keys.add(op.key)
        if op.kind is OpKind.PUT and op.key.startswith(WRITE_ONCE_PREFIX):
            assert op.value is not None
            if op.outcome is Outcome.OK:
                self.acked_once[op.key] = op.value
            elif op.outcome is Outcome.FAILED:
                self.failed_once[op.key] = op.value
            else:
                self.unknown_once[op.key] = op.value

    def counts(self) -> dict[str, int]:
        """How many operations ended ok, failed and unknown."""
        out = {str(o): 0 for o in Outcome}
        for op in self.ops:
            out[str(op.outcome)] += 1
        return out


def shared_key(i: int) -> str:
    """The name of shared key ``i``."""
    return f"k{i}"


async def record(
    rec: HistoryRecorder,
    kv: KVClient,
    client: int | str,
    kind: OpKind,
    key: str,
    *,
    value: str | None = None,
    expected: str | None = None,
) -> Operation:
    """Run one operation on ``kv``, record it in ``rec`` and return it."""
    op_id = rec.next_id()
    call = rec.now()
    outcome = Outcome.OK
    result: str | bool | None = None
    try:
        if kind is OpKind.PUT:
            assert value is not None
            await kv.put(key, value)
        elif kind is OpKind.GET:
            got = await kv.get(key)
            result = None if got is None else got.decode()
        elif kind is OpKind.DELETE:
            result = await kv.delete(key)
        else:
            assert value is not None
            if await kv.cas(key, expected, value):
                result = expected
            else:
                outcome = Outcome.FAILED  # no effect, and the value found is not reported
                rec.cas_not_swapped += 1
    except NotApplied:
        outcome = Outcome.FAILED
    except asyncio.CancelledError:
        outcome = Outcome.UNKNOWN
        rec.add(_op(op_id, kind, key, call, None, outcome, value, expected, None, client))
        raise
    except Exception:  # OutcomeUnknown, a lost connection, anything: the effect is unknown
        outcome = Outcome.UNKNOWN
    ret = rec.now()
    op = _op(op_id, kind, key, call, ret, outcome, value, expected, result, client)
    rec.add(op)
    return op


def _op(
    op_id: int,
    kind: OpKind,
    key: str,
    call: float,
    ret: float | None,
    outcome: Outcome,
    value: str | None,
    expected: str | None,
    result: str | bool | None,
    client: int | str,
) -> Operation:
    if outcome is not Outcome.OK:
        result = None
    return Operation(op_id, kind, key, call, ret, outcome, value, expected, result, client)


async def _client(
    rec: HistoryRecorder,
    endpoints: Sequence[str],
    cluster_id: str,
    cfg: WorkloadConfig,
    client: int,
    rng: random.Random,
    stop: asyncio.Event,
) -> None:
    kinds = ["put", "get", "cas", "delete", "once"]
    weights = [cfg.put, cfg.get, cfg.cas, cfg.delete, cfg.write_once]
    seen: dict[str, str | None] = {}
    n = 0
    timeout = cfg.timeouts[client % len(cfg.timeouts)]
    async with KVClient(endpoints, cluster_id=cluster_id, timeout=timeout) as kv:
        while not stop.is_set():
            what = rng.choices(kinds, weights)[0]
            key = shared_key(rng.randrange(cfg.shared_keys))
            n += 1
            value = f"c{client}-{n}"
            if what == "once":
                await record(rec, kv, client, OpKind.PUT, f"{WRITE_ONCE_PREFIX}{client}-{n}", value=value)
            elif what == "put":
                op = await record(rec, kv, client, OpKind.PUT, key, value=value)
                if op.outcome is Outcome.OK:
                    seen[key] = value
            elif what == "get":
                op = await record(rec, kv, client, OpKind.GET, key)
                if op.outcome is Outcome.OK:
                    seen[key] = op.result if isinstance(op.result, str) else None
            elif what == "cas":
                op = await record(rec, kv, client, OpKind.CAS, key, value=value, expected=seen.get(key))
                if op.outcome is Outcome.OK:
                    seen[key] = value
            else:
                op = await record(rec, kv, client, OpKind.DELETE, key)
                if op.outcome is Outcome.OK:
                    seen[key] = None
            if cfg.think:
                await asyncio.sleep(cfg.think)


async def run_clients(
    rec: HistoryRecorder,
    endpoints: Sequence[str],
    stop: asyncio.Event,
    *,
    cluster_id: str = "phalanx",
    config: WorkloadConfig | None = None,
    seed: int = 0,
) -> None:
    """Run ``config.clients`` clients against ``endpoints`` until ``stop`` is set, recording into
    ``rec``. Each client's choices come from ``random.Random`` seeded by ``seed`` and its number."""
    cfg = config or WorkloadConfig()
    tasks = [
        asyncio.create_task(
            _client(rec, endpoints, cluster_id, cfg, c, random.Random(f"{seed}/{c}"), stop),
            name=f"chaos-client-{c}",
        )
        for c in range(cfg.clients)
    ]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
