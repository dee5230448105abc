"""The logic of ``benchmarks/report.py`` and ``benchmarks/check_targets.py`` (issue 18) on a tiny
synthetic results directory: which targets hold, and the docs' marker sections regenerated.
No benchmark runs here."""

from __future__ import annotations

import json
import pathlib
import sys
from types import ModuleType
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


def _load(name: str) -> ModuleType:
    saved = list(sys.path)
    sys.path.insert(0, str(BENCH))
    try:
        return __import__(name)
    finally:
        sys.path[:] = saved  # the benchmarks' folder does not stay on the path


check_targets = _load("check_targets")
report = _load("report")


def fig(ops: float, p50: float = 1.0, p99: float = 2.0, **extra: Any) -> dict[str, Any]:
    return {"ops": ops, "p50_ms": p50, "p99_ms": p99, **extra}


def vs_doc(asyncio_ratio: float = 0.95) -> dict[str, Any]:
    inflight = {}
    for n in ("100", "1000", "10000"):
        inflight[n] = {
            "phalanx_run": fig(60_000),
            "phalanx_asyncio": fig(60_000 * asyncio_ratio),
            "phalanx_run_batch": fig(90_000),
            "pso_best_memory": fig(30_000, config={"use_batch": True, "period": 0.01}),
            "pso_best_durable": fig(10_000, config={"use_batch": True, "period": 0.01}),
            "ratio_memory": 2.0,
            "ratio_durable": 6.0,
            "ratio_asyncio_vs_run": asyncio_ratio,
            "ratio_asyncio_vs_memory": 2.0 * asyncio_ratio,
            "ratio_batch_memory": 3.0,
            "ratio_batch_durable": 9.0,
        }
    sweep = {
        "records": [
            {"kind": "durable", "inflight": 100, "config": {"use_batch": False}, "ops_per_s": 1_000.0}
        ]
    }
    return {
        "benchmark": "vs_pysyncobj",
        "created": "2026-12-07T09:00:00+00:00",
        "commit": "0123456789abcdef",
        "machine": {
            "cpus": 2,
            "python": "3.11.7",
            "loadavg_before": [0.1, 0, 0],
            "loadavg_after": [1.9, 0, 0],
        },
        "settings": {"seconds": 4, "warmup": 1, "sweep_seconds": 1},
        "rounds": [{}, {}, {}],
        "summary": {"inflight": inflight},
        "sweep": sweep,
    }


def etcd_doc(p50_ours: float) -> dict[str, Any]:
    def side(ops: float, p50: float, **extra: Any) -> dict[str, Any]:
        return fig(ops, p50, loadgen_cpu_s_per_s=0.5, server_cpu_s_per_s=1.2, **extra)

    return {
        "benchmark": "vs_etcd",
        "created": "2026-12-07T09:10:00+00:00",
        "commit": None,
        "machine": {},
        "summary": {
            "connections": 8,
            "callers": {
                "1": {"etcd": side(900, 1.1), "phalanx": side(700, p50_ours, leader_cpu_us_per_op=40)},
                "64": {"etcd": side(9_000, 7.0), "phalanx": side(26_000, 2.4, leader_cpu_us_per_op=30)},
            },
            "etcdctl_check_perf": {"result": "PASS", "raw": "..."},
        },
    }


def write(tmp: pathlib.Path, **docs: dict[str, Any]) -> pathlib.Path:
    for name, doc in docs.items():
        (tmp / f"{name}.json").write_text(json.dumps(doc))
    return tmp


def statuses(results_dir: pathlib.Path) -> list[str]:
    return [t.status for t in check_targets.evaluate(check_targets.load_results(results_dir))]


def test_nothing_measured(tmp_path: pathlib.Path) -> None:
    (tmp_path / "broken.json").write_text("{not json")
    assert statuses(tmp_path) == ["NOT MEASURED"] * 4


def test_targets_hold_and_miss(tmp_path: pathlib.Path) -> None:
    write(tmp_path, vs_pysyncobj=vs_doc(0.95), vs_etcd=etcd_doc(1.0))
    assert statuses(tmp_path) == ["HOLDS"] * 4
    write(tmp_path, vs_pysyncobj=vs_doc(0.85), vs_etcd=etcd_doc(1.5))
    assert statuses(tmp_path) == ["HOLDS", "MISSED", "MISSED", "HOLDS"]


def test_a_missing_count_is_not_measured(tmp_path: pathlib.Path) -> None:
    doc = vs_doc()
    doc["summary"]["inflight"]["10000"]["ratio_memory"] = None
    write(tmp_path, vs_pysyncobj=doc)
    assert statuses(tmp_path)[0] == "NOT MEASURED"


PAGE = """# Performance
<!-- report:targets -->
old
<!-- /report:targets -->
text
<!-- report:vs_pysyncobj -->
old
<!-- /report:vs_pysyncobj -->
"""


def test_sections_between_markers(tmp_path: pathlib.Path) -> None:
    results = check_targets.load_results(write(tmp_path, vs_pysyncobj=vs_doc()))
    page, missing = report.render(PAGE, report.sections(results))
    assert set(missing) == {"open_loop", "vs_etcd", "hop"}  # no markers on this page: left out
    assert "old" not in page and page.startswith("# Performance\n") and "\ntext\n" in page
    assert "| 10,000 | phalanx_aio durable, `phalanx_aio.run` | 60,000 | 1.0 | 2.0 |  |" in page
    assert "| **HOLDS** |" in page
    assert "| 100 | phalanx_aio durable, `propose_many` (100 per call), `phalanx_aio.run` | 90,000 |" in page
    assert "1,000 in flight: x3.00 PySyncObj's best in memory, x9.00 its best durable" in page
    # the per-entry flush only beside the batched one
    assert "1,000 ops/s flushing every entry, x60.0 (against x6.00 with its flush per batch)" in page
    assert report.render(page, report.sections(results))[0] == page  # regenerating changes nothing


def test_not_measured_wording() -> None:
    bodies = report.sections({})
    assert all("not measured yet" in body for body in bodies.values())
    assert "not measured yet" in report.section_readme({})


def test_readme_figures(tmp_path: pathlib.Path) -> None:
    results = check_targets.load_results(write(tmp_path, vs_pysyncobj=vs_doc(), vs_etcd=etcd_doc(1.0)))
    text = "<!-- report:readme -->\n<!-- /report:readme -->\n"
    out, missing = report.render(text, {"readme": report.section_readme(results)})
    assert not missing
    assert "| 1,000 | 60,000, 1.0 / 2.0 | 57,000, 1.0 / 2.0 | x2.00 | x6.00 |" in out
    assert "| 1 | 700, 1.0 / 2.0 | 900, 1.1 / 2.0 |" in out


def hop_doc() -> dict[str, Any]:
    def side(p50: float, cpu: float) -> dict[str, float]:
        return {
            "rtt_p50_us": p50,
            "rtt_p99_us": 2 * p50,
            "server_cpu_us_per_echo": cpu,
            "client_cpu_us_per_round_trip": cpu + 10,
        }

    return {
        "benchmark": "hop",
        "created": "2026-12-07T10:40:00+00:00",
        "commit": None,
        "machine": {},
        "settings": {"size": 100},
        "summary": {
            "loop": "uvloop",
            "gaps": {"0": {"raw": side(80, 30), "grpclib": side(240, 120), "ratio_rtt_p50": 3.0}},
        },
    }


def test_hop_section(tmp_path: pathlib.Path) -> None:
    results = check_targets.load_results(write(tmp_path, hop=hop_doc()))
    text = "<!-- report:hop -->\nold\n<!-- /report:hop -->\n"
    out, missing = report.render(text, {"hop": report.section_hop(results["hop"])})
    assert not missing and "old" not in out
    assert "| 0 ms | bare asyncio socket | 80 | 160 | 30 | 40 |  |" in out
    assert "| 0 ms | grpclib stream | 240 | 480 | 120 | 130 | x3.00 |" in out
    assert "100-byte messages" in out and "uvloop on both sides" in out
