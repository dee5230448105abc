"""The deterministic cluster simulator (public).

One seed drives a whole cluster of sans-IO cores in simulated time over a modelled network
(latency from a constant, a distribution or a region RTT matrix; loss, duplication,
reordering, partitions), with crashes and restarts, a workload, and a checker that judges
Raft's safety invariants after every event. See ``docs/simulator.md``.
"""

from phalanx_aio.sim.checker import Checker, SafetyViolation
from phalanx_aio.sim.cluster import Cluster, RaftFactory, SimNode, SimStore
from phalanx_aio.sim.network import (
    ConstantLatency,
    Latency,
    NetworkOptions,
    RegionLatency,
    UniformLatency,
    load_rtt_matrix,
)
from phalanx_aio.sim.runner import LivenessFailure, SimOptions, SimResult, replay_command, run

__all__ = [
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
    "load_rtt_matrix",
    "replay_command",
    "run",
]
