"""Issue 18's targets against the committed results: one line per target, HOLDS, MISSED or
NOT MEASURED, with the figures. A report, not a test: the exit status is always 0.

Reads ``benchmarks/results/vs_pysyncobj.json`` (targets 1 and 2) and ``vs_etcd.json``
(targets 3 and 4), the files of issue 18's results contract; ``benchmarks/report.py`` puts the
same lines on docs/performance.md.

Usage: python benchmarks/check_targets.py [--results DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
INFLIGHT = ("100", "1000", "10000")
HOLDS, MISSED, NOT_MEASURED = "HOLDS", "MISSED", "NOT MEASURED"


@dataclasses.dataclass
class Target:
    number: int
    name: str
    status: str
    figures: str

    def line(self) -> str:
        return f"target {self.number} ({self.name}): {self.status}" + (
            f"; {self.figures}" if self.figures else ""
        )


def load_results(results_dir: str | pathlib.Path) -> dict[str, dict[str, Any]]:
    """Every ``*.json`` result file of the directory, by its stem (unreadable files skipped)."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(pathlib.Path(results_dir).glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("summary"), dict):
            out[path.stem] = doc
    return out


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and x == x


def _fmt(x: Any, spec: str = ".2f") -> str:
    return format(x, spec) if _num(x) else "-"


def _status(checks: list[bool | None]) -> str:
    """MISSED if any measured check fails, NOT MEASURED if any is missing, else HOLDS."""
    if any(c is False for c in checks):
        return MISSED
    if not checks or any(c is None for c in checks):
        return NOT_MEASURED
    return HOLDS


def _at_least(x: Any, bound: float) -> bool | None:
    return x >= bound if _num(x) else None


def _ratio_target(
    vs: dict[str, Any] | None, number: int, name: str, checks_of: tuple[tuple[str, float, str], ...]
) -> Target:
    """A target on ``vs_pysyncobj.json``'s ratios: at every in-flight count, each
    ``(key, bound, label)`` of ``checks_of`` must be at least its bound."""
    checks: list[bool | None] = []
    parts = []
    for n in INFLIGHT:
        s = _get(vs, "summary", "inflight", n)
        shown = []
        for key, bound, label in checks_of:
            x = _get(s, key)
            checks.append(_at_least(x, bound))
            shown.append(f"x{_fmt(x)} {label}")
        parts.append(f"{n} in flight: " + ", ".join(shown))
    return Target(number, name, _status(checks), "; ".join(parts) if vs else "")


def target_1(vs: dict[str, Any] | None) -> Target:
    return _ratio_target(
        vs,
        1,
        "against PySyncObj at its best: x1.5 its best in memory, x3 its best durable",
        (("ratio_memory", 1.5, "in memory"), ("ratio_durable", 3.0, "durable")),
    )


def target_2(vs: dict[str, Any] | None) -> Target:
    return _ratio_target(
        vs,
        2,
        "plain asyncio.run: x0.9 of phalanx_aio.run and x1.4 PySyncObj's best in memory",
        (
            ("ratio_asyncio_vs_run", 0.9, "of phalanx_aio.run"),
            ("ratio_asyncio_vs_memory", 1.4, "PySyncObj in memory"),
        ),
    )


def target_3(etcd: dict[str, Any] | None) -> Target:
    one = _get(etcd, "summary", "callers", "1")
    many = _get(etcd, "summary", "callers", "64")
    ours_p50, etcd_p50 = _get(one, "phalanx", "p50_ms"), _get(one, "etcd", "p50_ms")
    ops, cpu = _get(many, "phalanx", "ops"), _get(many, "phalanx", "leader_cpu_us_per_op")
    checks: list[bool | None] = [
        ours_p50 < etcd_p50 if _num(ours_p50) and _num(etcd_p50) else None,
        _at_least(ops, 25_000),
        True if _num(cpu) else None,
    ]
    figures = (
        f"1 caller: p50 {_fmt(ours_p50)} ms against etcd's {_fmt(etcd_p50)} ms; 64 callers: "
        f"{_fmt(ops, ',.0f')} ops/s, {_fmt(cpu, '.1f')} us of leader CPU per operation"
    )
    return Target(
        3,
        "client path: 1 caller p50 below etcd's; 64 callers at least 25,000 ops/s, leader CPU/op reported",
        _status(checks),
        figures if etcd else "",
    )


def target_4(etcd: dict[str, Any] | None) -> Target:
    s = _get(etcd, "summary")
    conns = _get(s, "connections")
    callers = _get(s, "callers") or {}
    loadgen = [_get(c, "etcd", "loadgen_cpu_s_per_s") for c in callers.values()] if callers else []
    perf = _get(s, "etcdctl_check_perf")
    checks: list[bool | None] = [
        _at_least(conns, 8),
        (all(_num(x) for x in loadgen) or None) if loadgen else None,
        True if perf else None,
    ]
    figures = (
        f"{_fmt(conns, 'd') if isinstance(conns, int) else '-'} connections; load generator CPU "
        f"{', '.join(_fmt(x) for x in loadgen) or '-'} s/s; etcdctl check perf "
        f"{'present' if perf else 'absent'}"
    )
    return Target(
        4,
        "etcd as its users drive it: at least 8 connections, load generator CPU, etcdctl check perf",
        _status(checks),
        figures if etcd else "",
    )


def evaluate(results: dict[str, dict[str, Any]]) -> list[Target]:
    vs, etcd = results.get("vs_pysyncobj"), results.get("vs_etcd")
    return [target_1(vs), target_2(vs), target_3(etcd), target_4(etcd)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=str(HERE / "results"), help="the result files' directory")
    args = ap.parse_args()
    for t in evaluate(load_results(args.results)):
        print(t.line())


if __name__ == "__main__":
    main()
