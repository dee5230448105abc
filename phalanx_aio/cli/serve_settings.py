"""The settings of ``phalanx-aio serve`` (see :mod:`phalanx_aio.cli.serve`): its flags, the TOML
keys and ``PHALANX_*`` variables that mirror them, the timing presets and resource limits, and
:func:`resolve_settings`, which merges them into one checked :class:`ServeSettings`.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import pathlib
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from phalanx_aio._grpc import parse_address
from phalanx_aio.core.config import Config
from phalanx_aio.errors import ConfigError

__all__ = [
    "DEFAULT_LISTEN",
    "LIMITS",
    "PRESETS",
    "Limit",
    "ServeSettings",
    "add_serve_arguments",
    "plaintext_warning",
    "resolve_settings",
]

PRESETS: dict[str, Callable[[], Config]] = {
    "lan": Config.lan,
    "global-mesh": Config.global_mesh,
    "global-mesh-adaptive": Config.global_mesh_adaptive,
}
"""The timing presets ``serve --preset`` accepts."""


DEFAULT_LISTEN = "127.0.0.1:7000"
"""Where ``serve`` listens when ``--listen`` is not given (and where the client commands look
for the local node by default)."""


@dataclass(frozen=True, slots=True)
class Limit:
    """One numeric resource limit of ``serve``: its default, its least value, whether it is a
    whole number, and the help text of its flag (``--NAME`` with ``-``, env ``PHALANX_NAME``)."""

    default: float
    minimum: float
    whole: bool
    help: str


LIMITS: dict[str, Limit] = {
    "max_connections": Limit(1000, 1, True, "inbound connections open at once; more are closed on arrival"),
    "max_connection_rate": Limit(
        100, 0.001, False, "new inbound connections set up per second; the others wait unread"
    ),
    "handshake_timeout": Limit(
        10.0, 0.001, False, "seconds for a new connection to finish TLS and open its first call"
    ),
    "max_concurrent_streams": Limit(100, 1, True, "calls one connection may have open (HTTP/2)"),
    "peer_keepalive": Limit(1.0, 0, False, "seconds between PINGs on peer connections (0: none)"),
    "peer_keepalive_timeout": Limit(
        4.0, 0.001, False, "seconds a PING may go unanswered before the peer counts as unreachable"
    ),
    "max_stream_buffer_bytes": Limit(4 << 20, 1, True, "answer bytes in one KV Stream message"),
    "max_connection_buffer_bytes": Limit(
        64 << 20, 1, True, "KV bytes buffered for one connection's calls (answers, partial requests)"
    ),
    "max_buffer_bytes": Limit(256 << 20, 1, True, "KV bytes buffered for all calls together"),
    "quota_bytes": Limit(
        512 << 20,
        0,
        True,
        "KV data plus the log since the last snapshot before writes that add data are refused (0: none)",
    ),
    "stall_timeout": Limit(30.0, 0.001, False, "seconds a KV call may hold buffered bytes without progress"),
    "max_sessions": Limit(50_000, 1, True, "client sessions kept (replicated: the same on every member)"),
    "max_session_bytes": Limit(
        64 << 20, 1, True, "bytes of all sessions' remembered results (replicated: the same on every member)"
    ),
    "session_ttl": Limit(
        100_000,
        1,
        True,
        "applied commands an unused session lives (replicated: the same on every member)",
    ),
}
"""The resource limits ``serve`` takes as flags, environment variables and TOML keys
(``docs/operations.md``, "Limits and their defaults")."""


@dataclass(slots=True)
class ServeSettings:
    """Everything ``serve`` needs, validated."""

    id: str
    listen: str
    data_dir: pathlib.Path
    peers: dict[str, str] = field(default_factory=dict)
    preset: str = "lan"
    cluster_id: str = "phalanx"
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    tls_bind_ids: bool = False
    """Accept a peer's messages only if its client certificate names its node id (mutual TLS)."""
    http: str | None = None
    """HOST:PORT of the observability endpoint (``/healthz``, ``/status``, ``/metrics``), if any."""
    join: str | None = None
    """HOST:PORT of a member to join the cluster through."""
    discover: str | None = None
    """NAME[:PORT] whose A/AAAA records list members to join through (port: ours by default)."""
    auto_promote: bool = True
    """When joining: ask for promotion to voter once caught up."""
    advertise: str | None = None
    """HOST:PORT the other members and clients reach this node at, when it is not ``listen``
    (a wildcard bind, a container behind NAT); see :attr:`address`."""
    log_format: str = "text"
    """``text`` or ``json`` (one JSON object per line); see ``phalanx_aio.observability.logs``."""
    log_level: str = "info"
    """``debug``, ``info``, ``warning`` or ``error``."""
    max_request_bytes: int = 4 << 20
    """The largest KV request message a client may send; larger ones are refused unread."""
    bootstrap: bool = False
    """Found a new cluster (with the ``peers`` as the other founders) if this node has no store
    yet. Without it a node with no store must join; see :func:`serve`."""
    limits: dict[str, float] = field(default_factory=dict)
    """Resource limits given (keys of :data:`LIMITS`); the others keep their defaults."""

    def limit(self, name: str) -> float:
        """The value of the limit ``name`` (a key of :data:`LIMITS`): given, or its default."""
        return self.limits.get(name, LIMITS[name].default)

    @property
    def address(self) -> str:
        """The address this node gives the cluster: ``advertise``, else ``listen``."""
        return self.advertise or self.listen

    @property
    def joining(self) -> bool:
        """True when this node joins a running cluster (``--join`` or ``--discover``)."""
        return self.join is not None or self.discover is not None


_ENV = {
    "id": "PHALANX_ID",
    "listen": "PHALANX_LISTEN",
    "data_dir": "PHALANX_DATA_DIR",
    "peers": "PHALANX_PEERS",
    "preset": "PHALANX_PRESET",
    "cluster_id": "PHALANX_CLUSTER_ID",
    "tls_cert": "PHALANX_TLS_CERT",
    "tls_key": "PHALANX_TLS_KEY",
    "tls_ca": "PHALANX_TLS_CA",
    "tls_bind_ids": "PHALANX_TLS_BIND_IDS",
    "http": "PHALANX_HTTP",
    "join": "PHALANX_JOIN",
    "discover": "PHALANX_DISCOVER",
    "log_format": "PHALANX_LOG_FORMAT",
    "log_level": "PHALANX_LOG_LEVEL",
    "max_request_bytes": "PHALANX_MAX_REQUEST_BYTES",
    "bootstrap": "PHALANX_BOOTSTRAP",
    "advertise": "PHALANX_ADVERTISE",
    "no_auto_promote": "PHALANX_NO_AUTO_PROMOTE",
}
_ENV.update({name: f"PHALANX_{name.upper()}" for name in LIMITS})


_CONFIG_ENV = "PHALANX_CONFIG"


_TOML_ALIASES = {"peer": "peers"}
"""TOML keys that name a setting by another name: ``peer`` is the flag's name, ``peers`` the
setting's (both are accepted)."""


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the ``serve`` flags (defaults are None so files and environment can fill in)."""
    p.add_argument(
        "--config",
        metavar="FILE",
        help="a TOML file with the same settings: each key is a long flag without its dashes "
        "('-' or '_' alike), e.g. data-dir = \"d1\", no-auto-promote = true, peer = [\"n2=h:7002\"] "
        "(env PHALANX_CONFIG)",
    )
    p.add_argument("--id", help="this node's id (env PHALANX_ID)")
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help=f"where to serve peers and clients; 0.0.0.0 or [::] binds every interface and needs "
        f"--advertise (default {DEFAULT_LISTEN}; env PHALANX_LISTEN)",
    )
    p.add_argument(
        "--advertise",
        metavar="HOST:PORT",
        help="the address other members and clients reach this node at, given to the cluster "
        "(default: --listen; env PHALANX_ADVERTISE)",
    )
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="text lines, or JSON lines with node_id and term (default text; env PHALANX_LOG_FORMAT)",
    )
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="the least severe level logged (default info; env PHALANX_LOG_LEVEL)",
    )
    p.add_argument(
        "--peer",
        action="append",
        metavar="ID=HOST:PORT",
        help="a founding member (repeat; env PHALANX_PEERS, comma-separated)",
    )
    p.add_argument("--data-dir", help="where the SQLite database lives (env PHALANX_DATA_DIR)")
    p.add_argument(
        "--preset",
        choices=list(PRESETS),
        help="timing preset: lan (default), global-mesh (fixed 4-8 s election window) or "
        "global-mesh-adaptive (election timeout derived from measured round trips); env PHALANX_PRESET",
    )
    p.add_argument(
        "--cluster-id",
        help="refuse peers and clients of other clusters (default 'phalanx'; env PHALANX_CLUSTER_ID)",
    )
    p.add_argument("--tls-cert", help="this node's certificate (PEM); enables TLS (env PHALANX_TLS_CERT)")
    p.add_argument("--tls-key", help="the certificate's private key (PEM; env PHALANX_TLS_KEY)")
    p.add_argument(
        "--tls-ca",
        help="CA bundle peers' and clients' certificates must chain to (mutual TLS; env PHALANX_TLS_CA)",
    )
    p.add_argument(
        "--tls-bind-ids",
        action="store_const",
        const="true",
        help="with --tls-ca: accept a peer only if its certificate names its node id (common name, or a "
        "DNS or URI subject alternative name); without it any certificate of the CA may claim any "
        "id (env PHALANX_TLS_BIND_IDS=true)",
    )
    p.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="serve /healthz, /status and /metrics (Prometheus) over HTTP here (env PHALANX_HTTP)",
    )
    p.add_argument(
        "--join",
        metavar="HOST:PORT",
        help="join a running cluster through this member: learn the members, be added as a learner, "
        "catch up, then be promoted to voter (env PHALANX_JOIN); idempotent across restarts",
    )
    p.add_argument(
        "--discover",
        metavar="NAME[:PORT]",
        help="like --join, finding members through the A/AAAA records of a DNS name (port: this "
        "node's listen port unless given; env PHALANX_DISCOVER)",
    )
    p.add_argument(
        "--bootstrap",
        action="store_const",
        const="true",
        help="found a new cluster (with the --peer founders) if this node has no store yet; needed "
        "on the first start only, ignored once the store exists (env PHALANX_BOOTSTRAP=true)",
    )
    p.add_argument(
        "--max-request-bytes",
        metavar="N",
        help="refuse KV request messages larger than N bytes before reading them (default 4 MiB, "
        "at least 64 KiB; env PHALANX_MAX_REQUEST_BYTES)",
    )
    for name, lim in LIMITS.items():
        default = int(lim.default) if lim.whole else lim.default
        p.add_argument(
            "--" + name.replace("_", "-"),
            metavar="N",
            help=f"{lim.help} (default {default}; env PHALANX_{name.upper()})",
        )
    p.add_argument(
        "--no-auto-promote",
        action="store_const",
        const="true",
        help="with --join/--discover: stay a learner until promoted by hand (env "
        "PHALANX_NO_AUTO_PROMOTE=true)",
    )


def _parse_peers(items: list[str], where: str) -> dict[str, str]:
    peers: dict[str, str] = {}
    for item in items:
        nid, sep, addr = item.strip().partition("=")
        if not sep or not nid or ":" not in addr:
            raise ConfigError(f"{where}: peer {item!r} is not ID=HOST:PORT")
        if nid in peers:
            raise ConfigError(f"{where}: peer {nid!r} given twice")
        peers[nid] = addr
    return peers


def _check_address(value: str, what: str) -> str:
    try:
        _host, port = parse_address(value, listen=True)
    except ValueError as exc:
        raise ConfigError(f"{what} {value!r} is not HOST:PORT with a port in 1-65535 ({exc})") from None
    if port == 0:
        raise ConfigError(f"{what} {value!r} is not HOST:PORT with a port in 1-65535")
    return value


def _check_bool(value: object, flag: str) -> bool:
    text = str(value).strip().lower() if value is not None else "false"
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{flag} must be true or false, not {value!r}")


def _check_request_bytes(value: object) -> int:
    from phalanx_aio.kv.service import MIN_REQUEST_BYTES

    if value is None:
        return 4 << 20
    text = str(value).strip()
    if not text.isdigit() or int(text) < MIN_REQUEST_BYTES:
        raise ConfigError(f"--max-request-bytes must be a whole number >= {MIN_REQUEST_BYTES}, not {text!r}")
    return int(text)


def _check_limit(name: str, value: object) -> float:
    lim = LIMITS[name]
    text = str(value).strip()
    flag = "--" + name.replace("_", "-")
    try:
        number = int(text) if lim.whole else float(text)
    except ValueError:
        kind = "a whole number" if lim.whole else "a number"
        raise ConfigError(f"{flag} must be {kind}, not {text!r}") from None
    if not number >= lim.minimum:
        raise ConfigError(f"{flag} must be at least {lim.minimum}, not {text!r}")
    return number


def _split_discover(value: str) -> tuple[str, str | None]:
    """``NAME[:PORT]`` -> ``(name, port)``; the port is ``None`` when not given."""
    name, sep, port = value.rpartition(":") if value.count(":") == 1 else ("", "", "")
    return (name, port) if sep else (value, None)


def _check_discover(value: str) -> str:
    name, port = _split_discover(value)
    if port is not None and (not port.isdigit() or not 0 < int(port) < 65536):
        raise ConfigError(f"--discover {value!r} is not NAME or NAME:PORT with a port in 1-65535")
    if not name or any(c.isspace() for c in name):
        raise ConfigError(f"--discover {value!r} is not a DNS name")
    return value


def resolve_settings(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> ServeSettings:
    """Merge the TOML file, the environment and the flags; raise :class:`ConfigError` with a
    one-line reason on anything missing or malformed."""
    env = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    config_file = args.config or env.get(_CONFIG_ENV) or None
    if config_file:
        path = pathlib.Path(config_file)
        try:
            raw = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"--config {path}: {exc.strerror or exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"--config {path}: not valid TOML: {exc}") from exc
        doc: dict[str, Any] = {}
        for given, value in raw.items():
            key = given.replace("-", "_")
            key = _TOML_ALIASES.get(key, key)
            if key not in _ENV:
                raise ConfigError(
                    f"--config {path}: unknown setting {given!r} (the keys are the long flags of "
                    "'phalanx-aio serve --help' without their dashes)"
                )
            if key in doc:
                raise ConfigError(f"--config {path}: {given!r} given twice")
            doc[key] = value
        for key, value in doc.items():
            if key == "peers":
                if isinstance(value, dict):
                    merged["peers"] = {str(k): str(v) for k, v in value.items()}
                elif isinstance(value, list):
                    merged["peers"] = _parse_peers([str(v) for v in value], str(path))
                else:
                    raise ConfigError(f"--config {path}: peers must be a table or a list")
            elif isinstance(value, bool):
                merged[key] = "true" if value else "false"
            elif isinstance(value, str | int | float):
                merged[key] = str(value)
            else:
                raise ConfigError(f"--config {path}: {key} must be a string, number or boolean")
    for key, var in _ENV.items():
        if var in env and env[var] != "":
            merged[key] = _parse_peers(env[var].split(","), var) if key == "peers" else env[var]
    for key in _ENV:
        flag_value = getattr(args, "peer" if key == "peers" else key, None)
        if flag_value is not None:
            merged[key] = _parse_peers(flag_value, "--peer") if key == "peers" else flag_value
    merged.setdefault("listen", DEFAULT_LISTEN)
    for key in ("id", "listen", "data_dir"):
        if not merged.get(key):
            flag = "--" + key.replace("_", "-")
            raise ConfigError(f"{flag} is required (or {_ENV[key]}, or '{key}' in --config)")
    settings = ServeSettings(
        id=str(merged["id"]),
        listen=_check_address(str(merged["listen"]), "--listen"),
        data_dir=pathlib.Path(merged["data_dir"]),
        peers=dict(merged.get("peers", {})),
        preset=str(merged.get("preset", "lan")),
        cluster_id=str(merged.get("cluster_id", "phalanx")),
        tls_cert=merged.get("tls_cert"),
        tls_key=merged.get("tls_key"),
        tls_ca=merged.get("tls_ca"),
        tls_bind_ids=_check_bool(merged.get("tls_bind_ids"), "--tls-bind-ids"),
        http=_check_address(str(merged["http"]), "--http") if merged.get("http") else None,
        join=_check_address(str(merged["join"]), "--join") if merged.get("join") else None,
        discover=_check_discover(str(merged["discover"])) if merged.get("discover") else None,
        auto_promote=not _check_bool(merged.get("no_auto_promote"), "--no-auto-promote"),
        advertise=_check_address(str(merged["advertise"]), "--advertise")
        if merged.get("advertise")
        else None,
        log_format=str(merged.get("log_format", "text")),
        log_level=str(merged.get("log_level", "info")).lower(),
        max_request_bytes=_check_request_bytes(merged.get("max_request_bytes")),
        bootstrap=_check_bool(merged.get("bootstrap"), "--bootstrap"),
        limits={name: _check_limit(name, merged[name]) for name in LIMITS if merged.get(name) is not None},
    )
    if settings.bootstrap and settings.joining:
        raise ConfigError("--bootstrap founds a new cluster; --join/--discover join a running one: give one")
    if settings.log_format not in ("text", "json"):
        raise ConfigError(f"--log-format must be text or json, not {settings.log_format!r}")
    if settings.log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"--log-level must be debug, info, warning or error, not {settings.log_level!r}")
    if settings.preset not in PRESETS:
        raise ConfigError(f"--preset must be one of {', '.join(PRESETS)}, not {settings.preset!r}")
    if settings.join and settings.discover:
        raise ConfigError("give --join or --discover, not both")
    if settings.advertise is not None and _wildcard(settings.advertise):
        raise ConfigError(
            f"--advertise {settings.advertise}: the other members dial this address; give one they "
            "can reach, not a wildcard"
        )
    if _wildcard(settings.listen) and settings.advertise is None:
        raise ConfigError(
            f"--listen {settings.listen} binds every interface, but this node gives its address to "
            "the cluster: add --advertise HOST:PORT, the address the other members reach it at "
            "(not a wildcard)"
        )
    if settings.joining and settings.peers:
        raise ConfigError("--peer founds a new cluster; --join/--discover join a running one: give one")
    if settings.id in settings.peers:
        raise ConfigError(f"--peer lists this node's own id {settings.id!r}")
    if (settings.tls_key or settings.tls_ca) and not settings.tls_cert:
        raise ConfigError("--tls-key and --tls-ca need --tls-cert")
    if settings.tls_bind_ids and not settings.tls_ca:
        raise ConfigError("--tls-bind-ids needs mutual TLS: give --tls-cert and --tls-ca")
    return settings


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _wildcard(address: str) -> bool:
    """Whether ``HOST:PORT`` names every interface rather than one address."""
    return address.rpartition(":")[0].strip("[]") in ("", "0.0.0.0", "::")


def plaintext_warning(s: ServeSettings) -> str | None:
    """What ``serve`` warns at start when it listens beyond loopback without TLS (else ``None``):
    without TLS a peer's id is whatever the caller claims."""
    if s.tls_cert or _loopback_only(s.listen):
        return None
    return (
        f"{s.id}: listening on {s.listen} without TLS: anyone who reaches this port can send Raft "
        "messages and snapshots as any member (a peer's id is whatever the caller claims) and act "
        "as a client; beyond a trusted network use --tls-cert, --tls-ca and --tls-bind-ids "
        "(docs/operations.md, Security)"
    )


def _loopback_only(listen: str) -> bool:
    """Whether ``listen`` (``HOST:PORT``) binds loopback addresses only."""
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a wildcard (empty), or a name that may resolve anywhere
        return False
