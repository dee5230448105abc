"""The client subcommands of ``phalanx-aio``: ``put``, ``get``, ``delete``, ``cas``, ``status``,
``members`` and ``transfer-leader``, each a thin wrapper around :class:`~phalanx_aio.kv.KVClient`,
and ``version``.

The client flags (:data:`CLIENT_FLAGS`) go before or after the subcommand, each has an
environment variable, and the endpoint defaults to the local node (:data:`DEFAULT_ENDPOINT`).
Output is plain and script-friendly by default (one answer per line on stdout, nothing else);
``-w json`` and ``-w table`` change it. Exit status:

* 0: the operation succeeded;
* 1: it failed: the cluster was unreachable or leaderless, refused the request, or the outcome
  is unknown. One line on stderr says which; never a traceback;
* 2: bad arguments (usage on stderr);
* 3: the operation ran but the answer is "no": ``get`` found no such key, ``cas`` did not swap.
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import json
import os
import ssl
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from phalanx_aio._grpc import parse_address
from phalanx_aio.cli.client_flags import (
    CLIENT_COMMANDS,
    CLIENT_FLAGS,
    CONSISTENCIES,
    CONSISTENCY_ENV,
    DEFAULT_ENDPOINT,
    GLOBAL_PREFIX,
    WRITE_OUT,
    ClientFlag,
    _given,
    add_client_flags,
    add_client_parsers,
    client_setting,
    global_flags_given,
)
from phalanx_aio.errors import ConfigError, LocalError, NotApplied, OutcomeUnknown, PhalanxError
from phalanx_aio.kv.client import KVClient, RequestRefused
from phalanx_aio.kv.messages import Member, StatusResponse

__all__ = [
    "CLIENT_COMMANDS",
    "CLIENT_FLAGS",
    "DEFAULT_ENDPOINT",
    "EXIT_FAILED",
    "EXIT_NO",
    "EXIT_OK",
    "WRITE_OUT",
    "ClientFlag",
    "add_client_flags",
    "add_client_parsers",
    "client_setting",
    "global_flags_given",
    "run_client_command",
    "version_info",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NO = 3


def version_info() -> dict[str, str]:
    """The versions ``phalanx-aio version`` prints: the package's, Python's and its runtime
    dependencies' (``-`` for one that is not installed)."""
    import importlib.metadata
    import platform

    from phalanx_aio._version import __version__

    out = {"phalanx-aio": __version__, "python": platform.python_version()}
    for dist in ("grpclib", "betterproto", "aiosqlite", "prometheus_client", "uvloop"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "-"
    return out


def run_version(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    """``phalanx-aio version``."""
    env = os.environ if environ is None else environ
    fmt = args.write_out or getattr(args, GLOBAL_PREFIX + "write_out", None) or env.get("PHALANX_WRITE_OUT")
    info = version_info()
    if fmt == "json":
        _out(json.dumps(info))
    else:
        for name, version in info.items():
            _out(f"{name} {version}")
    return EXIT_OK


def _endpoints(text: str | None) -> list[str]:
    endpoints = [e.strip() for e in (text or DEFAULT_ENDPOINT).split(",") if e.strip()]
    if not endpoints:
        raise ConfigError("--endpoints names no endpoint")
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


def _table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        _out("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())


def _members_out(members: Sequence[Member], fmt: str) -> None:
    ordered = sorted(members, key=lambda m: m.node_id)
    if fmt == "json":
        _out(
            json.dumps(
                [
                    {"id": m.node_id, "address": m.address, "kind": "learner" if m.learner else "voter"}
                    for m in ordered
                ]
            )
        )
        return
    rows = [(m.node_id, m.address or "-", "learner" if m.learner else "voter") for m in ordered]
    if fmt == "table":
        _table([("ID", "ADDRESS", "KIND"), *rows])
    else:
        for r in rows:
            _out(" ".join(r))


_STATUS_COLUMNS = ("ID", "ADDRESS", "KIND", "ROLE", "TERM", "COMMIT", "APPLIED", "LAG")


async def _status(kv: KVClient, fmt: str) -> int:
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
    records: list[dict[str, Any]] = []
    for m, a in zip(members, answers, strict=True):
        record: dict[str, Any] = {
            "id": m.node_id,
            "address": m.address,
            "kind": "learner" if m.learner else "voter",
            "role": "unreachable",
            "term": None,
            "commit": None,
            "applied": None,
            "lag": None,
        }
        if isinstance(a, StatusResponse):
            record.update(role=a.role, term=a.term, commit=a.commit_index, applied=a.applied_index)
            if leader is not None:
                record["lag"] = max(leader.commit_index - a.applied_index, 0)
        else:
            record["error"] = a
        records.append(record)
    if fmt == "json":
        leader_id = next((r["id"] for r in records if leader is not None and r["role"] == "leader"), None)
        _out(json.dumps({"leader": leader_id, "members": records}))
    else:
        keys = ("id", "address", "kind", "role", "term", "commit", "applied", "lag")
        rows = [tuple("-" if r[k] in (None, "") else str(r[k]) for k in keys) for r in records]
        if fmt == "table":
            _table([_STATUS_COLUMNS, *rows])
        else:
            for row in rows:
                _out(" ".join(row))
    if leader is None:
        print("phalanx-aio: no member reports a leader", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _value_arg(text: str, hex_values: bool, what: str) -> bytes:
    """A value given on the command line: its bytes as typed (``os.fsencode`` gives back what the
    shell passed, whatever the encoding), or decoded from hexadecimal with ``--hex``."""
    if not hex_values:
        return os.fsencode(text)
    try:
        return binascii.unhexlify("".join(text.split()))
    except (binascii.Error, ValueError):
        raise ConfigError(f"--hex: {what} {text[:40]!r} is not hexadecimal") from None


def _stdin_value(hex_values: bool) -> bytes:
    data = sys.stdin.buffer.read()
    if not hex_values:
        return data
    return _value_arg(data.decode("ascii", errors="replace"), True, "standard input")


def _show_value(value: bytes, hex_values: bool) -> tuple[str, str]:
    """``(text, encoding)``: the value as UTF-8 text, or as hexadecimal digits with ``--hex`` or
    when it is not UTF-8."""
    if not hex_values:
        try:
            return value.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            pass
    return value.hex(), "hex"


async def _run(args: argparse.Namespace, kv: KVClient, opts: _Options) -> int:
    cmd, fmt, hx = args.command, opts.write_out, opts.hex
    if cmd == "put":
        await kv.put(os.fsencode(args.key), opts.value)
        _out(json.dumps({"key": args.key, "ok": True}) if fmt == "json" else "OK")
        return EXIT_OK
    if cmd == "get":
        value = await kv.get(os.fsencode(args.key), consistency=opts.consistency)
        if fmt == "json":
            record: dict[str, Any] = {"key": args.key, "found": value is not None}
            if value is not None:
                record["value"], record["encoding"] = _show_value(value, hx)
            _out(json.dumps(record))
        if value is None:
            print(f"phalanx-aio: {args.key}: not found", file=sys.stderr)
            return EXIT_NO
        if fmt == "table":
            text, _ = _show_value(value, hx)
            _table([("KEY", "VALUE"), (args.key, text)])
        elif fmt == "simple":
            _out_bytes(value.hex().encode() if hx else value)
        return EXIT_OK
    if cmd == "delete":
        existed = await kv.delete(os.fsencode(args.key))
        if fmt == "json":
            _out(json.dumps({"key": args.key, "deleted": existed}))
        else:
            _out("deleted" if existed else "absent")
        return EXIT_OK
    if cmd == "cas":
        swapped = await kv.cas(os.fsencode(args.key), opts.expected, opts.value)
        if fmt == "json":
            _out(json.dumps({"key": args.key, "swapped": swapped}))
        else:
            _out("swapped" if swapped else "not swapped")
        return EXIT_OK if swapped else EXIT_NO
    if cmd == "status":
        return await _status(kv, fmt)
    if cmd == "members":
        actions: dict[str, Callable[[], Awaitable[tuple[Member, ...]]]] = {
            "list": kv.members,
            "add": lambda: kv.add_member(args.id, args.address, voter=args.voter),
            "remove": lambda: kv.remove_member(args.id),
            "promote": lambda: kv.promote(args.id),
            "change": lambda: kv.change_members(
                add=dict(args.add),
                add_learners=dict(args.add_learner),
                promote=args.promote,
                remove=args.remove,
            ),
        }
        _members_out(await actions[args.action](), fmt)
        return EXIT_OK
    if cmd == "transfer-leader":
        leader = await kv.transfer_leader(args.to)
        _out(json.dumps({"leader": leader}) if fmt == "json" else leader)
        return EXIT_OK
    raise ConfigError(f"unknown command {cmd!r}")  # pragma: no cover


@dataclass(slots=True)
class _Options:
    """The client settings of one command, merged from flags and environment and checked."""

    endpoints: list[str]
    cluster_id: str
    timeout: float
    write_out: str
    hex: bool
    consistency: Any = "linearizable"
    value: bytes = b""
    expected: bytes | None = None


def _options(args: argparse.Namespace, env: Mapping[str, str]) -> _Options:
    def setting(name: str) -> Any:
        return client_setting(args, name, env)

    cmd = args.command
    opts = _Options(
        endpoints=_endpoints(setting("endpoints")),
        cluster_id=setting("cluster_id") or "phalanx",
        timeout=setting("timeout") or 5.0,
        write_out=setting("write_out") or ("table" if cmd == "status" else "simple"),
        hex=bool(setting("hex")),
    )
    if cmd == "get":
        consistency = args.consistency or env.get(CONSISTENCY_ENV, "").strip() or "linearizable"
        if consistency not in CONSISTENCIES:
            allowed = ", ".join(CONSISTENCIES)
            raise ConfigError(f"{CONSISTENCY_ENV} must be one of {allowed}, not {consistency!r}")
        opts.consistency = consistency
    elif cmd == "put":
        if args.value is None:
            opts.value = _stdin_value(opts.hex)
        else:
            opts.value = _value_arg(args.value, opts.hex, "VALUE")
    elif cmd == "cas":
        rest: list[str] = args.args
        if args.expect_absent:
            if len(rest) != 1:
                raise ConfigError("cas --expect-absent takes KEY VALUE")
            opts.value = _value_arg(rest[0], opts.hex, "VALUE")
        else:
            if len(rest) != 2:
                raise ConfigError("cas takes KEY EXPECTED VALUE (or KEY VALUE with --expect-absent)")
            opts.expected = _value_arg(rest[0], opts.hex, "EXPECTED")
            opts.value = _value_arg(rest[1], opts.hex, "VALUE")
    return opts


def _client_ssl(args: argparse.Namespace, env: Mapping[str, str]) -> ssl.SSLContext | None:
    from phalanx_aio.cli._tls import tls_context

    def given(name: str) -> tuple[str, str | None]:
        """(how it was given, path)."""
        value = _given(args, name)
        if value is not None:
            return CLIENT_FLAGS[name].flags[-1], value
        var = CLIENT_FLAGS[name].env
        return var, env.get(var, "").strip() or None

    ca, cert, key = given("tls_ca"), given("tls_cert"), given("tls_key")
    if ca[1] is None:
        if cert[1] is not None or key[1] is not None:
            raise ConfigError(f"{cert[0] if cert[1] else key[0]} needs --tls-ca (or PHALANX_TLS_CA)")
        return None
    if key[1] is not None and cert[1] is None:
        raise ConfigError(f"{key[0]} needs --tls-cert (or PHALANX_TLS_CERT)")
    from phalanx_aio.transport.grpc import client_ssl_context

    cafile, certfile, keyfile = ca[1], cert[1], key[1]
    return tls_context(
        lambda: client_ssl_context(cafile, certfile=certfile, keyfile=keyfile), ca=ca, cert=cert, key=key
    )


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


async def _main(args: argparse.Namespace, opts: _Options, tls: ssl.SSLContext | None) -> int:
    try:
        kv = KVClient(opts.endpoints, cluster_id=opts.cluster_id, timeout=opts.timeout, ssl=tls)
    except LocalError as exc:
        raise ConfigError(str(exc)) from None
    async with kv:
        return await _run(args, kv, opts)


def run_client_command(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    """Run one client subcommand on a fresh event loop; return the exit status. Raises
    :class:`~phalanx_aio.errors.ConfigError` on bad arguments (the caller exits 2)."""
    env = os.environ if environ is None else environ
    opts = _options(args, env)
    tls = _client_ssl(args, env)
    try:
        return asyncio.run(_main(args, opts, tls))
    except ConfigError:
        raise
    except RequestRefused as exc:
        print(f"phalanx-aio: refused: {exc}", file=sys.stderr)
    except NotApplied as exc:
        problem = asyncio.run(_tls_problem(opts.endpoints, tls))
        if problem is not None:
            print(f"phalanx-aio: {problem}", file=sys.stderr)
        else:
            where = ",".join(opts.endpoints)
            print(
                f"phalanx-aio: not applied (cluster at {where} unreachable or leaderless?): {exc}",
                file=sys.stderr,
            )
    except OutcomeUnknown as exc:
        print(f"phalanx-aio: outcome unknown: {exc}", file=sys.stderr)
    except PhalanxError as exc:
        print(f"phalanx-aio: {exc}", file=sys.stderr)
    return EXIT_FAILED
