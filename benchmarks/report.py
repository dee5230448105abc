"""Regenerate the performance figures of the docs from the committed result files.

Reads whatever of issue 18's result files exist in ``benchmarks/results/``
(``vs_pysyncobj.json``, ``vs_etcd.json``, ``open_loop_inprocess.json``, ``open_loop_client.json``,
``hop.json``) and rewrites

* the tables of ``docs/performance.md`` between marker comments ``<!-- report:NAME -->`` and
  ``<!-- /report:NAME -->`` (NAME: ``vs_pysyncobj``, ``open_loop``, ``vs_etcd``, ``hop``,
  ``targets``);
* README.md's performance lines between ``<!-- report:readme -->`` and ``<!-- /report:readme -->``;
* the plot ``docs/img/latency_throughput.png``: log-x throughput against p50 and p99 latency,
  every series of both open-loop files (needs matplotlib).

A figure with no result behind it reads "not measured yet". ``--check`` changes nothing and
exits 1 if the pages are not what the results give (the plot is not compared).

Usage: python benchmarks/report.py [--check]
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import check_targets  # noqa: E402

NOT_MEASURED = "not measured yet"
OPEN_LOOP_FILES = ("open_loop_inprocess", "open_loop_client")


# ---------------------------------------------------------------------- formatting


def _ok(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and x == x


def ops(x: Any) -> str:
    return f"{x:,.0f}" if _ok(x) else "-"


def ms(x: Any) -> str:
    if not _ok(x):
        return "-"
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 1 else f"{x:.2f}"


def ratio(x: Any) -> str:
    return f"x{x:.2f}" if _ok(x) else "-"


def provenance(doc: dict[str, Any]) -> str:
    """When, on what tree and how loaded the machine was."""
    m = doc.get("machine") or {}
    commit = doc.get("commit")
    before, after = m.get("loadavg_before") or [], m.get("loadavg_after") or []
    load = f"load average {before[0]:.1f} before, {after[0]:.1f} after" if before and after else ""
    parts = [
        f"`{doc.get('benchmark', '?')}`",
        f"measured {doc.get('created', '?')}",
        f"commit `{commit[:10]}`" if commit else "commit unknown",
        f"{m.get('cpus', '?')} CPUs, Python {m.get('python', '?')}",
        load,
    ]
    return "Source: " + ", ".join(p for p in parts if p) + "."


def _config_label(cfg: Any) -> str:
    if not isinstance(cfg, dict):
        return ""
    try:
        import vs_pysyncobj  # the label is the benchmark's own (it imports phalanx_aio)

        return vs_pysyncobj.config_label(cfg)
    except ImportError:
        return ", ".join(f"{k} {v}" for k, v in cfg.items())


# ---------------------------------------------------------------------- sections


SIDES = (
    ("phalanx_run", "phalanx_aio durable, `phalanx_aio.run`", None),
    ("phalanx_asyncio", "phalanx_aio durable, plain `asyncio.run`", "ratio_asyncio_vs_run"),
    ("phalanx_run_batch", "phalanx_aio durable, `propose_many` (100 per call), `phalanx_aio.run`", None),
    ("pso_best_memory", "PySyncObj best in memory", "ratio_memory"),
    ("pso_best_durable", "PySyncObj best durable (flushed per batch)", "ratio_durable"),
)


def per_entry_flush(doc: dict[str, Any], n: str) -> float | None:
    """PySyncObj durable with batching off (a flush per entry): its best sweep figure at ``n``."""
    recs = (doc.get("sweep") or {}).get("records") or []
    figs = [
        r["ops_per_s"]
        for r in recs
        if r.get("kind") == "durable"
        and str(r.get("inflight")) == n
        and not (r.get("config") or {}).get("use_batch", True)
        and _ok(r.get("ops_per_s"))
    ]
    return max(figs) if figs else None


def section_vs_pysyncobj(doc: dict[str, Any] | None) -> str:
    if doc is None:
        return f"phalanx_aio against PySyncObj: {NOT_MEASURED}."
    out = [
        "Closed loop, proposals made inside the leader's process (no client hop), 64-byte commands, "
        "three processes on loopback. ops/s and latency are medians over the rounds; the last "
        "column is phalanx_aio under `phalanx_aio.run` divided by that row, each ratio taken "
        "within its round (for plain `asyncio.run`: that row divided by `phalanx_aio.run`). The "
        "`propose_many` row is callers that batch (N / 100 tasks, 100 commands per call, each "
        "command counted with its call's latency); its ratios follow the table.",
        "",
        "| in flight | side | ops/s | p50 ms | p99 ms | ratio |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    notes: list[str] = []
    batched: list[str] = []
    for n, s in (doc["summary"].get("inflight") or {}).items():
        for key, name, rkey in SIDES:
            f = s.get(key) or {}
            label = name
            if f.get("config"):
                label += f": {_config_label(f['config'])}"
            out.append(
                f"| {int(n):,} | {label} | {ops(f.get('ops'))} | {ms(f.get('p50_ms'))} | "
                f"{ms(f.get('p99_ms'))} | {ratio(s.get(rkey)) if rkey else ''} |"
            )
        if (s.get("phalanx_run_batch") or {}).get("ops") is not None:
            batched.append(
                f"{int(n):,} in flight: {ratio(s.get('ratio_batch_memory'))} PySyncObj's best in memory, "
                f"{ratio(s.get('ratio_batch_durable'))} its best durable"
            )
        pef = per_entry_flush(doc, n)
        run = (s.get("phalanx_run") or {}).get("ops")
        if isinstance(pef, float | int) and pef > 0 and isinstance(run, float | int):
            notes.append(
                f"{int(n):,} in flight: {ops(pef)} ops/s flushing every entry, x{run / pef:.1f} "
                f"(against x{_fmt2(s.get('ratio_durable'))} with its flush per batch)"
            )
    out.append("")
    if batched:
        head = "Callers that batch (`propose_many`), ratios within each round: "
        out.append(head + "; ".join(batched) + ".")
        out.append("")
    if notes:
        out.append(
            "PySyncObj flushing every entry (batching off; one short sweep run, so a rougher "
            "figure), beside the batched flush above: " + "; ".join(notes) + "."
        )
        out.append("")
    rounds = len(doc.get("rounds") or [])
    st = doc.get("settings") or {}
    out.append(
        f"{rounds} round(s) of {st.get('seconds', '?')} s per run after {st.get('warmup', '?')} s of "
        f"warm-up; the sweep behind the best configurations ran each for {st.get('sweep_seconds', '?')} s "
        f"(`sweep` in the result file). {provenance(doc)}"
    )
    return "\n".join(out)


def _fmt2(x: Any) -> str:
    return f"{x:.2f}" if _ok(x) else "-"


def section_open_loop(docs: dict[str, dict[str, Any]]) -> str:
    found = [(name, docs[name]) for name in OPEN_LOOP_FILES if name in docs]
    if not found:
        return f"Open-loop sweep: {NOT_MEASURED}."
    out = [
        "Proposals at a fixed rate, latency counted from each one's scheduled time (no "
        "coordinated omission), over the commands scheduled and completed inside the measured "
        'window; a series stops after the rate it falls far behind ("-": none completed inside it).',
        "",
        "| series | offered /s | ops/s | p50 ms | p99 ms | refused or failed |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for _, doc in found:
        for label, points in (doc["summary"].get("series") or {}).items():
            for p in points:
                out.append(
                    f"| {label} | {ops(p.get('rate'))} | {ops(p.get('ops'))} | {ms(p.get('p50_ms'))} "
                    f"| {ms(p.get('p99_ms'))} | {ops(p.get('failed'))} |"
                )
    out.append("")
    out += [provenance(doc) for _, doc in found]
    missing = [name for name in OPEN_LOOP_FILES if name not in docs]
    if missing:
        out.append(f"`{missing[0]}.json`: {NOT_MEASURED}.")
    return "\n".join(out)


def section_vs_etcd(doc: dict[str, Any] | None) -> str:
    if doc is None:
        return f"The client path against etcd: {NOT_MEASURED}."
    s = doc["summary"]
    out = [
        f"Through the client path: a load generator in its own process, {s.get('connections', '?')} "
        "connection(s), against three etcd members and three `phalanx-aio serve` members (KVClient, "
        "durable), 64-byte values. Ratios are phalanx_aio / etcd within each round, then the median.",
        "",
        "| callers | system | ops/s | p50 ms | p99 ms | load generator CPU s/s | servers CPU s/s "
        "| leader CPU µs/op | ops ratio | p50 ratio |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, c in (s.get("callers") or {}).items():
        for system in ("etcd", "phalanx"):
            f = c.get(system) or {}
            cpu_op = f.get("leader_cpu_us_per_op")
            is_ours = system == "phalanx"
            name = "phalanx_aio" if is_ours else "etcd"
            if f.get("config"):
                name += f" ({f['config']})"
            tail = (
                f"{ms(cpu_op)} | {ratio(c.get('ratio_ops'))} | {ratio(c.get('ratio_p50'))}"
                if is_ours
                else " | |"
            )
            out.append(
                f"| {n} | {name} | {ops(f.get('ops'))} | {ms(f.get('p50_ms'))} | {ms(f.get('p99_ms'))} "
                f"| {_fmt2(f.get('loadgen_cpu_s_per_s'))} | {_fmt2(f.get('server_cpu_s_per_s'))} | {tail} |"
            )
    perf = s.get("etcdctl_check_perf")
    out.append("")
    if isinstance(perf, dict):
        shown = [f"{k}: {v}" for k, v in perf.items() if not isinstance(v, dict | list) and k != "raw"]
        out.append("`etcdctl check perf`, same machine: " + ("; ".join(shown) or "see the result file") + ".")
        out.append("")
    out.append(provenance(doc))
    return "\n".join(out)


def _us(x: Any) -> str:
    return f"{x:,.0f}" if _ok(x) else "-"


def section_hop(doc: dict[str, Any] | None) -> str:
    """One message hop between two processes: a bare socket against grpclib, per wake-up gap."""
    if doc is None:
        return f"One message hop, grpclib against a bare socket: {NOT_MEASURED}."
    s = doc["summary"]
    size = (doc.get("settings") or {}).get("size", "?")
    out = [
        f"An echo server in one process, a client in another, {size}-byte messages on loopback, "
        f"{s.get('loop', '?')} on both sides; the client sleeps the gap between round trips. Medians "
        "of the rounds; server CPU is what the echoing process spends per message received and "
        "sent back.",
        "",
        "| gap between round trips | side | round trip p50 µs | p99 µs | server CPU µs per echo "
        "| client CPU µs per round trip | p50 ratio |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for gap, entry in (s.get("gaps") or {}).items():
        for kind, name in (("raw", "bare asyncio socket"), ("grpclib", "grpclib stream")):
            f = entry.get(kind) or {}
            tail = ratio(entry.get("ratio_rtt_p50")) if kind == "grpclib" else ""
            out.append(
                f"| {gap} ms | {name} | {_us(f.get('rtt_p50_us'))} | {_us(f.get('rtt_p99_us'))} "
                f"| {_us(f.get('server_cpu_us_per_echo'))} | {_us(f.get('client_cpu_us_per_round_trip'))} "
                f"| {tail} |"
            )
    out += ["", provenance(doc)]
    return "\n".join(out)


def section_targets(results: dict[str, dict[str, Any]]) -> str:
    out = ["| target | status | figures |", "|---|---|---|"]
    for t in check_targets.evaluate(results):
        out.append(f"| {t.number}. {t.name} | **{t.status}** | {t.figures or NOT_MEASURED} |")
    return "\n".join(out)


def section_readme(results: dict[str, dict[str, Any]]) -> str:
    """README's lines: the in-process comparison and the client path, each figure with its
    latency and conditions."""
    vs, etcd = results.get("vs_pysyncobj"), results.get("vs_etcd")
    lines = []
    s = (vs or {}).get("summary", {}).get("inflight", {})
    if s:
        lines += [
            "In the leader's process (`node.propose()` in the leader, no client hop), durable (SQLite "
            "FULL), against PySyncObj's best configuration of each kind in the same run:",
            "",
            "| in flight | `phalanx_aio.run`: ops/s, p50 / p99 ms | plain `asyncio.run`: ops/s, p50 / p99 ms "
            "| x PySyncObj in memory | x PySyncObj durable (flushed per batch) |",
            "|---:|---:|---:|---:|---:|",
        ]
        for n in sorted(s, key=int):
            run, aio = s[n].get("phalanx_run") or {}, s[n].get("phalanx_asyncio") or {}
            lines.append(
                f"| {int(n):,} | {ops(run.get('ops'))}, {ms(run.get('p50_ms'))} / {ms(run.get('p99_ms'))} "
                f"| {ops(aio.get('ops'))}, {ms(aio.get('p50_ms'))} / {ms(aio.get('p99_ms'))} "
                f"| {ratio(s[n].get('ratio_memory'))} | {ratio(s[n].get('ratio_durable'))} |"
            )
        lines.append("")
    else:
        lines.append(f"* In the leader's process, against PySyncObj: {NOT_MEASURED}.")
    c = (etcd or {}).get("summary", {}).get("callers", {})
    if c:
        lines += [
            "Through the client path (`KVClient` in another process, durable), against a three-member "
            "etcd in the same run:",
            "",
            "| callers | phalanx_aio: ops/s, p50 / p99 ms | etcd: ops/s, p50 / p99 ms |",
            "|---:|---:|---:|",
        ]
        for n in sorted(c, key=int):
            ours, theirs = c[n].get("phalanx") or {}, c[n].get("etcd") or {}
            lines.append(
                f"| {n} | {ops(ours.get('ops'))}, {ms(ours.get('p50_ms'))} / {ms(ours.get('p99_ms'))} "
                f"| {ops(theirs.get('ops'))}, {ms(theirs.get('p50_ms'))} / {ms(theirs.get('p99_ms'))} |"
            )
        lines.append("")
    else:
        lines.append(f"* Through the client path, against etcd: {NOT_MEASURED}.")
        lines.append("")
    created = sorted(str(d.get("created")) for d in (vs, etcd) if d)
    when = f", measured {created[-1][:10]}" if created else ""
    lines.append(
        f"Figures from `benchmarks/results/` (written by `benchmarks/report.py`{when}); the method\n"
        "and every table are on the [performance page](docs/performance.md)."
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------- pages and plot


def replace_section(text: str, name: str, body: str) -> tuple[str, bool]:
    """``text`` with what stands between ``name``'s markers replaced by ``body``; False if the
    markers are not there."""
    pat = re.compile(rf"(<!-- report:{re.escape(name)} -->\n).*?(<!-- /report:{re.escape(name)} -->)", re.S)
    if not pat.search(text):
        return text, False
    return pat.sub(lambda m: m.group(1) + body.rstrip("\n") + "\n" + m.group(2), text, count=1), True


def sections(results: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {
        "vs_pysyncobj": section_vs_pysyncobj(results.get("vs_pysyncobj")),
        "open_loop": section_open_loop(results),
        "vs_etcd": section_vs_etcd(results.get("vs_etcd")),
        "hop": section_hop(results.get("hop")),
        "targets": section_targets(results),
    }


def render(text: str, bodies: dict[str, str]) -> tuple[str, list[str]]:
    """The page with every section whose markers it has replaced; the names it lacked."""
    missing = []
    for name, body in bodies.items():
        text, found = replace_section(text, name, body)
        if not found:
            missing.append(name)
    return text, missing


def plot(results: dict[str, dict[str, Any]], path: pathlib.Path) -> bool:
    """The latency-against-throughput plot of every open-loop series (False: no matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(9, 5.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    i = 0
    for name in OPEN_LOOP_FILES:
        for label, points in (results.get(name, {}).get("summary", {}).get("series") or {}).items():
            pts = [p for p in points if _ok(p.get("ops")) and p["ops"] > 0]
            if not pts:
                continue
            c = colours[i % len(colours)]
            i += 1
            x = [p["ops"] for p in pts]
            ax.plot(x, [p.get("p50_ms") for p in pts], "-o", color=c, label=f"{label}: p50")
            ax.plot(x, [p.get("p99_ms") for p in pts], "--^", color=c, label=f"{label}: p99", alpha=0.8)
    if i:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, NOT_MEASURED, ha="center", va="center", transform=ax.transAxes, fontsize=16)
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_xlabel("completed operations per second (log scale)")
    ax.set_ylabel("latency from the scheduled time, ms (log scale)")
    ax.set_title("Open loop, three members on loopback, 64-byte commands")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=str(HERE / "results"), help="the result files' directory")
    ap.add_argument("--page", default=str(ROOT / "docs" / "performance.md"))
    ap.add_argument("--readme", default=str(ROOT / "README.md"))
    ap.add_argument("--png", default=str(ROOT / "docs" / "img" / "latency_throughput.png"))
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a page is stale")
    args = ap.parse_args()
    results = check_targets.load_results(args.results)
    print(f"result files: {', '.join(sorted(results)) or 'none'}")
    stale = []
    for path, bodies in (
        (pathlib.Path(args.page), sections(results)),
        (pathlib.Path(args.readme), {"readme": section_readme(results)}),
    ):
        old = path.read_text()
        new, missing = render(old, bodies)
        for name in missing:
            print(f"{path.name}: no <!-- report:{name} --> markers; that section is left out")
        if new != old:
            stale.append(path.name)
            if not args.check:
                path.write_text(new)
                print(f"{path} rewritten")
    if args.check:
        if stale:
            print(f"stale: {', '.join(stale)} (run python benchmarks/report.py)")
            return 1
        print("the pages match the results")
        return 0
    if plot(results, pathlib.Path(args.png)):
        print(f"{args.png} written")
    else:
        print("matplotlib is not installed: no plot")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
