"""The deterministic cluster simulator (public).

One seed drives a whole cluster of sans-IO cores in simulated time over a modelled network
(latency from a constant, a distribution or a region RTT matrix; loss, duplication,
reordering, partitions), with crashes and restarts (background writes in flight included), a
workload, a checker that judges Raft's safety invariants after every event, and availability
checks once the cluster is healthy. Swarm runs let the seed choose the configuration too.
See ``docs/simulator.md``.
"""

from phalanx_aio.sim.checker import BudgetExceeded, Checker, LivenessFailure, SafetyViolation
from phalanx_aio.sim.cluster import Cluster, RaftFactory, SimNode, SimStore
from phalanx_aio.sim.network import (
    ConstantLatency,
    Latency,
    NetworkOptions,
    RegionLatency,
    UniformLatency,
    load_rtt_matrix,
)
from phalanx_aio.sim.runner import SimOptions, SimResult, describe, replay_command, resolve, run

__all__ = [
    "BudgetExceeded",
    "Checker",
    "Cluster",
    "ConstantLatency",
    "Latency",
    "LivenessFailure",
    "NetworkOptions",
    "RaftFactory",
    "RegionLatency",
    "SafetyViolation",
    "SimNode",
    "SimOptions",
    "SimResult",
    "SimStore",
    "UniformLatency",
    "describe",
    "load_rtt_matrix",
    "replay_command",
    "resolve",
    "run",
]
