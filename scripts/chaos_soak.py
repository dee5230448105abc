#!/usr/bin/env python3
"""Long chaos soaks: repeated seeded runs of real ``phalanx-aio serve`` clusters under faults.

Each run starts a fresh cluster, loads it with recording KV clients while a seeded plan of faults
(every kind but the unsafe ``wipe``, unless ``--faults`` says otherwise) is injected, heals, and
checks linearizability, acknowledged writes lost, convergence and identical state. Runs go on
with seeds ``--seed``, ``--seed + 1``, ... until ``--duration`` seconds of load have been spent
(at least one run). Every run's history, faults, report and timeline go to ``--out/seed-<n>/``;
a summary is printed and written to ``--out/summary.json``.

Exit status 0 if every run passed, 1 otherwise.

    python scripts/chaos_soak.py --nodes 5 --duration 600 --seed 1 --out benchmarks/results/chaos
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import pathlib
import sys
import time
from collections import Counter

from phalanx_aio.chaos.faults import DEFAULT_FAULTS, FaultKind
from phalanx_aio.chaos.runner import ChaosConfig, ChaosReport, run_chaos
from phalanx_aio.chaos.workload import WorkloadConfig


def _parse_faults(text: str) -> tuple[FaultKind, ...]:
    try:
        return tuple(FaultKind(k.strip()) for k in text.split(",") if k.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}; kinds: {', '.join(FaultKind)}") from None


def main(argv: list[str] | None = None) -> int:
    """Run the soak; return the exit status."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=5, help="members per cluster (default 5)")
    p.add_argument("--duration", type=float, default=300.0, help="seconds of load in total (default 300)")
    p.add_argument("--run-seconds", type=float, default=120.0, help="seconds of load per run (default 120)")
    p.add_argument("--seed", type=int, default=1, help="seed of the first run (default 1)")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument(
        "--faults",
        type=_parse_faults,
        default=DEFAULT_FAULTS,
        help="comma-separated fault kinds (default: all but wipe)",
    )
    p.add_argument(
        "--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results/chaos"), help="output directory"
    )
    p.add_argument("--no-plot", action="store_true", help="skip the timeline plots")
    p.add_argument("-v", "--verbose", action="store_true", help="log the harness's progress")
    args = p.parse_args(argv)
    if args.nodes < 1 or args.duration <= 0 or args.run_seconds <= 0:
        p.error("--nodes, --duration and --run-seconds must be positive")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    reports: list[ChaosReport] = []
    spent = 0.0
    seed = args.seed
    t0 = time.monotonic()
    while not reports or spent < args.duration:
        run_seconds = min(args.run_seconds, max(args.duration - spent, 10.0))
        cfg = ChaosConfig(
            nodes=args.nodes,
            duration=run_seconds,
            seed=seed,
            faults=args.faults,
            workload=WorkloadConfig(clients=args.clients),
        )
        print(f"run seed {seed}: {args.nodes} nodes, {run_seconds:.0f} s ...", flush=True)
        report = asyncio.run(run_chaos(cfg))
        report.save(args.out / f"seed-{seed}", plot=not args.no_plot)
        print(report.summary(), flush=True)
        reports.append(report)
        spent += run_seconds
        seed += 1
    summary = summarize(reports, time.monotonic() - t0)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print()
    print(format_summary(summary))
    return 0 if all(r.ok for r in reports) else 1


def summarize(reports: list[ChaosReport], wall: float) -> dict[str, object]:
    """The figures of several runs, added up."""
    faults: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    verdicts: Counter[str] = Counter()
    for r in reports:
        faults.update(r.faults_by_kind)
        outcomes.update(r.counts)
        verdicts[str(r.verdict)] += 1
    conv = [r.convergence_seconds for r in reports if r.convergence_seconds is not None]
    return {
        "runs": len(reports),
        "passed": sum(r.ok for r in reports),
        "nodes": sorted({r.config.nodes for r in reports}),
        "seeds": [r.config.seed for r in reports],
        "load_seconds": sum(r.config.duration for r in reports),
        "wall_seconds": round(wall, 1),
        "faults_by_kind": dict(sorted(faults.items())),
        "faults_total": sum(faults.values()),
        "fault_errors": sum(len(r.fault_errors) for r in reports),
        "ops": sum(len(r.history) for r in reports),
        "ops_checked": sum(r.check.ops_checked for r in reports if r.check is not None),
        "outcomes": dict(outcomes),
        "cas_not_swapped": sum(r.cas_not_swapped for r in reports),
        "verdicts": dict(verdicts),
        "acknowledged_write_once": sum(r.acknowledged_once for r in reports),
        "lost_writes": sum(len(r.lost_writes) for r in reports),
        "refused_but_applied": sum(len(r.failed_but_applied) for r in reports),
        "unknown_write_once": sum(r.unknown_once for r in reports),
        "unknown_write_once_applied": sum(r.unknown_once_applied for r in reports),
        "converged": sum(r.converged for r in reports),
        "max_convergence_seconds": round(max(conv), 2) if conv else None,
        "identical_state": sum(r.identical for r in reports),
        "terms_seen": sum(len(r.leaders_by_term) for r in reports),
        "terms_with_two_leaders": sum(len(r.two_leaders) for r in reports),
        "errors": [r.error for r in reports if r.error],
    }


def format_summary(s: dict[str, object]) -> str:
    """The summary as aligned lines."""
    rows = [
        ("runs (passed)", f"{s['runs']} ({s['passed']})"),
        ("nodes", s["nodes"]),
        ("seeds", s["seeds"]),
        ("load / wall seconds", f"{s['load_seconds']:.0f} / {s['wall_seconds']}"),
        ("faults injected", s["faults_total"]),
        ("faults by kind", ", ".join(f"{k} {v}" for k, v in s["faults_by_kind"].items())),  # type: ignore[attr-defined]
        ("faults not injected", s["fault_errors"]),
        ("operations (checked)", f"{s['ops']} ({s['ops_checked']})"),
        ("ok / failed / unknown", "{ok} / {failed} / {unknown}".format(**s["outcomes"])),  # type: ignore[arg-type]
        ("cas not swapped (in failed)", s["cas_not_swapped"]),
        ("verdicts", s["verdicts"]),
        ("acknowledged write-once", s["acknowledged_write_once"]),
        ("acknowledged writes lost", s["lost_writes"]),
        ("refused writes applied", s["refused_but_applied"]),
        ("unknown write-once (applied)", f"{s['unknown_write_once']} ({s['unknown_write_once_applied']})"),
        ("converged (max seconds)", f"{s['converged']} ({s['max_convergence_seconds']})"),
        ("identical state", s["identical_state"]),
        ("terms seen (with two leaders)", f"{s['terms_seen']} ({s['terms_with_two_leaders']})"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


if __name__ == "__main__":
    sys.exit(main())
