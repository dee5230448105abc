"""The command-line pages match the code: every option of every subcommand (the simulator's
have their own page) and every client variable appears in docs/cli.md or docs/operations.md."""

from __future__ import annotations

import argparse
import pathlib

from phalanx_aio.cli.client_cmds import CLIENT_FLAGS
from phalanx_aio.cli.main import build_parser

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"


def test_every_option_and_variable_is_documented() -> None:
    text = (DOCS / "cli.md").read_text() + (DOCS / "operations.md").read_text()
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, subparser in sub.choices.items():
        if name == "sim":
            continue  # docs/simulator.md
        parsers = [subparser]
        nested = [a for a in subparser._actions if isinstance(a, argparse._SubParsersAction)]
        parsers += [p for action in nested for p in action.choices.values()]
        for p in parsers:
            for action in p._actions:
                missing += [
                    f"{name} {o}" for o in action.option_strings if o.startswith("--") and o not in text
                ]
    for flag in CLIENT_FLAGS.values():
        missing += [v for v in (*flag.flags, flag.env) if v not in text]
    assert not missing, f"not in docs/cli.md or docs/operations.md: {missing}"
