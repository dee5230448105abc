"""Tools for chaos testing phalanx_aio.

* :mod:`~phalanx_aio.chaos.linearizability`: check recorded client histories for linearizability;
* :mod:`~phalanx_aio.chaos.cluster`: a cluster of real ``phalanx-aio serve`` processes with a
  proxy (:mod:`~phalanx_aio.chaos.proxy`) on every directed link;
* :mod:`~phalanx_aio.chaos.faults`: a seeded plan of faults and the nemesis that injects them;
* :mod:`~phalanx_aio.chaos.workload`: concurrent KV clients recording a history;
* :mod:`~phalanx_aio.chaos.runner`: one run end to end, with every check;
* :mod:`~phalanx_aio.chaos.timeline`: a plot of a run (needs matplotlib).

``docs/chaos.md`` and ``docs/linearizability.md`` describe them. The names are loaded lazily so
that ``python -m phalanx_aio.chaos.linearizability`` runs the module cleanly (it is not imported
twice) and importing this package costs nothing.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from phalanx_aio.chaos.cluster import ChaosCluster, NodeState
    from phalanx_aio.chaos.faults import FaultKind, FaultStep, FaultWindow, Nemesis, plan_faults
    from phalanx_aio.chaos.linearizability import (
        CheckResult,
        KeyResult,
        Operation,
        OpKind,
        Outcome,
        Verdict,
        check_history,
        check_key,
        dump_history,
        load_history,
        read_history,
        write_history,
    )
    from phalanx_aio.chaos.proxy import LinkMode, LinkProxy
    from phalanx_aio.chaos.runner import ChaosConfig, ChaosReport, run_chaos
    from phalanx_aio.chaos.timeline import plot_timeline
    from phalanx_aio.chaos.workload import HistoryRecorder, WorkloadConfig, run_clients

_WHERE = {
    "CheckResult": "linearizability",
    "KeyResult": "linearizability",
    "OpKind": "linearizability",
    "Operation": "linearizability",
    "Outcome": "linearizability",
    "Verdict": "linearizability",
    "check_history": "linearizability",
    "check_key": "linearizability",
    "dump_history": "linearizability",
    "load_history": "linearizability",
    "read_history": "linearizability",
    "write_history": "linearizability",
    "ChaosCluster": "cluster",
    "NodeState": "cluster",
    "LinkMode": "proxy",
    "LinkProxy": "proxy",
    "FaultKind": "faults",
    "FaultStep": "faults",
    "FaultWindow": "faults",
    "Nemesis": "faults",
    "plan_faults": "faults",
    "HistoryRecorder": "workload",
    "WorkloadConfig": "workload",
    "run_clients": "workload",
    "ChaosConfig": "runner",
    "ChaosReport": "runner",
    "run_chaos": "runner",
    "plot_timeline": "timeline",
}

__all__ = [
    "ChaosCluster",
    "ChaosConfig",
    "ChaosReport",
    "CheckResult",
    "FaultKind",
    "FaultStep",
    "FaultWindow",
    "HistoryRecorder",
    "KeyResult",
    "LinkMode",
    "LinkProxy",
    "Nemesis",
    "NodeState",
    "OpKind",
    "Operation",
    "Outcome",
    "Verdict",
    "WorkloadConfig",
    "check_history",
    "check_key",
    "dump_history",
    "load_history",
    "plan_faults",
    "plot_timeline",
    "read_history",
    "run_chaos",
    "run_clients",
    "write_history",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is not None:
        return getattr(import_module(f"phalanx_aio.chaos.{module}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
