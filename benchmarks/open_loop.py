"""Latency against throughput, in process: an open-loop sweep of phalanx_aio and PySyncObj.

Each side is a three-member cluster of three processes on loopback, proposals made inside the
leader's process at a fixed rate (1k, 2k, 5k, 10k, 20k, 40k, 80k per second; ``--rates``),
64-byte commands. A command's latency counts from its scheduled time, so a leader that falls
behind is charged for every command it delayed (no coordinated omission). Latency percentiles
cover the commands scheduled and completed inside the window; "failed" counts the proposals
refused (phalanx_aio's ``ProposalDropped`` once ``max_pending``, 50,000, wait) or failed. A series stops after
the first rate it falls far behind (completing under ``--behind`` of the rate, default 0.8, or
a p50 above 1 s): higher rates would only measure its backlog.

* ``phalanx_aio in leader (durable)``: SQLite ``synchronous=FULL``, members under
  ``phalanx_aio.run`` (``benchmarks/_cluster_node.py``'s open mode);
* ``PySyncObj in leader (best in-memory config)``: PySyncObj 0.3.17, in-memory journal, with the
  configuration that ``benchmarks/vs_pysyncobj.py`` found best in memory (read from
  ``benchmarks/results/vs_pysyncobj.json``: the one best at the most in-flight counts, the
  highest count breaking ties); ``--pso-config JSON`` overrides it. Without either, the tuned
  configuration issue 18 names (batching on, appendEntriesPeriod 0.01, tick 0.005, tuned GC).

Writes ``benchmarks/results/open_loop_inprocess.json`` (issue 18's results contract; the
summary is ``{"series": {label: [{"rate", "ops", "p50_ms", "p99_ms", "failed"}, ...]}}``), which
``benchmarks/report.py`` plots. About 2 minutes; ``--quick`` (three rates, 1 s each) about 20 s.
Not a test.

Usage: python benchmarks/open_loop.py [--rates 1000,2000,5000,10000,20000,40000,80000] [--seconds 4]
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import shutil
import sys
import tempfile
import time
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import cluster  # noqa: E402
import vs_pysyncobj as vs  # noqa: E402
from _results import ResultFile  # noqa: E402

from phalanx_aio._net import free_loopback_ports  # noqa: E402

RATES = "1000,2000,5000,10000,20000,40000,80000"
PHALANX_LABEL = "phalanx_aio in leader (durable)"
PSO_LABEL = "PySyncObj in leader (best in-memory config)"
FALLBACK_PSO = dict(vs.PSO_DEFAULTS, period=0.01, tick=0.005, gc="tuned")


def pso_config(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """PySyncObj's configuration for its series and where it came from."""
    if args.pso_config:
        return {**vs.PSO_DEFAULTS, **json.loads(args.pso_config)}, "--pso-config"
    path = pathlib.Path(args.vs_pysyncobj)
    if path.is_file():
        best = json.loads(path.read_text()).get("sweep", {}).get("best", {}).get("memory", {})
        if best:
            counts = collections.Counter(json.dumps(c, sort_keys=True) for c in best.values())
            top = max(counts.values())
            for n in sorted(best, key=int, reverse=True):  # the highest count breaks ties
                if counts[json.dumps(best[n], sort_keys=True)] == top:
                    return best[n], f"{path.name}: best in memory"
    return dict(FALLBACK_PSO), "fallback (no vs_pysyncobj.json)"


def series(name: str, make: Any, rates: list[float], args: argparse.Namespace) -> list[dict[str, Any]]:
    """One cluster, the rates in increasing order until the side falls far behind."""
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="phalanx-open-"))
    ids = ["n1", "n2", "n3"]
    addr = {nid: f"127.0.0.1:{p}" for nid, p in zip(ids, free_loopback_ports(3), strict=True)}
    members = [make(nid, addr, workdir) for nid in ids]
    args.impl_name = name
    out: list[dict[str, Any]] = []
    try:
        for m in members:
            m.recv()
        vs.stable_leader(members)
        for rate in rates:
            r = cluster.run_one(members, "open", rate, args.size, args)
            if r is None:  # the leader changed: once more
                vs.stable_leader(members)
                r = cluster.run_one(members, "open", rate, args.size, args)
            if r is None:
                break
            point = {k: r[k] for k in ("ops_per_s", "p50", "p99", "p999", "dropped", "errors", "cpu_leader")}
            point["rate"] = rate
            out.append(point)
            print(
                f"  {name}: {rate:>8,.0f}/s -> {r['ops_per_s']:>8,.0f} ops/s  p50 {r['p50']:>8.1f}"
                f"  p99 {r['p99']:>8.1f} ms  failed {r['dropped'] + r['errors']}",
                flush=True,
            )
            p50 = r["p50"] if r["p50"] == r["p50"] else float("inf")
            if r["ops_per_s"] < args.behind * rate or p50 > 1000.0:
                print(f"  {name}: far behind at {rate:,.0f}/s; the series stops here", flush=True)
                break
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"  {name}: a member failed ({exc!r}); the series stops here", flush=True)
        out.append({"failure": repr(exc)})
    finally:
        for m in members:
            m.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default=RATES, help=f"proposals per second, comma-separated (default {RATES})")
    ap.add_argument("--seconds", type=float, default=4.0, help="measured seconds per rate")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each rate")
    ap.add_argument("--size", type=int, default=64, help="command size in bytes")
    ap.add_argument("--behind", type=float, default=0.8, help="stop a series under this share of its rate")
    ap.add_argument(
        "--pso-config", help="PySyncObj's configuration as JSON (keys of vs_pysyncobj.PSO_DEFAULTS)"
    )
    ap.add_argument("--vs-pysyncobj", default=str(HERE / "results" / "vs_pysyncobj.json"))
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 rates, 1 s each")
    ap.add_argument("--json", default=str(HERE / "results" / "open_loop_inprocess.json"))
    args = ap.parse_args()
    if args.quick:
        args.rates, args.seconds, args.warmup = "1000,10000,80000", 1.0, 0.5
    rates = [float(r) for r in args.rates.split(",")]
    cfg, source = pso_config(args)
    args.py_spy = args.cprofile = None  # what cluster.run_one looks for
    settings = {k: v for k, v in vars(args).items() if k not in ("py_spy", "cprofile")}
    settings |= {
        "pso_config_used": cfg,
        "pso_config_source": source,
        "phalanx_aio": "SQLite synchronous=FULL, gRPC loopback, Config.lan(), phalanx_aio.run, in the leader",
        "pysyncobj": "0.3.17, in-memory journal, TCP loopback, in the leader",
        "latency": "from the scheduled time",
    }
    result = ResultFile("open_loop_inprocess", settings)
    t0 = time.monotonic()
    print(f"PySyncObj configuration: {vs.config_label(cfg)} ({source})", flush=True)
    runs = [
        (PHALANX_LABEL, vs.phalanx_maker("phalanx")),
        (PSO_LABEL, vs.pso_maker("memory", cfg)),
    ]
    rounds = []
    summary: dict[str, Any] = {"series": {}}
    for label, make in runs:
        print(label, flush=True)
        points = series(label, make, rates, args)
        rounds.append({"round": 1, "series": label, "points": points})
        summary["series"][label] = [
            {
                "rate": p["rate"],
                "ops": p["ops_per_s"],
                "p50_ms": p["p50"],
                "p99_ms": p["p99"],
                "failed": p["dropped"] + p["errors"],  # refused (backpressure) or failed proposals
            }
            for p in points
            if "failure" not in p
        ]
    result.settings["elapsed_s"] = time.monotonic() - t0
    out = result.write(args.json, rounds, summary)
    print(f"written to {out} after {(time.monotonic() - t0) / 60:.1f} minutes")


if __name__ == "__main__":
    main()
