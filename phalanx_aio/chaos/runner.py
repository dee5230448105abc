"""One chaos run, end to end: cluster, clients, faults, healing, and every check.

:func:`run_chaos` starts a :class:`~phalanx_aio.chaos.cluster.ChaosCluster`, runs the recorded
client workload (:mod:`phalanx_aio.chaos.workload`) for ``duration`` seconds while a
:class:`~phalanx_aio.chaos.faults.Nemesis` injects a seeded plan of faults, then:

1. stops the clients and heals every fault;
2. waits (up to ``converge_timeout``) until every member runs, is a voter, and has applied
   everything the leader has committed: the convergence time is reported;
3. reads every shared key once more through the cluster (linearizable reads, added to the
   history) and every acknowledged write-once key: one that does not read back exactly is an
   acknowledged write lost;
4. reads every key ever used on every member, each member answering from its own applied state,
   and compares the digests: they must be identical;
5. checks the history for linearizability, key by key.

The :class:`ChaosReport` has all the figures; :meth:`ChaosReport.save` writes the history (JSON
lines), the faults, the report and a timeline plot into a directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import pathlib
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from phalanx_aio.chaos.cluster import ChaosCluster, NodeState
from phalanx_aio.chaos.faults import DEFAULT_FAULTS, FaultKind, FaultStep, FaultWindow, Nemesis, plan_faults
from phalanx_aio.chaos.linearizability import (
    CheckResult,
    Operation,
    OpKind,
    Outcome,
    Verdict,
    check_history,
    write_history,
)
from phalanx_aio.chaos.workload import HistoryRecorder, WorkloadConfig, record, run_clients, shared_key
from phalanx_aio.errors import PhalanxError
from phalanx_aio.kv.client import KVClient
from phalanx_aio.kv.messages import (
    GetRequest,
    GetResponse,
    ReadConsistency,
    RequestHeader,
)

__all__ = ["ChaosConfig", "ChaosReport", "read_member_state", "run_chaos"]

log = logging.getLogger("phalanx_aio.chaos")


@dataclass(frozen=True, slots=True)
class ChaosConfig:
    """The parameters of one run."""

    nodes: int = 3
    duration: float = 60.0
    """Seconds of load under faults (healing and checks come after)."""
    seed: int = 0
    faults: tuple[FaultKind, ...] = DEFAULT_FAULTS
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    plan: tuple[FaultStep, ...] | None = None
    """An explicit plan (default: :func:`~phalanx_aio.chaos.faults.plan_faults` from the seed)."""
    step_seconds: tuple[float, float] = (2.0, 5.0)
    gap_seconds: tuple[float, float] = (1.0, 2.5)
    converge_timeout: float = 30.0
    """The bound on convergence after healing, in seconds."""
    preset: str = "lan"
    max_states_per_key: int | None = 2_000_000
    workdir: pathlib.Path | None = None
    """Where the members' data and logs go (default: a temporary directory, removed after)."""
    keep_workdir: bool = False

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ValueError("a chaos run needs at least one member")
        if not self.duration > 0 or not self.converge_timeout > 0:
            raise ValueError("duration and converge_timeout must be positive")
        for k in self.faults:
            FaultKind(k)

    def make_plan(self) -> list[FaultStep]:
        """The fault plan of this run (the explicit one, or the seeded one)."""
        if self.plan is not None:
            return list(self.plan)
        return plan_faults(
            self.seed,
            self.duration,
            kinds=self.faults,
            step_seconds=self.step_seconds,
            gap_seconds=self.gap_seconds,
        )


@dataclass(slots=True)
class ChaosReport:
    """Everything one run measured. :attr:`ok` is the pass criterion."""

    config: ChaosConfig
    history: list[Operation] = field(default_factory=list)
    faults: list[FaultWindow] = field(default_factory=list)
    fault_errors: list[str] = field(default_factory=list)
    check: CheckResult | None = None
    lost_writes: list[str] = field(default_factory=list)
    """Acknowledged write-once keys that did not read back with the value written."""
    acknowledged_once: int = 0
    failed_but_applied: list[str] = field(default_factory=list)
    """Write-once keys whose put raised ``NotApplied`` but whose value is in a member's state:
    a broken promise of ``KVClient`` (must be empty)."""
    unknown_once: int = 0
    unknown_once_applied: int = 0
    """Of the write-once puts of unknown outcome, how many did take effect."""
    cas_not_swapped: int = 0
    """Compare-and-sets answered "not swapped" (counted among the failed: they had no effect)."""
    converged: bool = False
    convergence_seconds: float | None = None
    """From the end of healing until every member had applied the leader's commit index."""
    digests: dict[str, str] = field(default_factory=dict)
    """Each member's digest of every key's value, read from its own applied state."""
    differing_keys: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    check_seconds: float = 0.0
    workdir: str = ""
    error: str | None = None
    """Why the run could not finish its checks, if it could not."""
    final_status: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Each member's last status after healing (role, term, commit, applied, last index)."""
    exits: list[tuple[float, str, int]] = field(default_factory=list)
    """Member processes that exited by themselves: (run time, id, exit status). Status 2 is a
    configuration error (a ``--join`` whose contact was down); anything else is a crash."""
    leaders_by_term: dict[int, set[str]] = field(default_factory=dict)
    """Every member seen claiming leadership, by term (sampled from status polls)."""
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds spent in each phase: start, load, heal, converge, final-reads, state-reads, check."""

    @property
    def identical(self) -> bool:
        """Whether every member's applied state is the same."""
        return bool(self.digests) and len(set(self.digests.values())) == 1

    @property
    def two_leaders(self) -> dict[int, list[str]]:
        """Terms in which more than one member was seen leading (Raft's Election Safety broken)."""
        return {t: sorted(ls) for t, ls in sorted(self.leaders_by_term.items()) if len(ls) > 1}

    @property
    def crashes(self) -> list[tuple[float, str, int]]:
        """Member processes that exited by themselves with a status other than 2."""
        return [e for e in self.exits if e[2] != 2]

    @property
    def counts(self) -> dict[str, int]:
        """How many operations ended ok, failed and unknown."""
        out = {str(o): 0 for o in Outcome}
        for op in self.history:
            out[str(op.outcome)] += 1
        return out

    @property
    def faults_by_kind(self) -> dict[str, int]:
        """How many faults of each kind were injected."""
        return dict(sorted(Counter(str(w.kind) for w in self.faults).items()))

    @property
    def verdict(self) -> Verdict | None:
        """The linearizability verdict (``None`` if the history was not checked)."""
        return self.check.verdict if self.check is not None else None

    @property
    def ok(self) -> bool:
        """Linearizable, no acknowledged write lost, converged, identical state, one leader per
        term, no error."""
        return (
            self.error is None
            and not self.two_leaders
            and not self.crashes
            and self.verdict is Verdict.LINEARIZABLE
            and not self.lost_writes
            and not self.failed_but_applied
            and self.converged
            and self.identical
        )

    def to_json(self) -> dict[str, Any]:
        """The figures as a JSON-compatible dict (without the history)."""
        cfg = self.config
        return {
            "ok": self.ok,
            "seed": cfg.seed,
            "nodes": cfg.nodes,
            "duration": cfg.duration,
            "elapsed": round(self.elapsed, 2),
            "ops": len(self.history),
            "outcomes": self.counts,
            "ops_checked": self.check.ops_checked if self.check else 0,
            "verdict": str(self.verdict) if self.verdict else None,
            "violations": [r.explain() for r in self.check.violations] if self.check else [],
            "check_seconds": round(self.check_seconds, 3),
            "faults_by_kind": self.faults_by_kind,
            "fault_errors": self.fault_errors,
            "cas_not_swapped": self.cas_not_swapped,
            "acknowledged_write_once": self.acknowledged_once,
            "lost_writes": self.lost_writes,
            "failed_but_applied": self.failed_but_applied,
            "unknown_write_once": self.unknown_once,
            "unknown_write_once_applied": self.unknown_once_applied,
            "converged": self.converged,
            "convergence_seconds": None
            if self.convergence_seconds is None
            else round(self.convergence_seconds, 3),
            "digests": self.digests,
            "identical": self.identical,
            "final_status": self.final_status,
            "exits": [list(e) for e in self.exits],
            "terms_seen": len(self.leaders_by_term),
            "two_leaders": {str(t): ls for t, ls in self.two_leaders.items()},
            "differing_keys": self.differing_keys[:20],
            "phases": {k: round(v, 2) for k, v in self.phases.items()},
            "workdir": self.workdir,
            "error": self.error,
        }

    def summary(self) -> str:
        """A short multi-line summary."""
        c = self.counts
        conv = f"{self.convergence_seconds:.2f} s" if self.convergence_seconds is not None else "no"
        lines = [
            f"seed {self.config.seed}, {self.config.nodes} nodes, {self.elapsed:.0f} s: "
            f"{'OK' if self.ok else 'FAILED'}",
            f"  ops {len(self.history)} (ok {c['ok']}, failed {c['failed']} of which cas not swapped"
            f" {self.cas_not_swapped}, unknown {c['unknown']}),"
            f" checked {self.check.ops_checked if self.check else 0}: {self.verdict}",
            f"  faults {sum(self.faults_by_kind.values())}: "
            + ", ".join(f"{k} {v}" for k, v in self.faults_by_kind.items()),
            f"  write-once: acknowledged {self.acknowledged_once}, lost {len(self.lost_writes)};"
            f" refused but applied {len(self.failed_but_applied)};"
            f" unknown {self.unknown_once} (applied {self.unknown_once_applied})",
            f"  converged {conv}; identical state {self.identical}; terms seen {len(self.leaders_by_term)},"
            f" with two leaders {len(self.two_leaders)}",
        ]
        if self.two_leaders:
            lines.append(f"  two leaders in one term: {self.two_leaders}")
        if self.exits:
            lines.append(f"  member processes that exited by themselves (time, id, status): {self.exits}")
        if self.error:
            lines.append(f"  error: {self.error}")
        if self.check is not None and not self.check.ok:
            lines.append(self.check.explain())
        if self.differing_keys:
            lines.append(f"  keys that differ between members: {', '.join(self.differing_keys[:10])}")
        return "\n".join(lines)

    def save(self, out: str | pathlib.Path, *, plot: bool = True) -> dict[str, pathlib.Path]:
        """Write ``history.jsonl``, ``faults.json``, ``report.json`` and (if ``plot`` and
        matplotlib is installed) ``timeline.png`` into ``out``; return the paths written."""
        d = pathlib.Path(out)
        d.mkdir(parents=True, exist_ok=True)
        paths = {"history": d / "history.jsonl", "faults": d / "faults.json", "report": d / "report.json"}
        write_history(paths["history"], sorted(self.history, key=lambda o: o.op_id))
        paths["faults"].write_text(json.dumps([w.to_json() for w in self.faults], indent=1) + "\n")
        paths["report"].write_text(json.dumps(self.to_json(), indent=1) + "\n")
        if plot:
            from phalanx_aio.chaos.timeline import plot_timeline

            with contextlib.suppress(ImportError):
                paths["timeline"] = plot_timeline(
                    self.history,
                    self.faults,
                    d / "timeline.png",
                    title=f"seed {self.config.seed}, {self.config.nodes} nodes",
                )
        return paths


async def read_member_state(
    address: str,
    keys: Iterable[str],
    *,
    cluster_id: str = "phalanx",
    timeout: float = 10.0,
    concurrency: int = 64,
) -> dict[str, str | None]:
    """Every key's value as member ``address`` has applied it (stale reads answered by that
    member itself, never redirected; ``concurrency`` at a time). Raises :class:`PhalanxError`
    if it does not answer."""
    todo = list(keys)
    out: dict[str, str | None] = {}
    async with KVClient([address], cluster_id=cluster_id, timeout=timeout) as kv:

        async def one(key: str) -> str | None:
            # KVClient.get follows the leader; a state comparison needs this member's own answer,
            # which only a call pinned to one endpoint gives (as KVClient.status does).
            request = GetRequest(RequestHeader(cluster_id), key.encode(), ReadConsistency.STALE)
            resp: GetResponse = await kv._call(lambda _h: request, 0, endpoint=address)  # 0: a read
            return None if resp.value is None else resp.value.decode()

        for lo in range(0, len(todo), concurrency):
            chunk = todo[lo : lo + concurrency]
            values = await asyncio.gather(*(one(k) for k in chunk))
            out.update(zip(chunk, values, strict=True))
    return out


def _digest(state: dict[str, str | None]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        v = state[k]
        h.update(json.dumps([k, v]).encode())
    return h.hexdigest()[:16]


async def _converge(cluster: ChaosCluster, report: ChaosReport, timeout: float) -> float | None:
    """Wait until every member runs, is a voter and has applied the leader's commit index;
    return how long that took (``None``: not within ``timeout``). The last statuses seen go to
    ``report.final_status``."""
    t0 = time.monotonic()
    want = set(cluster.ids)
    while time.monotonic() - t0 < timeout:
        found = await cluster.leader()
        if found is not None:
            sts = await cluster.statuses()
            report.final_status = {
                nid: {
                    "role": s.role,
                    "term": s.term,
                    "leader": s.leader_id,
                    "commit": s.commit_index,
                    "applied": s.applied_index,
                    "last": s.last_index,
                }
                if s is not None
                else {"role": "no answer"}
                for nid, s in sts.items()
            }
            lead = sts.get(found[0])
            if lead is not None and all(s is not None for s in sts.values()):
                voters = {m.node_id for m in lead.members if not m.learner}
                if voters == want and all(
                    s is not None and s.applied_index >= lead.commit_index and s.term == lead.term
                    for s in sts.values()
                ):
                    return time.monotonic() - t0
        await asyncio.sleep(0.2)
    return None


async def _watch_leaders(cluster: ChaosCluster, report: ChaosReport, stop: asyncio.Event) -> None:
    """Sample every member's status until ``stop``; note who claims to lead in which term (and
    reap member processes that exited by themselves)."""
    while not stop.is_set():
        cluster.reap()
        for nid, st in (await cluster.statuses()).items():
            if st is not None and st.role == "leader":
                report.leaders_by_term.setdefault(st.term, set()).add(nid)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)


async def _final_reads(
    cluster: ChaosCluster, rec: HistoryRecorder, report: ChaosReport, shared: Sequence[str]
) -> None:
    async with KVClient(cluster.endpoints, cluster_id=cluster.cluster_id, timeout=15.0) as kv:
        for key in shared:
            await record(rec, kv, "final", OpKind.GET, key)
        items = sorted(rec.acked_once.items())
        for lo in range(0, len(items), 64):
            chunk = items[lo : lo + 64]
            got = await asyncio.gather(*(kv.get(k) for k, _ in chunk), return_exceptions=True)
            for (key, value), read in zip(chunk, got, strict=True):
                if isinstance(read, BaseException):
                    raise PhalanxError(f"final read of {key!r} failed: {read}")
                if read is None or read.decode() != value:
                    report.lost_writes.append(key)


async def run_chaos(config: ChaosConfig) -> ChaosReport:
    """Run one chaos run (see the module docstring) and return its report. Every process is
    killed before this returns, whatever happens."""
    report = ChaosReport(config)
    tmp = config.workdir is None
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="phalanx-chaos-")) if tmp else pathlib.Path(config.workdir)  # type: ignore[arg-type]
    report.workdir = str(workdir)
    started = last = time.monotonic()

    def phase(name: str) -> None:
        nonlocal last
        now = time.monotonic()
        report.phases[name] = now - last
        last = now

    cluster = ChaosCluster(config.nodes, workdir, preset=config.preset)
    watcher: asyncio.Task[None] | None = None
    try:
        await cluster.start()
        phase("start")
        rec = HistoryRecorder()
        nemesis = Nemesis(cluster, seed=config.seed, clock=rec.now)
        stop = asyncio.Event()
        watching = asyncio.Event()
        watcher = asyncio.create_task(_watch_leaders(cluster, report, watching))
        clients = asyncio.create_task(
            run_clients(
                rec,
                cluster.endpoints,
                stop,
                cluster_id=cluster.cluster_id,
                config=config.workload,
                seed=config.seed,
            )
        )
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(nemesis.run(config.make_plan()), config.duration + 60)
            rest = config.duration - rec.now()
            if rest > 0:
                await asyncio.sleep(rest)
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(clients, max(config.workload.timeouts) + 30)
            if not clients.done():
                clients.cancel()
                with contextlib.suppress(BaseException):
                    await clients
        phase("load")
        await nemesis.heal(timeout=config.converge_timeout)
        report.faults = nemesis.windows
        report.fault_errors = nemesis.errors
        phase("heal")
        waited = await _converge(cluster, report, config.converge_timeout)
        watching.set()
        await watcher
        phase("converge")
        report.converged = waited is not None
        report.convergence_seconds = waited
        shared = [shared_key(i) for i in range(config.workload.shared_keys)]
        try:
            await _final_reads(cluster, rec, report, shared)
            report.acknowledged_once = len(rec.acked_once)
            phase("final-reads")
            keys = sorted(rec.attempted_keys)
            running = [n for n in cluster.ids if cluster.state[n] is NodeState.RUNNING]
            read = await asyncio.gather(
                *(
                    read_member_state(cluster.addresses[n], keys, cluster_id=cluster.cluster_id)
                    for n in running
                )
            )
            states = dict(zip(running, read, strict=True))
            report.digests = {nid: _digest(s) for nid, s in states.items()}
            report.differing_keys = [k for k in keys if len({s.get(k) for s in states.values()}) > 1]
            report.failed_but_applied = sorted(
                k for k, v in rec.failed_once.items() if any(s.get(k) == v for s in states.values())
            )
            report.unknown_once = len(rec.unknown_once)
            report.unknown_once_applied = sum(
                any(s.get(k) == v for s in states.values()) for k, v in rec.unknown_once.items()
            )
            phase("state-reads")
        except PhalanxError as exc:
            report.error = f"final checks failed: {exc}"
        report.history = list(rec.ops)
        cluster.reap()
        report.exits = [(round(t - rec.origin, 3), nid, code) for t, nid, code in cluster.exits]
        report.cas_not_swapped = rec.cas_not_swapped
        t0 = time.monotonic()
        report.check = await asyncio.to_thread(
            check_history, report.history, max_states_per_key=config.max_states_per_key
        )
        report.check_seconds = time.monotonic() - t0
        phase("check")
    except (PhalanxError, OSError, TimeoutError, RuntimeError) as exc:
        report.error = f"{type(exc).__name__}: {exc}"
    finally:
        if watcher is not None and not watcher.done():
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await watcher
        await cluster.aclose()
        report.elapsed = time.monotonic() - started
        if tmp and not config.keep_workdir and report.ok:
            shutil.rmtree(workdir, ignore_errors=True)
    return report
