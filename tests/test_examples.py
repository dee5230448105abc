"""Every example runs and does what its docs say."""

from __future__ import annotations

import pathlib
import runpy

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def test_three_cores_example_commits_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(EXAMPLES / "three_cores.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "leads term" in out
    assert out.count("b'set x=1'") == 3, out
