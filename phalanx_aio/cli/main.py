"""The ``phalanx-aio`` command line.

It carries ``sim`` (the deterministic simulator), ``serve`` and ``demo``, and the client
subcommands (``put``, ``get``, ``delete``, ``cas``, ``status``, ``members``, ``transfer-leader``;
see :mod:`phalanx_aio.cli.client_cmds`), and ``backup`` and ``restore`` (see
:mod:`phalanx_aio.cli.backup`). User errors print one line and exit with status 2 (bad
arguments) or 1 (a failed run); they never print a traceback.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from collections.abc import Callable, Sequence

from phalanx_aio.core.config import Config
from phalanx_aio.errors import ConfigError

__all__ = ["build_parser", "main"]


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number no smaller than ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def _range_ms(text: str) -> tuple[float, float]:
    try:
        low, high = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH in milliseconds, got {text!r}") from None
    if not 0.0 <= low <= high:
        raise argparse.ArgumentTypeError(f"need 0 <= LOW <= HIGH, got {text!r}")
    return low, high


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    from phalanx_aio._version import __version__
    from phalanx_aio.cli.client_flags import GLOBAL_PREFIX, add_client_flags

    parser = argparse.ArgumentParser(prog="phalanx-aio", description="An asyncio-native Raft framework.")
    parser.add_argument("--version", action="version", version=f"phalanx-aio {__version__}")
    add_client_flags(parser, prefix=GLOBAL_PREFIX)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sim = sub.add_parser(
        "sim",
        help="run the deterministic cluster simulator with faults and invariant checks",
        description=(
            "Simulate a cluster of Raft cores under a seeded workload and fault schedule, check "
            "Raft's safety invariants after every event, then heal and demand convergence. "
            "Exits 1 on any violation, printing the command that replays it."
        ),
    )
    sim.add_argument("--seed", type=_non_negative_int, default=1, help="first seed (default 1)")
    sim.add_argument("--seeds", type=_positive_int, default=1, help="how many consecutive seeds to run")
    sim.add_argument("--nodes", type=_positive_int, default=5, help="cluster size (default 5)")
    sim.add_argument("--steps", type=_positive_int, default=20_000, help="events in the fault phase")
    sim.add_argument(
        "--preset",
        choices=["lan", "global-mesh", "global-mesh-adaptive"],
        default="lan",
        help="timing preset",
    )
    sim.add_argument(
        "--mesh",
        choices=["none", "global"],
        default="none",
        help="latency model: uniform 1-10 ms, or the five-region RTT matrix",
    )
    sim.add_argument(
        "--rtt-file",
        default=None,
        help="region RTT matrix JSON (default: the five-region matrix shipped with the package)",
    )
    sim.add_argument(
        "--no-faults", dest="faults", action="store_false", help="no crashes, partitions or loss"
    )
    sim.add_argument("--no-crashes", dest="crash", action="store_false", help="faults but no crashes")
    sim.add_argument(
        "--no-partitions", dest="partitions", action="store_false", help="faults but no partitions"
    )
    sim.add_argument("--loss", type=_probability, default=0.01, help="message loss probability")
    sim.add_argument("--membership", action="store_true", help="also exercise membership changes")
    sim.add_argument(
        "--joint-changes",
        action="store_true",
        help="with --membership: also change several voters at once (joint consensus)",
    )
    sim.add_argument("--snapshot-every", type=_non_negative_int, default=0, help="compact every N entries")
    sim.add_argument(
        "--swarm",
        action="store_true",
        help="let each seed also choose the configuration (cluster size, limits, pre-vote, check quorum, "
        "snapshots, membership, transfers, background writes, triggered faults); other options are ignored",
    )
    sim.add_argument("--transfers", action="store_true", help="leadership transfers in the workload")
    sim.add_argument(
        "--background-writes",
        type=_probability,
        default=0.0,
        help="probability that a node writes a leader's own entries in the background (default 0)",
    )
    sim.add_argument(
        "--disk-ms",
        type=_range_ms,
        default=(0.2, 2.0),
        help="LOW,HIGH: how long one background write takes, in simulated ms (default 0.2,2.0)",
    )
    sim.add_argument(
        "--fault-interval-ms",
        type=float,
        default=1500.0,
        help="mean simulated time between fault actions (default 1500)",
    )
    sim.add_argument(
        "--triggers", action="store_true", help="faults armed on protocol moments (commit, election)"
    )
    sim.add_argument(
        "--no-availability",
        dest="availability",
        action="store_false",
        help="skip the availability phase (answers within a bound, no elections while healthy)",
    )
    sim.add_argument(
        "--wall-seconds",
        type=float,
        default=120.0,
        help="stop a seed that runs longer than this many seconds of wall time (default 120)",
    )
    sim.add_argument("--json", dest="json_out", default=None, help="write the results as JSON to this file")

    from phalanx_aio.cli.serve import add_serve_arguments

    serve = sub.add_parser(
        "serve",
        help="run one member of a replicated KV cluster",
        description="Run one member of a replicated KV cluster until SIGTERM or SIGINT.",
    )
    add_serve_arguments(serve)

    demo = sub.add_parser(
        "demo",
        help="run a live local three-node cluster, kill its leader mid-run, verify every write",
        description=(
            "Start a three-node cluster as separate processes on loopback gRPC with SQLite in a "
            "temporary directory, write keys from concurrent clients, SIGKILL the leader half-way, "
            "measure the failover, verify every acknowledged write, print a summary, clean up."
        ),
    )
    demo.add_argument("--seconds", type=_positive_int, default=15, help="how long to write (default 15)")
    demo.add_argument("--clients", type=_positive_int, default=16, help="concurrent writers (default 16)")
    demo.add_argument("--keep", action="store_true", help="keep the data directory and logs")

    from phalanx_aio.cli.client_cmds import add_client_parsers

    add_client_parsers(sub)

    from phalanx_aio.cli.backup import add_backup_parsers

    add_backup_parsers(sub)
    return parser


def _find_rtt(explicit: str | None) -> pathlib.Path | None:
    """The ``--rtt-file`` path, checked; ``None`` means the matrix shipped in the package."""
    if explicit is None:
        return None
    path = pathlib.Path(explicit)
    if not path.is_file():
        raise ConfigError(f"--rtt-file {explicit}: no such file")
    return path


def _cmd_sim(args: argparse.Namespace) -> int:
    from phalanx_aio.sim import (
        LivenessFailure,
        RegionLatency,
        SafetyViolation,
        SimOptions,
        load_rtt_matrix,
        run,
    )

    config = {
        "global-mesh": Config.global_mesh,
        "global-mesh-adaptive": Config.global_mesh_adaptive,
    }.get(args.preset, Config.lan)()
    mesh = None
    if args.mesh == "global":
        try:
            regions, rtt, _ = load_rtt_matrix(_find_rtt(args.rtt_file))
        except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
            raise ConfigError(f"--rtt-file {args.rtt_file}: not an RTT matrix: {exc!r}") from exc
        ids = [f"n{i + 1}" for i in range(args.nodes)]
        mesh = RegionLatency.place(rtt, regions, ids)
    results = []
    for seed in range(args.seed, args.seed + args.seeds):
        opts = SimOptions(
            seed=seed,
            nodes=args.nodes,
            steps=args.steps,
            config=config,
            faults=args.faults,
            crash=args.crash,
            partitions=args.partitions,
            loss=args.loss,
            mesh=mesh,
            membership=args.membership,
            joint_changes=args.joint_changes,
            snapshot_every=args.snapshot_every,
            swarm=args.swarm,
            transfers=args.transfers,
            background_writes=args.background_writes,
            disk_ms=args.disk_ms,
            fault_interval_ms=args.fault_interval_ms,
            triggers=args.triggers,
            availability=args.availability,
            clock=time.monotonic,
            wall_seconds=args.wall_seconds,
            liveness_ms=60_000.0 * (4 if args.preset != "lan" or mesh else 1),
        )
        try:
            res = run(opts)
        except (SafetyViolation, LivenessFailure) as exc:
            print(f"VIOLATION on seed {seed}: {exc}", file=sys.stderr)
            print(f"replay with: {opts.command()}", file=sys.stderr)
            return 1
        except AssertionError as exc:  # a core's own assertion: a bug found by the simulator
            print(f"VIOLATION on seed {seed}: a core assertion failed: {exc}", file=sys.stderr)
            print(f"replay with: {opts.command()}", file=sys.stderr)
            return 1
        print(res.summary())
        results.append(
            {
                "seed": res.seed,
                "events": res.events,
                "sim_ms": res.sim_ms,
                "elections": res.elections,
                "max_term": res.max_term,
                "committed": res.committed,
                "writes_acked": res.writes_acked,
                "reads_checked": res.reads_checked,
                "faults": dict(res.faults),
                "messages": res.messages,
                "checks": res.checks,
                "trace_hash": res.trace_hash,
                "converge_ms": res.converge_ms,
                "setup": res.setup,
                "availability_probes": res.probes,
            }
        )
    if args.seeds > 1:
        print(f"{len(results)} seeds passed: no invariant violated, every run converged after healing")
    if args.json_out:
        pathlib.Path(args.json_out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from phalanx_aio.cli.serve import JoinFailed, MemberRemoved, NodeFailed, resolve_settings, serve
    from phalanx_aio.errors import StorageError
    from phalanx_aio.node import run
    from phalanx_aio.observability.logs import configure_logging

    settings = resolve_settings(args)
    configure_logging(settings.log_format, settings.log_level)
    try:
        run(serve(settings))
    except StorageError as exc:
        print(f"phalanx-aio: storage error: {exc}", file=sys.stderr)
        return 1
    except (JoinFailed, NodeFailed) as exc:
        print(f"phalanx-aio: {exc}", file=sys.stderr)
        return 1
    except MemberRemoved as exc:
        print(f"phalanx-aio: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"phalanx-aio: cannot serve on {settings.listen}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from phalanx_aio.cli.demo import run_demo
    from phalanx_aio.node import run

    try:
        res = run(run_demo(seconds=float(args.seconds), clients=args.clients, keep=args.keep))
    except TimeoutError as exc:
        print(f"phalanx-aio demo: the cluster did not come up: {exc}", file=sys.stderr)
        return 1
    return 0 if res.lost == 0 and res.ops > 0 else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``phalanx-aio`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from phalanx_aio.cli.client_cmds import CLIENT_COMMANDS, global_flags_given, run_version

        misplaced = global_flags_given(args)
        if args.command == "version":
            misplaced = [f for f in misplaced if f != "--write-out"]
        if misplaced and args.command not in CLIENT_COMMANDS:
            raise ConfigError(
                f"{', '.join(misplaced)} before the subcommand belong to the client commands, "
                f"not to {args.command}"
            )
        if args.command == "version":
            return run_version(args)
        if args.command == "sim":
            return _cmd_sim(args)
        if args.command == "serve":
            return _cmd_serve(args)
        if args.command == "demo":
            return _cmd_demo(args)
        if args.command in ("backup", "restore"):
            from phalanx_aio.cli.backup import run_backup_command

            return run_backup_command(args)
        from phalanx_aio.cli.client_cmds import run_client_command

        if args.command in CLIENT_COMMANDS:
            return run_client_command(args)
    except ConfigError as exc:
        print(f"phalanx-aio: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.command!r}")
    return 2  # pragma: no cover  (parser.error exits)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
