"""The client flags measured against etcdctl: before or after the subcommand, an environment
variable for each, a default endpoint, ``version``, and error lines that name the file."""

from __future__ import annotations

import argparse
import json
import pathlib

import pytest

from phalanx_aio.cli import client_cmds
from phalanx_aio.cli.client_cmds import CLIENT_FLAGS, DEFAULT_ENDPOINT, client_setting
from phalanx_aio.cli.main import build_parser, main
from phalanx_aio.cli.serve import DEFAULT_LISTEN
from phalanx_aio.errors import ConfigError


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def options(*argv: str, env: dict[str, str] | None = None) -> client_cmds._Options:
    return client_cmds._options(parse(*argv), env or {})


def test_flags_go_before_or_after_the_subcommand_and_after_wins() -> None:
    assert options("--endpoints", "h:1", "get", "k").endpoints == ["h:1"]
    assert options("get", "k", "--endpoints", "h:2").endpoints == ["h:2"]
    assert options("--endpoints", "h:1", "get", "k", "--endpoints", "h:2").endpoints == ["h:2"]
    assert options("-w", "json", "--timeout", "2", "members", "list").write_out == "json"
    assert options("--hex", "members", "list", "--timeout", "3").timeout == 3.0
    assert options("--cluster-id", "c9", "status").cluster_id == "c9"
    # Between "members" and its action too, as "etcdctl member list" users may write it.
    assert options("members", "--endpoints", "h:3", "list").endpoints == ["h:3"]
    assert options("--endpoints", "h:1", "members", "-w", "json", "list", "--endpoints", "h:4").endpoints == [
        "h:4"
    ]
    assert options("members", "-w", "table", "add", "n9", "h:9").write_out == "table"


def test_the_default_endpoint_is_the_local_node_at_the_default_listen_address() -> None:
    assert DEFAULT_ENDPOINT == DEFAULT_LISTEN
    opts = options("get", "k")
    assert opts.endpoints == [DEFAULT_ENDPOINT]
    assert (opts.cluster_id, opts.timeout, opts.write_out, opts.hex) == ("phalanx", 5.0, "simple", False)
    assert options("status").write_out == "table"


@pytest.mark.parametrize(
    ("name", "text", "value"),
    [
        ("endpoints", "h:1,h:2", "h:1,h:2"),
        ("cluster_id", "c7", "c7"),
        ("timeout", "2.5", 2.5),
        ("tls_ca", "ca.pem", "ca.pem"),
        ("tls_cert", "c.pem", "c.pem"),
        ("tls_key", "k.pem", "k.pem"),
        ("write_out", "json", "json"),
        ("hex", "true", True),
    ],
)
def test_every_client_flag_has_an_environment_variable(name: str, text: str, value: object) -> None:
    var = CLIENT_FLAGS[name].env
    assert var == "PHALANX_" + name.upper()
    assert client_setting(parse("get", "k"), name, {var: text}) == value
    help_text = build_parser().format_help()
    assert var in help_text  # the top-level help names each variable


def test_a_flag_wins_over_its_variable_and_a_bad_variable_is_named() -> None:
    env = {"PHALANX_ENDPOINTS": "env:1", "PHALANX_WRITE_OUT": "json", "PHALANX_HEX": "false"}
    opts = options("--endpoints", "flag:1", "get", "k", env=env)
    assert (opts.endpoints, opts.write_out, opts.hex) == (["flag:1"], "json", False)
    for var, text in [("PHALANX_TIMEOUT", "soon"), ("PHALANX_WRITE_OUT", "yaml"), ("PHALANX_HEX", "maybe")]:
        with pytest.raises(ConfigError, match=var):
            options("get", "k", env={var: text})
    with pytest.raises(ConfigError, match="PHALANX_CONSISTENCY"):
        options("get", "k", env={"PHALANX_CONSISTENCY": "eventual"})
    assert options("get", "k", env={"PHALANX_CONSISTENCY": "stale"}).consistency == "stale"


def test_hex_values_and_values_from_standard_input(monkeypatch: pytest.MonkeyPatch) -> None:
    assert options("--hex", "put", "k", "00ff 10").value == b"\x00\xff\x10"
    opts = options("cas", "k", "6869", "00", "--hex")
    assert (opts.expected, opts.value) == (b"hi", b"\x00")
    with pytest.raises(ConfigError, match="not hexadecimal"):
        options("put", "k", "zz", "--hex")

    class Stdin:
        def __init__(self, data: bytes) -> None:
            self.buffer = __import__("io").BytesIO(data)

    monkeypatch.setattr("sys.stdin", Stdin(b"\x00\x01 raw\n"))
    assert options("put", "k").value == b"\x00\x01 raw\n"  # byte for byte, newline kept
    monkeypatch.setattr("sys.stdin", Stdin(b"de ad\nbe ef\n"))
    assert options("put", "k", "--hex").value == b"\xde\xad\xbe\xef"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import phalanx_aio

    assert main(["version"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"phalanx-aio {phalanx_aio.__version__}"
    assert {line.split()[0] for line in lines} >= {"python", "grpclib", "aiosqlite", "prometheus_client"}
    assert main(["-w", "json", "version"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["phalanx-aio"] == phalanx_aio.__version__
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"phalanx-aio {phalanx_aio.__version__}"


def test_client_flags_before_another_command_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--endpoints", "h:1", "sim", "--steps", "10"]) == 2
    err = capsys.readouterr().err
    assert "--endpoints before the subcommand belong to the client commands, not to sim" in err


def test_tls_errors_name_the_file(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    cases = [
        (["--tls-ca", str(tmp_path / "missing.pem")], f"--tls-ca {tmp_path / 'missing.pem'}: no such file"),
        (["--tls-ca", str(tmp_path)], f"--tls-ca {tmp_path}: not a regular file"),
        (["--tls-ca", str(junk)], f"--tls-ca {junk} (not a PEM CA bundle)"),
    ]
    for tls, message in cases:
        assert main(["get", "k", "--endpoints", "127.0.0.1:1", *tls]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    # From the environment: the line names the variable.
    monkey = pytest.MonkeyPatch()
    try:
        monkey.setenv("PHALANX_TLS_CA", str(tmp_path / "gone.pem"))
        assert main(["get", "k", "--endpoints", "127.0.0.1:1"]) == 2
        assert f"PHALANX_TLS_CA {tmp_path / 'gone.pem'}: no such file" in capsys.readouterr().err
    finally:
        monkey.undo()


def test_serve_tls_errors_name_the_file(tmp_path: pathlib.Path) -> None:
    from phalanx_aio.cli.serve import ServeSettings, _ssl_contexts

    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    s = ServeSettings(id="n1", listen="127.0.0.1:1", data_dir=tmp_path, tls_cert=str(tmp_path / "n1.pem"))
    with pytest.raises(ConfigError, match=r"--tls-cert .*n1\.pem: no such file"):
        _ssl_contexts(s)
    s = ServeSettings(id="n1", listen="127.0.0.1:1", data_dir=tmp_path, tls_cert=str(junk), tls_key=str(junk))
    with pytest.raises(ConfigError, match=r"--tls-cert .*junk\.pem with --tls-key .*junk\.pem"):
        _ssl_contexts(s)
