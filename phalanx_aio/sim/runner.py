"""Seeded random runs: a workload and a fault schedule over a :class:`Cluster`, then a liveness
phase that heals everything and demands convergence.

``run(SimOptions(seed=...))`` is what ``phalanx-aio sim`` and the seed-sweep tests call. A
violation propagates as :class:`~phalanx_aio.sim.checker.SafetyViolation` with the command that
replays it attached (:func:`replay_command`).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from phalanx_aio.core.config import Config
from phalanx_aio.core.membership import ConfChange, ConfChangeType
from phalanx_aio.core.raft import Role
from phalanx_aio.core.types import Entry
from phalanx_aio.errors import PhalanxError
from phalanx_aio.sim.checker import SafetyViolation
from phalanx_aio.sim.cluster import Cluster, RaftFactory, SimNode
from phalanx_aio.sim.network import NetworkOptions, RegionLatency, UniformLatency

__all__ = ["LivenessFailure", "SimOptions", "SimResult", "replay_command", "run"]


class LivenessFailure(AssertionError):
    """After healing, the cluster did not elect a leader and converge within the bound."""


@dataclass(slots=True)
class SimOptions:
    """One simulated run. Every field has a default; ``seed`` decides everything else."""

    seed: int = 1
    nodes: int = 5
    steps: int = 20_000
    """Events in the fault phase."""
    config: Config = field(default_factory=Config.lan)
    faults: bool = True
    crash: bool = True
    partitions: bool = True
    loss: float = 0.01
    duplicate: float = 0.01
    reorder: float = 0.02
    latency_ms: tuple[float, float] = (1.0, 10.0)
    mesh: RegionLatency | None = None
    """Use this region latency model instead of ``latency_ms`` (e.g. the five-region mesh)."""
    op_interval_ms: float = 20.0
    """Mean time between client operations."""
    read_fraction: float = 0.2
    fault_interval_ms: float = 1500.0
    """Mean time between fault actions."""
    membership: bool = False
    """Exercise membership changes (spare nodes join as learners, are promoted, voters removed)."""
    snapshot_every: int = 0
    """Compact the log every this many applied entries (0: never)."""
    liveness_ms: float = 60_000.0
    """After healing, the bound (simulated ms) for electing a leader and converging."""
    raft_factory: RaftFactory | None = None
    """Build cores with this (tests plant bugs by subclassing :class:`~phalanx_aio.core.Raft`)."""
    setup: Callable[[Cluster], None] | None = None
    """Called once the cluster is built, before any event (tests plant storage bugs here)."""

    def command(self) -> str:
        """The CLI command that replays this run."""
        parts = [f"phalanx-aio sim --seed {self.seed} --nodes {self.nodes} --steps {self.steps}"]
        if not self.faults:
            parts.append("--no-faults")
        if not self.crash:
            parts.append("--no-crashes")
        if not self.partitions:
            parts.append("--no-partitions")
        if self.loss != 0.01:
            parts.append(f"--loss {self.loss}")
        if self.mesh is not None:
            parts.append("--mesh global")
        if self.membership:
            parts.append("--membership")
        if self.snapshot_every:
            parts.append(f"--snapshot-every {self.snapshot_every}")
        if self.config.rtt_aware:
            parts.append("--preset global-mesh-adaptive")
        elif self.config.tick_interval != Config.lan().tick_interval:
            parts.append("--preset global-mesh")
        return " ".join(parts)


def replay_command(opts: SimOptions) -> str:
    """The exact command that replays ``opts``."""
    return opts.command()


@dataclass(slots=True)
class SimResult:
    """What a run did."""

    seed: int
    events: int
    sim_ms: float
    elections: int
    max_term: int
    committed: int
    writes_acked: int
    reads_checked: int
    faults: Counter[str]
    messages: int
    checks: int
    trace_hash: str
    converge_ms: float

    def summary(self) -> str:
        """A few human-readable lines."""
        faults = ", ".join(f"{k}={v}" for k, v in sorted(self.faults.items())) or "none"
        return (
            f"seed {self.seed}: {self.events} events over {self.sim_ms / 1000:.1f} s simulated\n"
            f"  elections {self.elections} (max term {self.max_term}), committed index {self.committed}, "
            f"writes acknowledged {self.writes_acked}, reads checked {self.reads_checked}\n"
            f"  faults: {faults}\n"
            f"  messages {self.messages}, invariant checks {self.checks}, "
            f"converged {self.converge_ms:.0f} ms after healing\n"
            f"  trace hash {self.trace_hash}"
        )


class _Run:
    def __init__(self, opts: SimOptions) -> None:
        self.opts = opts
        ids = [f"n{i + 1}" for i in range(opts.nodes)]
        spares = [f"n{opts.nodes + i + 1}" for i in range(3)] if opts.membership else []
        latency = opts.mesh if opts.mesh is not None else UniformLatency(*opts.latency_ms)
        net = NetworkOptions(latency=latency)
        if opts.faults:
            net.loss, net.duplicate, net.reorder = opts.loss, opts.duplicate, opts.reorder
        self.c = Cluster(
            ids,
            seed=opts.seed,
            config=opts.config,
            network=net,
            raft_factory=opts.raft_factory,
            snapshot_every=opts.snapshot_every,
            spare_ids=spares,
        )
        self.spares = spares
        self.marker = b"liveness-%d" % opts.seed
        self.marker_seen: set[str] = set()
        self.rng = self.c.rng
        self.faults: Counter[str] = Counter()
        self.pending_writes: dict[bytes, str] = {}
        self.pending_reads: dict[bytes, int] = {}
        self.writes_acked = 0
        self.reads_checked = 0
        self.op_seq = 0
        self.active = True
        if opts.setup is not None:
            opts.setup(self.c)
        self.c.on_apply.append(self._applied)
        self.c.on_read.append(self._read)

    # -- workload --------------------------------------------------------------------------

    def _applied(self, node: SimNode, e: Entry) -> None:
        if e.data == self.marker:
            self.marker_seen.add(node.id)
        who = self.pending_writes.get(e.data)
        if who == node.id:
            del self.pending_writes[e.data]
            self.writes_acked += 1
            chk = self.c.checker
            if chk is not None and e.index > chk.acked_index:
                chk.acked_index = e.index

    def _read(self, node: SimNode, ctx: bytes, index: int) -> None:
        needed = self.pending_reads.pop(ctx, None)
        if needed is not None and self.c.checker is not None:
            self.reads_checked += 1
            self.c.checker.on_read(node.id, index, needed)

    def _exp(self, mean: float) -> float:
        return self.rng.expovariate(1.0 / mean)

    def _client_op(self) -> None:
        if not self.active:
            return
        self.c.call_at(self.c.now + self._exp(self.opts.op_interval_ms), self._client_op)
        live = [n for n in self.c.live() if n.core is not None and n.core.conf.is_member(n.id)]
        if not live:
            return
        node = self.rng.choice(live)
        self.op_seq += 1
        try:
            if self.rng.random() < self.opts.read_fraction:
                ctx = b"r%d" % self.op_seq
                chk = self.c.checker
                self.pending_reads[ctx] = chk.acked_index if chk is not None else 0
                self.c.read_index(node.id, ctx)
            else:
                data = b"w%d" % self.op_seq
                self.pending_writes[data] = node.id
                self.c.propose(node.id, data)
        except PhalanxError:
            pass

    # -- faults ----------------------------------------------------------------------------

    def _fault(self) -> None:
        if not self.active:
            return
        self.c.call_at(self.c.now + self._exp(self.opts.fault_interval_ms), self._fault)
        c, rng, opts = self.c, self.rng, self.opts
        members = [n for n in c.nodes.values() if n.incarnation > 0]
        down = [n.id for n in members if n.core is None]
        up = [n.id for n in members if n.core is not None]
        choices = ["heal", "loss"]
        if opts.crash:
            choices += ["crash", "restart", "restart"]
        if opts.partitions:
            choices += ["partition", "isolate_leader", "heal"]
        if opts.membership:
            choices += ["member", "member"]
        kind = rng.choice(choices)
        if kind == "crash" and len(down) < (opts.nodes - 1) // 2 + 1 and up:
            victim = rng.choice(up)
            if rng.random() < 0.5 and (leader := c.leader()) is not None:
                victim = leader.id
            c.crash(victim)
        elif kind == "restart" and down:
            c.restart(rng.choice(down))
        elif kind == "partition":
            ids = sorted(n.id for n in members)
            rng.shuffle(ids)
            cut = rng.randrange(1, len(ids))
            c.heal()
            c.partition([ids[:cut], ids[cut:]])
        elif kind == "isolate_leader" and (leader := c.leader()) is not None:
            c.disconnect(leader.id)
        elif kind == "heal":
            c.heal()
        elif kind == "loss":
            c.net.loss = rng.choice([0.0, opts.loss, 0.1, 0.3])
        elif kind == "member":
            self._membership()
        else:
            return
        self.faults[kind] += 1

    def _membership(self) -> None:
        c, rng = self.c, self.rng
        leader = c.leader()
        if leader is None or leader.core is None:
            return
        conf = leader.core.conf
        try:
            if conf.learners:
                nid = sorted(conf.learners)[0]
                pr = leader.core.prs.get(nid)
                if pr is not None and pr.match >= leader.core.log.committed:
                    c.conf_change(leader.id, ConfChange(ConfChangeType.PROMOTE, nid))
            elif len(conf.voters) > 3 and rng.random() < 0.5:
                victim = rng.choice(sorted(conf.voters))
                c.conf_change(leader.id, ConfChange(ConfChangeType.REMOVE, victim))
            elif self.spares:
                nid = self.spares.pop(0)
                c.conf_change(leader.id, ConfChange(ConfChangeType.ADD_LEARNER, nid))
        except PhalanxError:
            pass

    # -- phases ----------------------------------------------------------------------------

    def run(self) -> SimResult:
        c, opts = self.c, self.opts
        c.call_at(0.0, self._client_op)
        if opts.faults:
            c.call_at(self._exp(opts.fault_interval_ms), self._fault)
        while c.events < opts.steps and c.step():
            pass
        # Liveness: heal everything, restart everyone, and demand convergence.
        self.active = False
        c.heal()
        c.net.loss = c.net.duplicate = c.net.reorder = 0.0
        for n in list(c.nodes.values()):
            if n.core is None and n.incarnation > 0:
                c.restart(n.id)
        healed_at = c.now
        if not c.run_until(self._has_leader, opts.liveness_ms):
            raise LivenessFailure(f"no leader {opts.liveness_ms:.0f} ms after healing ({opts.command()})")
        marker = self.marker
        deadline = healed_at + opts.liveness_ms
        while not self._converged(marker):
            leader = c.leader()
            if leader is not None:
                with contextlib.suppress(PhalanxError):
                    c.propose(leader.id, marker)
            converged = c.run_until(lambda: self._converged(marker), min(2000.0, deadline - c.now))
            if not converged and c.now >= deadline:
                raise LivenessFailure(
                    f"no convergence {opts.liveness_ms:.0f} ms after healing ({opts.command()})"
                )
        chk = c.checker
        return SimResult(
            seed=opts.seed,
            events=c.events,
            sim_ms=c.now,
            elections=c.elections,
            max_term=max((n.store.hard_state.term for n in c.nodes.values()), default=0),
            committed=max(n.applied_index for n in c.nodes.values()),
            writes_acked=self.writes_acked,
            reads_checked=self.reads_checked,
            faults=self.faults,
            messages=sum(c.msg_counts.values()),
            checks=chk.checks if chk is not None else 0,
            trace_hash=c.trace_hash,
            converge_ms=c.now - healed_at,
        )

    def _has_leader(self) -> bool:
        leader = self.c.leader()
        return leader is not None and leader.core is not None and leader.core.log.committed > 0

    def _converged(self, marker: bytes) -> bool:
        leader = self.c.leader()
        if leader is None or leader.core is None:
            return False
        core = leader.core
        members = core.conf.members()
        target = core.log.committed
        if leader.id not in self.marker_seen:
            return False
        for nid in members:
            n = self.c.nodes.get(nid)
            if n is None or n.core is None or n.applied_index < target:
                return False
            if n.core.role is not Role.LEADER and n.core.leader != leader.id:
                return False
        return True


def run(opts: SimOptions) -> SimResult:
    """Run one simulation; raises SafetyViolation or LivenessFailure (with the replay command)."""
    try:
        return _Run(opts).run()
    except SafetyViolation as exc:
        exc.add_note(f"seed {opts.seed}; replay with: {opts.command()}")
        raise
