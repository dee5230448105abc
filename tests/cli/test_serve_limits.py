"""``serve``'s resource limits (issue 23): flags, environment and TOML, their defaults (the
library's own), refusal of bad values, and the warning when listening beyond loopback without
TLS."""

from __future__ import annotations

import inspect
import pathlib

import pytest

from phalanx_aio.cli.main import build_parser
from phalanx_aio.cli.serve import LIMITS, ServeSettings, plaintext_warning, resolve_settings
from phalanx_aio.errors import ConfigError
from phalanx_aio.kv import KVService, SessionLimits
from phalanx_aio.transport.grpc import GrpcTransport

BASE = ["--id", "n1", "--listen", "127.0.0.1:7001", "--data-dir", "d"]


def settings(argv: list[str], env: dict[str, str] | None = None) -> ServeSettings:
    return resolve_settings(build_parser().parse_args(["serve", *BASE, *argv]), env or {})


def test_the_defaults_are_the_librarys() -> None:
    """``serve`` passes every limit explicitly: its defaults must be the classes' defaults."""
    transport = inspect.signature(GrpcTransport).parameters
    service = inspect.signature(KVService).parameters
    library = {
        "max_connections": transport["max_connections"].default,
        "max_connection_rate": transport["max_connection_rate"].default,
        "handshake_timeout": transport["handshake_timeout"].default,
        "max_concurrent_streams": transport["max_concurrent_streams"].default,
        "peer_keepalive": transport["keepalive_interval"].default,
        "peer_keepalive_timeout": transport["keepalive_timeout"].default,
        "max_stream_buffer_bytes": service["max_stream_buffer_bytes"].default,
        "max_connection_buffer_bytes": service["max_connection_buffer_bytes"].default,
        "max_buffer_bytes": service["max_buffer_bytes"].default,
        "stall_timeout": service["stall_timeout"].default,
        "quota_bytes": service["quota_bytes"].default,
        "max_sessions": SessionLimits().max_sessions,
        "max_session_bytes": SessionLimits().max_session_bytes,
        "session_ttl": SessionLimits().session_ttl,
    }
    assert library == {name: lim.default for name, lim in LIMITS.items()}
    s = settings([])
    assert all(s.limit(name) == lim.default for name, lim in LIMITS.items())


def test_limits_from_flags_environment_and_toml(tmp_path: pathlib.Path) -> None:
    cfg = tmp_path / "n1.toml"
    cfg.write_text('max_sessions = 7\nstall_timeout = "2.5"\n')
    s = settings(
        ["--config", str(cfg), "--max-connections", "20", "--peer-keepalive", "0"],
        {"PHALANX_MAX_BUFFER_BYTES": "1048576", "PHALANX_MAX_SESSIONS": "9"},
    )
    assert s.limit("max_connections") == 20
    assert s.limit("peer_keepalive") == 0  # keepalive off
    assert s.limit("max_buffer_bytes") == 1 << 20
    assert s.limit("max_sessions") == 9  # the environment beats the file
    assert s.limit("stall_timeout") == 2.5
    assert s.limit("session_ttl") == SessionLimits().session_ttl


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-connections", "0"], "--max-connections must be at least 1"),
        (["--max-connections", "1.5"], "--max-connections must be a whole number"),
        (["--stall-timeout", "soon"], "--stall-timeout must be a number"),
        (["--max-session-bytes", "-1"], "--max-session-bytes must be at least 1"),
    ],
)
def test_bad_limits_are_one_line_errors(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings(argv)


@pytest.mark.parametrize(
    ("listen", "tls", "warns"),
    [
        ("127.0.0.1:7001", False, False),
        ("[::1]:7001", False, False),
        ("localhost:7001", False, False),
        ("10.0.0.1:7001", False, True),
        ("0.0.0.0:7001", False, True),
        (":7001", False, True),
        ("n1.example:7001", False, True),
        ("10.0.0.1:7001", True, False),
    ],
)
def test_plaintext_beyond_loopback_is_warned_about(listen: str, tls: bool, warns: bool) -> None:
    s = ServeSettings(id="n1", listen=listen, data_dir=pathlib.Path("d"), tls_cert="n1.pem" if tls else None)
    warning = plaintext_warning(s)
    assert (warning is not None) is warns
    if warning is not None:
        assert "without TLS" in warning and "whatever the caller claims" in warning


async def test_serve_stops_at_once_when_the_node_loop_fails(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node whose loop failed serves nothing: ``serve`` must end (exit status 1 from the CLI)
    instead of living on, so that a supervisor restarts it."""
    import asyncio

    from phalanx_aio._net import free_loopback_ports
    from phalanx_aio.cli.serve import NodeFailed, serve
    from phalanx_aio.node import RaftNode

    (port,) = free_loopback_ports(1)
    argv = ["--id", "n1", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path), "--bootstrap"]
    s = resolve_settings(build_parser().parse_args(["serve", *argv]), {})
    ready = asyncio.Event()
    task = asyncio.create_task(serve(s, ready=ready))
    await asyncio.wait_for(ready.wait(), 30)

    def broken(self: RaftNode, core: object, ev: object) -> None:
        raise RuntimeError("injected failure")

    monkeypatch.setattr(RaftNode, "_handle", broken)  # the next tick fails the node's loop
    with pytest.raises(NodeFailed, match="injected failure"):
        await asyncio.wait_for(task, 30)
