"""The client subcommands of ``phalanx-aio``: ``put``, ``get``, ``delete``, ``cas``, ``status``,
``members`` and ``transfer-leader``, each a thin wrapper around :class:`~phalanx_aio.kv.KVClient`.

Output is plain and script-friendly: one answer per line on stdout, nothing else. Exit status:

* 0: the operation succeeded;
* 1: it failed: the cluster was unreachable or leaderless, refused the request, or the outcome
  is unknown. One line on stderr says which; never a traceback;
* 2: bad arguments (usage on stderr);
* 3: the operation ran but the answer is "no": ``get`` found no such key, ``cas`` did not swap.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence

from phalanx_aio._grpc import parse_address
from phalanx_aio.errors import ConfigError, LocalError, NotApplied, OutcomeUnknown, PhalanxError
from phalanx_aio.kv.client import KVClient, RequestRefused
from phalanx_aio.kv.messages import Member, StatusResponse

__all__ = ["CLIENT_COMMANDS", "EXIT_FAILED", "EXIT_NO", "EXIT_OK", "add_client_parsers", "run_client_command"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NO = 3

CLIENT_COMMANDS = frozenset({"put", "get", "delete", "cas", "status", "members", "transfer-leader"})
"""The subcommands this module adds."""

_ENDPOINTS_ENV = "PHALANX_ENDPOINTS"
_CLUSTER_ENV = "PHALANX_CLUSTER_ID"


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--endpoints",
        metavar="HOST:PORT[,HOST:PORT...]",
        help=f"some or all of the cluster's nodes (env {_ENDPOINTS_ENV})",
    )
    common.add_argument("--cluster-id", help=f"the cluster's id (env {_CLUSTER_ENV}; default 'phalanx')")
    common.add_argument(
        "--timeout", type=_positive_float, default=5.0, help="seconds one command may take (default 5)"
    )
    common.add_argument(
        "--tls-ca", help="connect with TLS: the CA bundle the nodes' certificates must chain to (PEM)"
    )
    common.add_argument("--tls-cert", help="with --tls-ca: this client's certificate, for mutual TLS (PEM)")
    common.add_argument("--tls-key", help="the client certificate's private key (PEM)")
    return common


def add_client_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the client subcommands to ``sub`` (the ``phalanx-aio`` subparsers)."""
    common = _common()

    put = sub.add_parser("put", parents=[common], help="set KEY to VALUE", description="Set KEY to VALUE.")
    put.add_argument("key")
    put.add_argument("value")

    get = sub.add_parser(
        "get",
        parents=[common],
        help="print the value of KEY",
        description="Print the value of KEY; exit 3 (and say 'not found' on stderr) if it is absent.",
    )
    get.add_argument("key")
    get.add_argument(
        "--consistency",
        choices=["linearizable", "lease", "stale"],
        default="linearizable",
        help="read consistency (default linearizable)",
    )

    delete = sub.add_parser(
        "delete", parents=[common], help="remove KEY", description="Remove KEY; print 'deleted' or 'absent'."
    )
    delete.add_argument("key")

    cas = sub.add_parser(
        "cas",
        parents=[common],
        help="set KEY to VALUE if it holds EXPECTED",
        description=(
            "Set KEY to VALUE if it holds EXPECTED (with --expect-absent: if it is absent; then omit "
            "EXPECTED). Prints 'swapped' (exit 0) or 'not swapped' (exit 3)."
        ),
    )
    cas.add_argument("key")
    cas.add_argument("args", nargs="+", metavar="[EXPECTED] VALUE")
    cas.add_argument("--expect-absent", action="store_true", help="swap only if KEY is absent")

    sub.add_parser(
        "status",
        parents=[common],
        help="a table of every member's state",
        description=(
            "Ask every member for its state and print one row each: id, address, voter or learner, "
            "role, term, commit index, applied index and lag (the leader's commit index minus the "
            "member's applied index)."
        ),
    )

    members = sub.add_parser(
        "members", help="list or change the cluster's members", description="List or change the members."
    )
    msub = members.add_subparsers(dest="action", required=True, metavar="ACTION")
    msub.add_parser("list", parents=[common], help="print the members: ID ADDRESS voter|learner")
    add = msub.add_parser("add", parents=[common], help="add a member (a learner unless --voter)")
    add.add_argument("id")
    add.add_argument("address", metavar="HOST:PORT")
    add.add_argument("--voter", action="store_true", help="add it as a voter at once")
    remove = msub.add_parser("remove", parents=[common], help="remove a member")
    remove.add_argument("id")
    promote = msub.add_parser("promote", parents=[common], help="turn a learner into a voter")
    promote.add_argument("id")

    transfer = sub.add_parser(
        "transfer-leader",
        parents=[common],
        help="hand leadership to another voter",
        description="Hand leadership to voter --to (default: the most up-to-date one); print the new leader.",
    )
    transfer.add_argument("--to", metavar="ID", help="the voter to hand leadership to")


def _endpoints(args: argparse.Namespace, env: Mapping[str, str]) -> list[str]:
    text = args.endpoints if args.endpoints is not None else env.get(_ENDPOINTS_ENV, "")
    endpoints = [e.strip() for e in text.split(",") if e.strip()]
    if not endpoints:
        raise ConfigError(f"--endpoints is required (or {_ENDPOINTS_ENV})")
    return endpoints


def _out(line: str) -> None:
    print(line, flush=True)


def _out_bytes(value: bytes) -> None:
    """Write ``value`` as it is (not decoded), then a newline."""
    sys.stdout.flush()
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:  # a text-only stream (rare): decode what we can
        print(value.decode("utf-8", errors="backslashreplace"), flush=True)
        return
    buffer.write(value + b"\n")
    buffer.flush()


def _member_lines(members: Sequence[Member]) -> None:
    for m in sorted(members, key=lambda m: m.node_id):
        _out(f"{m.node_id} {m.address or '-'} {'learner' if m.learner else 'voter'}")


async def _status_table(kv: KVClient) -> int:
    first = await kv.status()
    members = sorted(first.members, key=lambda m: m.node_id)
    if not members:
        members = [Member(first.node_id, "", False)]

    async def ask(m: Member) -> StatusResponse | str:
        if not m.address:
            return "no address"
        try:
            return await kv.status(m.address)
        except PhalanxError as exc:
            return str(exc)

    answers = await asyncio.gather(*(ask(m) for m in members))
    ok = [a for a in answers if isinstance(a, StatusResponse)]
    leaders = [a for a in ok if a.role == "leader"]
    leader = max(leaders, key=lambda a: a.term) if leaders else None
    rows = [("ID", "ADDRESS", "KIND", "ROLE", "TERM", "COMMIT", "APPLIED", "LAG")]
    for m, a in zip(members, answers, strict=True):
        kind = "learner" if m.learner else "voter"
        if isinstance(a, StatusResponse):
            lag = str(max(leader.commit_index - a.applied_index, 0)) if leader is not None else "-"
            rows.append(
                (
                    m.node_id,
                    m.address or "-",
                    kind,
                    a.role,
                    str(a.term),
                    str(a.commit_index),
                    str(a.applied_index),
                    lag,
                )
            )
        else:
            rows.append((m.node_id, m.address or "-", kind, "unreachable", "-", "-", "-", "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        _out("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    if leader is None:
        print("phalanx-aio: no member reports a leader", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


async def _run(args: argparse.Namespace, kv: KVClient) -> int:
    cmd = args.command
    if cmd == "put":
        await kv.put(args.key, args.value)
        _out("OK")
        return EXIT_OK
    if cmd == "get":
        value = await kv.get(args.key, consistency=args.consistency)
        if value is None:
            print(f"phalanx-aio: {args.key}: not found", file=sys.stderr)
            return EXIT_NO
        _out_bytes(value)
        return EXIT_OK
    if cmd == "delete":
        _out("deleted" if await kv.delete(args.key) else "absent")
        return EXIT_OK
    if cmd == "cas":
        swapped = await kv.cas(args.key, args.expected, args.value)
        _out("swapped" if swapped else "not swapped")
        return EXIT_OK if swapped else EXIT_NO
    if cmd == "status":
        return await _status_table(kv)
    if cmd == "members":
        actions: dict[str, Callable[[], Awaitable[tuple[Member, ...]]]] = {
            "list": kv.members,
            "add": lambda: kv.add_member(args.id, args.address, voter=args.voter),
            "remove": lambda: kv.remove_member(args.id),
            "promote": lambda: kv.promote(args.id),
        }
        _member_lines(await actions[args.action]())
        return EXIT_OK
    if cmd == "transfer-leader":
        _out(await kv.transfer_leader(args.to))
        return EXIT_OK
    raise ConfigError(f"unknown command {cmd!r}")  # pragma: no cover


def _check_cas_args(args: argparse.Namespace) -> None:
    rest: list[str] = args.args
    if args.expect_absent:
        if len(rest) != 1:
            raise ConfigError("cas --expect-absent takes KEY VALUE")
        args.expected, args.value = None, rest[0]
    else:
        if len(rest) != 2:
            raise ConfigError("cas takes KEY EXPECTED VALUE (or KEY VALUE with --expect-absent)")
        args.expected, args.value = rest


def _client_ssl(args: argparse.Namespace) -> ssl.SSLContext | None:
    ca, cert, key = args.tls_ca, args.tls_cert, args.tls_key
    if ca is None:
        if cert is not None or key is not None:
            raise ConfigError("--tls-cert and --tls-key need --tls-ca")
        return None
    if key is not None and cert is None:
        raise ConfigError("--tls-key needs --tls-cert")
    from phalanx_aio.transport.grpc import client_ssl_context

    try:
        return client_ssl_context(ca, certfile=cert, keyfile=key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"TLS setup failed: {exc}") from None


async def _tls_problem(endpoints: Sequence[str], tls: ssl.SSLContext | None) -> str | None:
    """After a failure: say so if the first endpoint that answers refuses us at the TLS level
    (or speaks TLS to a plain client); ``None`` if TLS is not the problem."""
    for endpoint in endpoints:
        try:
            host, port = parse_address(endpoint)
        except ValueError:
            continue
        try:
            probe = tls
            if probe is None:  # does the node speak TLS to a client that does not?
                probe = ssl.create_default_context()
                probe.check_hostname, probe.verify_mode = False, ssl.CERT_NONE
            async with asyncio.timeout(1.0):
                reader, writer = await asyncio.open_connection(host, int(port), ssl=probe)
            if tls is None:
                writer.close()
                return f"{endpoint} speaks TLS: give --tls-ca (and --tls-cert, --tls-key for mutual TLS)"
            try:
                async with asyncio.timeout(0.5):
                    # A gRPC server speaks first (HTTP/2 settings). With TLS 1.3 a refused client
                    # certificate shows only now, as the end of the stream right after the handshake.
                    first = await reader.read(1)
            finally:
                writer.close()
            if not first:
                return (
                    f"{endpoint} closed the connection after the TLS handshake: it did not accept this "
                    "client's certificate (mutual TLS needs --tls-cert and --tls-key signed by the "
                    "cluster's CA)"
                )
        except ssl.SSLError as exc:
            if tls is None:
                return None
            reason = exc.reason or str(exc)
            return f"TLS refused by {endpoint} ({reason}): check --tls-ca, --tls-cert and --tls-key"
        except (OSError, TimeoutError, ValueError):
            continue
        return None
    return None


async def _main(
    args: argparse.Namespace, endpoints: list[str], cluster_id: str, tls: ssl.SSLContext | None
) -> int:
    try:
        kv = KVClient(endpoints, cluster_id=cluster_id, timeout=args.timeout, ssl=tls)
    except LocalError as exc:
        raise ConfigError(str(exc)) from None
    async with kv:
        return await _run(args, kv)


def run_client_command(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    """Run one client subcommand on a fresh event loop; return the exit status. Raises
    :class:`~phalanx_aio.errors.ConfigError` on bad arguments (the caller exits 2)."""
    env = os.environ if environ is None else environ
    endpoints = _endpoints(args, env)
    cluster_id = args.cluster_id or env.get(_CLUSTER_ENV) or "phalanx"
    if args.command == "cas":
        _check_cas_args(args)
    tls = _client_ssl(args)
    try:
        return asyncio.run(_main(args, endpoints, cluster_id, tls))
    except ConfigError:
        raise
    except RequestRefused as exc:
        print(f"phalanx-aio: refused: {exc}", file=sys.stderr)
    except NotApplied as exc:
        problem = asyncio.run(_tls_problem(endpoints, tls))
        if problem is not None:
            print(f"phalanx-aio: {problem}", file=sys.stderr)
        else:
            print(f"phalanx-aio: not applied (cluster unreachable or leaderless?): {exc}", file=sys.stderr)
    except OutcomeUnknown as exc:
        print(f"phalanx-aio: outcome unknown: {exc}", file=sys.stderr)
    except PhalanxError as exc:
        print(f"phalanx-aio: {exc}", file=sys.stderr)
    return EXIT_FAILED
