"""Time a process spends in CPython's cyclic garbage collector (benchmark members; imports
nothing of phalanx_aio, so that PySyncObj's members can use it too)."""

from __future__ import annotations

import gc
import time
from typing import Any


class GcClock:
    """Wall time in the collector and number of collections, per generation, since creation."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.runs = [0, 0, 0]
        self._t0 = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            gen = info["generation"]
            self.seconds[gen] += time.perf_counter() - self._t0
            self.runs[gen] += 1

    def usage(self) -> dict[str, list[float] | list[int]]:
        """The ``gc_seconds`` and ``gc_runs`` fields of a member's ``usage`` reply."""
        return {"gc_seconds": list(self.seconds), "gc_runs": list(self.runs)}
