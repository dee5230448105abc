"""What a simulated run is asked and what it reports (see :mod:`phalanx_aio.sim.runner`):
:class:`SimOptions` and how a seed resolves them (:func:`resolve`, :func:`describe`, the
:func:`replay_command`), the fault triggers and disk profiles a swarm run draws from, and
:class:`SimResult`.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from phalanx_aio.core.config import Config
from phalanx_aio.sim.cluster import Cluster, RaftFactory
from phalanx_aio.sim.network import RegionLatency

__all__ = ["SimOptions", "SimResult", "describe", "replay_command", "resolve"]

_TRIGGERS = (
    ("commit_unsent", "crash"),
    ("commit_unsent", "crash"),
    ("elected_unsent", "crash"),
    ("elected_unsent", "crash"),
    ("leader", "crash"),
    ("leader", "crash"),
    ("commit", "isolate"),
    ("leader", "isolate"),
    ("campaign", "restart"),
    ("campaign", "crash"),
    ("write", "crash"),
    ("conf", "split"),
    ("conf", "split"),
)
"""Faults a run arms, each waiting for its protocol moment: (moment, action)."""

_DISK_PROFILES = ((0.05, 0.5), (0.5, 5.0), (5.0, 40.0), (20.0, 150.0))
"""Background-write durations (simulated ms) a swarm run gives its nodes: fast to slow disks."""


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
    reslice: float = 0.0
    """Probability that a leader's append is followed by an earlier slice of its log (see
    :attr:`~phalanx_aio.sim.network.NetworkOptions.reslice`)."""
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
    joint_changes: bool = False
    """Also change several voters at once (joint consensus, implies ``membership``): a
    learner replacing a voter, two replacing two, two voters leaving, the leader sometimes
    among them. A swarm seed keeps the caller's choice (and turns ``membership`` on with it),
    so the plain swarm runs as before; its choices come from a random stream of their own."""
    snapshot_every: int = 0
    """Compact the log every this many applied entries (0: never)."""
    transfers: bool = False
    """Leadership transfers in the workload (the vote behind pre-vote and stickiness)."""
    background_writes: float = 0.0
    """Probability that a node writes a leader's own entries in the background, as
    ``RaftNode`` does; a crash loses what is not yet written."""
    disk_ms: tuple[float, float] = (0.2, 2.0)
    """How long one background write takes (a swarm run picks a profile per node)."""
    triggers: bool = False
    """Faults armed on protocol moments: crash or isolate a leader as its commit index moves,
    soon after it is elected, or while its background write is in flight; restart or crash
    a voter during an election; heal into a different majority."""
    swarm: bool = False
    """The seed also chooses the configuration: see :func:`resolve`."""
    availability: bool = True
    """After convergence, demand answers within a bound and no elections while healthy,
    across one failover (see ``docs/simulator.md``)."""
    liveness_ms: float = 60_000.0
    """After healing, the bound (simulated ms) for electing a leader and converging."""
    max_events: int = 0
    """Stop with :class:`~phalanx_aio.sim.checker.BudgetExceeded` after this many events in
    all (0: ``steps`` plus 400,000, far above any healthy run's need)."""
    clock: Callable[[], float] | None = None
    """A wall clock in seconds (``time.monotonic``): with it, a run that takes longer than
    ``wall_seconds`` stops with :class:`~phalanx_aio.sim.checker.BudgetExceeded`."""
    wall_seconds: float = 60.0
    raft_factory: RaftFactory | None = None
    """Build cores with this (tests plant bugs by subclassing :class:`~phalanx_aio.core.Raft`)."""
    setup: Callable[[Cluster], None] | None = None
    """Called once the cluster is built, before any event (tests plant storage bugs here)."""

    def command(self) -> str:
        """The CLI command that replays this run."""
        parts = [f"phalanx-aio sim --seed {self.seed}"]
        if self.swarm:
            parts.append(f"--swarm --steps {self.steps}")
            if self.joint_changes:  # the one choice a swarm seed keeps from its caller
                parts.append("--joint-changes")
            return " ".join(parts)
        parts.append(f"--nodes {self.nodes} --steps {self.steps}")
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
        if self.joint_changes:
            parts.append("--joint-changes")
        if self.snapshot_every:
            parts.append(f"--snapshot-every {self.snapshot_every}")
        if self.transfers:
            parts.append("--transfers")
        if self.background_writes:
            parts.append(f"--background-writes {self.background_writes}")
            if self.disk_ms != (0.2, 2.0):
                parts.append(f"--disk-ms {self.disk_ms[0]},{self.disk_ms[1]}")
        if self.fault_interval_ms != 1500.0:
            parts.append(f"--fault-interval-ms {self.fault_interval_ms}")
        if self.triggers:
            parts.append("--triggers")
        if not self.availability:
            parts.append("--no-availability")
        if self.config.rtt_aware:
            parts.append("--preset global-mesh-adaptive")
        elif self.config.tick_interval != Config.lan().tick_interval:
            parts.append("--preset global-mesh")
        return " ".join(parts)


def replay_command(opts: SimOptions) -> str:
    """The exact command that replays ``opts``."""
    return opts.command()


def resolve(opts: SimOptions) -> SimOptions:
    """The options a run really uses: ``opts`` itself, or for a swarm run the configuration
    its seed chooses (swarm testing: each seed leaves some features out, so that the bugs
    one feature masks show up on the seeds without it).

    A swarm seed picks the cluster size (3 to 5), the message and window limits
    (``max_msg_entries``, ``max_msg_bytes``, ``max_inflight_msgs``: small ones make appends
    carry part of a backlog), pre-vote, check quorum, lease reads, eager commit, snapshots,
    membership changes, leadership transfers, background writes, protocol-triggered
    faults, loss, and the rates of faults and client operations."""
    if not opts.swarm:
        return opts
    r = random.Random(f"phalanx-swarm:{opts.seed}")
    check_quorum = r.random() < 0.6
    cfg = opts.config.replace(
        pre_vote=r.random() < 0.5,
        check_quorum=check_quorum,
        read_mode="lease" if check_quorum and r.random() < 0.5 else "safe",
        max_msg_entries=r.choice((1, 1, 2, 3, 8, 1024)),
        max_msg_bytes=r.choice((64, 256, 1 << 20)),
        max_inflight_msgs=r.choice((1, 2, 4, 256)),
        eager_commit=r.random() < 0.5,
    )
    return dataclasses.replace(
        opts,
        nodes=r.choice((3, 3, 3, 4, 5, 5)),
        config=cfg,
        loss=r.choice((0.0, 0.0, 0.01, 0.05)),
        op_interval_ms=r.choice((5.0, 20.0, 40.0, 80.0)),
        read_fraction=r.choice((0.1, 0.3, 0.6)),
        fault_interval_ms=r.choice((200.0, 300.0, 500.0, 1000.0)),
        membership=r.random() < 0.3 or opts.joint_changes,
        snapshot_every=r.choice((0, 0, 5, 20, 60)),
        transfers=r.random() < 0.4,
        background_writes=r.choice((0.0, 0.0, 0.5, 1.0)),
        triggers=r.random() < 0.9,
        reslice=r.choice((0.0, 0.5, 1.0)),
    )


def describe(opts: SimOptions) -> str:
    """One line naming what a (resolved) run varies."""
    cfg = opts.config
    flags = [
        f"nodes={opts.nodes}",
        f"pre_vote={'on' if cfg.pre_vote else 'off'}",
        f"check_quorum={'on' if cfg.check_quorum else 'off'}",
        f"reads={cfg.read_mode}",
        f"max_msg_entries={cfg.max_msg_entries}",
        f"max_msg_bytes={cfg.max_msg_bytes}",
        f"max_inflight_msgs={cfg.max_inflight_msgs}",
        f"eager_commit={'on' if cfg.eager_commit else 'off'}",
        f"snapshot_every={opts.snapshot_every}",
        f"membership={'on' if opts.membership else 'off'}",
        f"joint_changes={'on' if opts.membership and opts.joint_changes else 'off'}",
        f"transfers={'on' if opts.transfers else 'off'}",
        f"background_writes={opts.background_writes}",
        f"triggers={'on' if opts.triggers else 'off'}",
        f"reslice={opts.reslice}",
    ]
    return " ".join(flags)


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
    setup: str = ""
    """The configuration the run used (:func:`describe`)."""
    probes: int = 0
    """Reads and writes answered within the bound in the availability phase."""

    def summary(self) -> str:
        """A few human-readable lines."""
        faults = ", ".join(f"{k}={v}" for k, v in sorted(self.faults.items())) or "none"
        return (
            f"seed {self.seed}: {self.events} events over {self.sim_ms / 1000:.1f} s simulated\n"
            f"  {self.setup}\n"
            f"  elections {self.elections} (max term {self.max_term}), committed index {self.committed}, "
            f"writes acknowledged {self.writes_acked}, reads checked {self.reads_checked}\n"
            f"  faults: {faults}\n"
            f"  messages {self.messages}, invariant checks {self.checks}, "
            f"converged {self.converge_ms:.0f} ms after healing, {self.probes} availability probes\n"
            f"  trace hash {self.trace_hash}"
        )
