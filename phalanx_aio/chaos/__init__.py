"""Tools for chaos testing phalanx_aio: checking recorded client histories for linearizability.

The names are loaded lazily so that ``python -m phalanx_aio.chaos.linearizability`` runs the module
cleanly (it is not imported twice).
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

__all__ = [
    "CheckResult",
    "KeyResult",
    "OpKind",
    "Operation",
    "Outcome",
    "Verdict",
    "check_history",
    "check_key",
    "dump_history",
    "load_history",
    "read_history",
    "write_history",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from phalanx_aio.chaos import linearizability

        return getattr(linearizability, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
