"""The flags and subcommand parsers of the ``phalanx-aio`` client commands (see
:mod:`phalanx_aio.cli.client_cmds`): :data:`CLIENT_FLAGS`, which go before or after the
subcommand and each have an environment variable, how a flag's value is found
(:func:`client_setting`), and the parsers of ``put``, ``get``, ``delete``, ``cas``, ``status``,
``members``, ``transfer-leader`` and ``version``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from phalanx_aio.errors import ConfigError

__all__ = [
    "CLIENT_COMMANDS",
    "CLIENT_FLAGS",
    "CONSISTENCIES",
    "CONSISTENCY_ENV",
    "DEFAULT_ENDPOINT",
    "GLOBAL_PREFIX",
    "WRITE_OUT",
    "ClientFlag",
    "add_client_flags",
    "add_client_parsers",
    "client_setting",
    "global_flags_given",
]

CLIENT_COMMANDS = frozenset({"put", "get", "delete", "cas", "status", "members", "transfer-leader"})
"""The subcommands this module adds (besides ``version``)."""

DEFAULT_ENDPOINT = "127.0.0.1:7000"
"""Where the client commands go when no endpoint is given: the local node, at the default
``serve --listen`` address."""

WRITE_OUT = ("simple", "json", "table")
"""The ``-w/--write-out`` formats."""


@dataclass(frozen=True, slots=True)
class ClientFlag:
    """One flag every client command takes, before or after the subcommand."""

    flags: tuple[str, ...]
    env: str
    help: str
    metavar: str | None = None
    parse: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None
    switch: bool = False
    """A flag without a value (its variable takes true or false)."""


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


CLIENT_FLAGS: dict[str, ClientFlag] = {
    "endpoints": ClientFlag(
        ("--endpoints",),
        "PHALANX_ENDPOINTS",
        f"some or all of the cluster's nodes (default {DEFAULT_ENDPOINT}, the local node)",
        metavar="HOST:PORT[,HOST:PORT...]",
    ),
    "cluster_id": ClientFlag(
        ("--cluster-id",), "PHALANX_CLUSTER_ID", "the cluster's id (default 'phalanx')", metavar="ID"
    ),
    "timeout": ClientFlag(
        ("--timeout",),
        "PHALANX_TIMEOUT",
        "seconds one command may take, retries included (default 5)",
        metavar="SECONDS",
        parse=_positive_float,
    ),
    "tls_ca": ClientFlag(
        ("--tls-ca",),
        "PHALANX_TLS_CA",
        "connect with TLS: the CA bundle the nodes' certificates must chain to (PEM)",
        metavar="FILE",
    ),
    "tls_cert": ClientFlag(
        ("--tls-cert",),
        "PHALANX_TLS_CERT",
        "with --tls-ca: this client's certificate, for mutual TLS (PEM)",
        metavar="FILE",
    ),
    "tls_key": ClientFlag(
        ("--tls-key",), "PHALANX_TLS_KEY", "the client certificate's private key (PEM)", metavar="FILE"
    ),
    "write_out": ClientFlag(
        ("-w", "--write-out"),
        "PHALANX_WRITE_OUT",
        "output format: simple, json or table (default simple; table for status)",
        choices=WRITE_OUT,
    ),
    "hex": ClientFlag(
        ("--hex",),
        "PHALANX_HEX",
        "values in hexadecimal: VALUE and EXPECTED as given, and values as printed",
        switch=True,
    ),
}
"""The client flags, by ``argparse`` dest. Each has an environment variable; a flag wins over
its variable, and a flag after the subcommand over the same flag before it."""

GLOBAL_PREFIX = "global_"
"""The dest prefix of a client flag given before the subcommand."""

_GROUP_PREFIX = "group_"
"""The dest prefix of a client flag given between ``members`` and its action."""


def _given(args: argparse.Namespace, name: str) -> Any:
    """Client flag ``name`` as given on the command line: after the subcommand, else between
    ``members`` and its action, else before the subcommand; ``None`` if not given."""
    for prefix in ("", _GROUP_PREFIX, GLOBAL_PREFIX):
        value = getattr(args, prefix + name, None)
        if value is not None:
            return value
    return None


def add_client_flags(parser: argparse.ArgumentParser, *, prefix: str = "") -> None:
    """Declare :data:`CLIENT_FLAGS` on ``parser`` (dest ``prefix + name``, default ``None``)."""
    title = "client options (before or after the subcommand)" if prefix else "client options"
    group = parser.add_argument_group(title)
    for name, f in CLIENT_FLAGS.items():
        help_text = f"{f.help}; env {f.env}"
        if f.switch:
            group.add_argument(*f.flags, dest=prefix + name, action="store_const", const=True, help=help_text)
        elif f.parse is not None:
            group.add_argument(*f.flags, dest=prefix + name, metavar=f.metavar, type=f.parse, help=help_text)
        else:
            group.add_argument(
                *f.flags, dest=prefix + name, metavar=f.metavar, choices=f.choices, help=help_text
            )


def _truthy(text: str, var: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{var} must be true or false, not {text!r}")


def client_setting(args: argparse.Namespace, name: str, env: Mapping[str, str]) -> Any:
    """The value of client flag ``name``: given after the subcommand, else before it, else by
    its environment variable (parsed and checked: a bad value raises :class:`ConfigError`
    naming the variable); ``None`` if none of them gives it."""
    value = _given(args, name)
    if value is not None:
        return value
    f = CLIENT_FLAGS[name]
    text = env.get(f.env, "").strip()
    if not text:
        return None
    if f.switch:
        return True if _truthy(text, f.env) else None
    if f.choices is not None and text not in f.choices:
        raise ConfigError(f"{f.env} must be one of {', '.join(f.choices)}, not {text!r}")
    if f.parse is not None:
        try:
            return f.parse(text)
        except argparse.ArgumentTypeError as exc:
            raise ConfigError(f"{f.env}: {exc}") from None
    return text


def global_flags_given(args: argparse.Namespace) -> list[str]:
    """The client flags given before the subcommand, by their long names."""
    return [
        CLIENT_FLAGS[name].flags[-1]
        for name in CLIENT_FLAGS
        if getattr(args, GLOBAL_PREFIX + name, None) is not None
    ]


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    add_client_flags(common)
    return common


def _member_spec(text: str) -> tuple[str, str]:
    """``ID=HOST:PORT`` of ``members change --add``; argparse turns the error into exit 2."""
    nid, sep, address = text.partition("=")
    if not sep or not nid or not address:
        raise argparse.ArgumentTypeError(f"expected ID=HOST:PORT, got {text!r}")
    return nid, address


def add_client_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the client subcommands and ``version`` to ``sub`` (the ``phalanx-aio`` subparsers)."""
    common = _common()

    put = sub.add_parser(
        "put",
        parents=[common],
        help="set KEY to VALUE",
        description="Set KEY to VALUE. Without VALUE, the value is all of standard input, byte for "
        "byte (with --hex: hexadecimal digits, white space ignored).",
    )
    put.add_argument("key")
    put.add_argument("value", nargs="?", help="the value (default: read standard input)")

    get = sub.add_parser(
        "get",
        parents=[common],
        help="print the value of KEY",
        description="Print the value of KEY; exit 3 (and say 'not found' on stderr) if it is absent.",
    )
    get.add_argument("key")
    get.add_argument(
        "--consistency",
        choices=CONSISTENCIES,
        default=None,
        help=f"read consistency (default linearizable; env {CONSISTENCY_ENV})",
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
            "member's applied index). -w table (the default) has a header; simple has none."
        ),
    )

    members = sub.add_parser(
        "members", help="list or change the cluster's members", description="List or change the members."
    )
    add_client_flags(members, prefix=_GROUP_PREFIX)  # also: members --endpoints X list
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
    change = msub.add_parser(
        "change",
        parents=[common],
        help="several changes in one step (joint consensus when the voters change)",
        description="Add, promote and remove members in one step. When the voters change, the "
        "leader goes through a joint configuration (a majority of the old voters and one of the "
        "new decide until the new configuration is committed). Each flag may be repeated.",
    )
    spec = {"metavar": "ID=HOST:PORT", "type": _member_spec}
    for flag, what in (("--add", "add a voter"), ("--add-learner", "add a learner")):
        change.add_argument(flag, action="append", default=[], help=what, **spec)  # type: ignore[arg-type]
    for flag, what in (("--promote", "turn a learner into a voter"), ("--remove", "remove a member")):
        change.add_argument(flag, action="append", default=[], metavar="ID", help=what)

    transfer = sub.add_parser(
        "transfer-leader",
        parents=[common],
        help="hand leadership to another voter",
        description="Hand leadership to voter --to (default: the most up-to-date one); print the new leader.",
    )
    transfer.add_argument("--to", metavar="ID", help="the voter to hand leadership to")

    version = sub.add_parser(
        "version",
        help="print the version of phalanx-aio and of what it runs on",
        description="Print the version of phalanx-aio, of Python and of the libraries it depends on.",
    )
    version.add_argument("-w", "--write-out", choices=("simple", "json"), default=None, help="simple or json")


CONSISTENCIES = ("linearizable", "lease", "stale")
CONSISTENCY_ENV = "PHALANX_CONSISTENCY"
