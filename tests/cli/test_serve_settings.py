"""``serve``'s settings: every long flag is a TOML key and an environment variable, the
``--listen``/``--advertise`` split, and the default listen address."""

from __future__ import annotations

import argparse
import pathlib

import pytest

from phalanx_aio.cli import serve_settings as settings_mod
from phalanx_aio.cli.main import build_parser
from phalanx_aio.cli.serve import DEFAULT_LISTEN, ServeSettings, join_contacts, resolve_settings
from phalanx_aio.errors import ConfigError


def serve_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["serve"]


def long_flags() -> list[str]:
    return [
        opt
        for action in serve_parser()._actions
        for opt in action.option_strings
        if opt.startswith("--") and opt not in ("--help", "--config")
    ]


def settings(argv: list[str], env: dict[str, str] | None = None) -> ServeSettings:
    return resolve_settings(build_parser().parse_args(["serve", *argv]), env or {})


def test_every_long_flag_is_a_toml_key_and_an_environment_variable() -> None:
    names = {flag[2:].replace("-", "_") for flag in long_flags()}
    settings_names = {"peers" if n == "peer" else n for n in names}
    assert settings_names == set(settings_mod._ENV), "a flag without a TOML key or variable, or the reverse"
    for name in settings_names:
        assert settings_mod._ENV[name] == "PHALANX_" + name.upper()
    help_text = serve_parser().format_help()
    for name in settings_names - {"peers"}:
        assert settings_mod._ENV[name] in help_text.replace("\n", " ").replace("  ", ""), name


def test_the_toml_file_takes_the_long_flags_as_keys(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "n1.toml"
    config.write_text(
        'id = "n1"\n'
        'listen = "0.0.0.0:7001"\n'
        'advertise = "10.9.0.1:7001"\n'
        'data-dir = "d1"\n'
        "no-auto-promote = true\n"
        'join = "10.9.0.2:7001"\n'
        "max_connections = 7\n"
        "tls-bind-ids = false\n"
    )
    s = settings(["--config", str(config)])
    assert (s.id, s.listen, s.advertise, s.address) == (
        "n1",
        "0.0.0.0:7001",
        "10.9.0.1:7001",
        "10.9.0.1:7001",
    )
    assert s.data_dir == pathlib.Path("d1") and s.auto_promote is False and s.limit("max_connections") == 7
    config.write_text('id = "n1"\ndata_dir = "d1"\nno_auto_promote = false\npeer = ["n2=h:7002"]\n')
    s = settings([], {"PHALANX_CONFIG": str(config)})
    assert s.auto_promote is True and s.peers == {"n2": "h:7002"}
    assert settings(["--config", str(config), "--no-auto-promote"]).auto_promote is False
    assert settings(["--config", str(config)], {"PHALANX_NO_AUTO_PROMOTE": "true"}).auto_promote is False


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('id = "n1"\nauto_promote = false\n', "unknown setting 'auto_promote'"),
        ('id = "n1"\ndata-dir = "a"\ndata_dir = "b"\n', "'data_dir' given twice"),
        ('id = "n1"\nlisten = ["a"]\n', "listen must be a string, number or boolean"),
        (
            'id = "n1"\ndata-dir = "d"\nno-auto-promote = "perhaps"\n',
            "--no-auto-promote must be true or false",
        ),
    ],
)
def test_bad_toml_keys_and_values_are_refused(tmp_path: pathlib.Path, text: str, message: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message):
        settings(["--config", str(config)])


def test_listen_defaults_to_the_local_node() -> None:
    s = settings(["--id", "n1", "--data-dir", "d"])
    assert s.listen == DEFAULT_LISTEN and s.address == DEFAULT_LISTEN and s.advertise is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--listen", "0.0.0.0:7001"], "binds every interface.*--advertise"),
        (["--listen", "[::]:7001", "--bootstrap"], "binds every interface"),
        (
            ["--listen", "0.0.0.0:7001", "--advertise", "0.0.0.0:7001"],
            "--advertise 0.0.0.0:7001: .*not a wildcard",
        ),
        (["--advertise", "name-without-port"], "--advertise 'name-without-port' is not HOST:PORT"),
    ],
)
def test_a_wildcard_listen_needs_an_advertised_address(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings(["--id", "n1", "--data-dir", "d", *argv])


async def test_a_joiner_bound_to_every_interface_advertises_its_address() -> None:
    argv = ["--id", "n4", "--data-dir", "d", "--listen", "0.0.0.0:7001", "--advertise", "10.9.0.4:7001"]
    s = settings([*argv, "--discover", "raft.test"])
    assert s.address == "10.9.0.4:7001"
    asked: list[tuple[str, int]] = []

    async def resolver(name: str, port: int) -> list[str]:
        asked.append((name, port))
        return ["10.9.0.1:7001", "10.9.0.4:7001", "10.9.0.2:7001"]

    # Its own advertised address is left out; the port is the advertised one.
    assert await join_contacts(s, resolver) == ["10.9.0.1:7001", "10.9.0.2:7001"]
    assert asked == [("raft.test", 7001)]


async def test_a_joiner_advertising_a_name_leaves_out_what_the_name_resolves_to() -> None:
    argv = ["--id", "p-1", "--data-dir", "d", "--listen", "0.0.0.0:7000", "--advertise", "p-1.svc.test:7000"]
    s = settings([*argv, "--discover", "svc.test"])
    records = {
        "svc.test": ["10.1.0.5:7000", "10.1.0.6:7000", "10.1.0.7:7000"],
        "p-1.svc.test": ["10.1.0.6:7000"],
    }

    async def resolver(name: str, port: int) -> list[str]:
        return records[name]

    assert await join_contacts(s, resolver) == ["10.1.0.5:7000", "10.1.0.7:7000"]
