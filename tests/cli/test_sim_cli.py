"""The ``phalanx-aio sim`` command: exit codes, summary and JSON output."""

from __future__ import annotations

import json
import pathlib

import pytest

from phalanx_aio.cli.main import main


def test_sim_runs_and_reports(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    assert main(["sim", "--seed", "4", "--seeds", "2", "--steps", "2000", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "seed 4:" in text and "seed 5:" in text and "trace hash" in text
    rows = json.loads(out.read_text())
    assert [r["seed"] for r in rows] == [4, 5]
    assert all(r["committed"] > 1 and r["checks"] > 0 for r in rows)


def test_sim_is_reproducible(capsys: pytest.CaptureFixture[str]) -> None:
    main(["sim", "--seed", "9", "--steps", "3000"])
    first = capsys.readouterr().out
    main(["sim", "--seed", "9", "--steps", "3000"])
    assert capsys.readouterr().out == first


@pytest.mark.parametrize(
    "argv",
    [["sim", "--nodes", "0"], ["sim", "--steps", "many"], ["sim", "--loss", "1.5"], ["nope"], []],
)
def test_bad_arguments_exit_2_without_traceback(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "Traceback" not in err


def test_missing_rtt_file_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--mesh", "global", "--rtt-file", "/nonexistent.json"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_global_mesh_needs_no_file_outside_the_package(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The five-region matrix ships in the package: it runs from any directory, no flag."""
    monkeypatch.chdir(tmp_path)
    argv = ["sim", "--mesh", "global", "--preset", "global-mesh", "--nodes", "5", "--steps", "3000"]
    assert main([*argv, "--no-faults"]) == 0
    assert "seed 1:" in capsys.readouterr().out


def test_malformed_rtt_file_is_a_clear_error(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "rtt.json"
    bad.write_text('{"regions": ["a", "b"], "rtt_ms": {"a": {"a": 0, "b": 10}, "b": {"b": 0}}}')
    assert main(["sim", "--mesh", "global", "--rtt-file", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "not an RTT matrix" in err and "b->a" in err and "Traceback" not in err
