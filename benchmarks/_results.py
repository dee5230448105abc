"""The result files of the benchmarks (issue 18's results contract): one small JSON object per
run in ``benchmarks/results/``, committed with the code, read by ``report.py`` and
``check_targets.py``. Imports nothing of phalanx_aio.

Every file holds ``benchmark``, ``created`` (ISO-8601 UTC), ``commit`` (the measured tree's git
sha, or null), ``machine`` (cpus, python, platform, load averages before and after),
``settings`` (every command-line setting), ``rounds`` (raw per-round records) and ``summary``
(the figures the docs show); a benchmark may add further keys of its own (``sweep``).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import pathlib
import platform
import subprocess
from collections.abc import Sequence
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results"


def git_commit() -> tuple[str | None, bool]:
    """The sha of HEAD and whether the work tree is clean (``(None, False)`` outside git)."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=HERE,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None, False
    return sha or None, not dirty


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def machine(loadavg_before: list[float] | tuple[float, ...]) -> dict[str, Any]:
    """The ``machine`` record of a result: CPUs, Python, platform, load average before and now."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_before": [round(x, 2) for x in loadavg_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }


class ResultFile:
    """Started when the benchmark starts (load average before), written when it ends."""

    def __init__(self, benchmark: str, settings: dict[str, Any]) -> None:
        self.benchmark = benchmark
        self.settings = dict(settings)
        self.loadavg_before = list(os.getloadavg())
        self.commit, clean = git_commit()
        self.settings["worktree_clean"] = clean

    def write(
        self,
        path: str | pathlib.Path,
        rounds: list[dict[str, Any]],
        summary: dict[str, Any],
        **extra: Any,
    ) -> pathlib.Path:
        doc = {
            "benchmark": self.benchmark,
            "created": now_iso(),
            "commit": self.commit,
            "machine": machine(self.loadavg_before),
            "settings": self.settings,
            "rounds": rounds,
            "summary": summary,
            **extra,
        }
        out = pathlib.Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(clean_floats(doc), indent=1) + "\n")
        return out


def clean_floats(obj: Any) -> Any:
    """``obj`` with every NaN or infinity replaced by None (JSON has neither) and floats rounded
    to 4 decimals (the files stay small and diff well)."""
    if isinstance(obj, float):
        if math.isnan(obj) or math.isinf(obj):
            return None
        return round(obj, 4)
    if isinstance(obj, dict):
        return {k: clean_floats(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean_floats(v) for v in obj]
    return obj


def percentile(lat: Sequence[float], p: float) -> float:
    """The ``p`` quantile (0 to 1) of sorted values, nearest rank below; NaN if there are none."""
    return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")


def latency_figures(lat: Sequence[float]) -> dict[str, float]:
    """``p50``, ``p99``, ``p999`` and ``max`` of sorted latencies, in the keys of the raw
    records the benchmarks keep."""
    return {
        "p50": percentile(lat, 0.50),
        "p99": percentile(lat, 0.99),
        "p999": percentile(lat, 0.999),
        "max": lat[-1] if lat else float("nan"),
    }


def figure(ops: float, p50: float, p99: float, p999: float | None = None) -> dict[str, Any]:
    """A throughput with its latency, in the contract's keys."""
    out: dict[str, Any] = {"ops": ops, "p50_ms": p50, "p99_ms": p99}
    if p999 is not None:
        out["p999_ms"] = p999
    return out
