"""Every Python code block in README.md and docs/ runs (or, if marked a fragment, compiles).

A block is run as a script in a fresh directory, in its own process. An HTML comment on the
line before the fence says otherwise (it does not show in the rendered page):

* ``<!-- doc-test: fragment -->``: an excerpt (top-level ``await``, names defined elsewhere,
  ``...`` for the rest); it must compile, with top-level ``await`` allowed;
* ``<!-- doc-test: run A | B | C -->``: run one copy per argument list, all at once (a
  program meant to be started once per member);
* ``<!-- doc-test: kv-cluster -->``: run it while three ``phalanx-aio serve`` members listen
  on 127.0.0.1:7001-7003, as the page set them up;
* ``<!-- doc-test: continued -->``: it goes on from the block before it on the page (their code
  runs as one program, as a reader pasting them in order would).
"""

from __future__ import annotations

import ast
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time

import pytest

from phalanx_aio.cli.demo import LocalCluster

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```python\n(.*?)^```\n", re.S | re.M)
_MARK = re.compile(r"<!-- doc-test: (.*?) -->\n$")
RUN_TIMEOUT = 120.0


def _blocks() -> list[tuple[str, str, str]]:
    """(id, marker, code) of every Python block; a continued block is joined to the one before."""
    out: list[tuple[str, str, str]] = []
    for page in PAGES:
        text = page.read_text()
        first = len(out)
        for m in _FENCE.finditer(text):
            before = text[: m.start()]
            line = before.count("\n") + 1
            prev = before.rsplit("\n", 2)[-2] + "\n" if before.count("\n") >= 1 else ""
            found = _MARK.search(prev)
            mark = found.group(1) if found else ""
            if mark == "continued":
                assert len(out) > first, f"{page.name}:{line}: a continued block with nothing before it"
                where, first_mark, code = out[-1]
                out[-1] = (where, first_mark, code + "\n" + m.group(1))
                continue
            out.append((f"{page.relative_to(ROOT)}:{line}", mark, m.group(1)))
    return out


BLOCKS = _blocks()


def test_the_pages_have_python_blocks_to_check() -> None:
    assert len(BLOCKS) >= 15
    assert any(mark == "" for _, mark, _ in BLOCKS)  # some run as they are


@pytest.mark.parametrize(("where", "mark", "code"), BLOCKS, ids=[b[0] for b in BLOCKS])
def test_block(where: str, mark: str, code: str, tmp_path: pathlib.Path) -> None:
    compile(code, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    if mark == "fragment":
        return
    script = tmp_path / "block.py"
    script.write_text(code)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if mark.startswith("run "):
        argvs = [shlex.split(a) for a in mark[4:].split("|")]
        _run_all(script, argvs, tmp_path, env, where)
    elif mark == "kv-cluster":
        cluster = LocalCluster(3, tmp_path)
        cluster.addr = {nid: f"127.0.0.1:{7001 + i}" for i, nid in enumerate(cluster.ids)}
        cluster.start_all()
        try:
            _run_all(script, [[]], tmp_path, env, where)
        finally:
            cluster.stop_all()
    else:
        assert mark == "", f"{where}: unknown doc-test marker {mark!r}"
        _run_all(script, [[]], tmp_path, env, where)


def _run_all(
    script: pathlib.Path, argvs: list[list[str]], cwd: pathlib.Path, env: dict[str, str], where: str
) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), *argv],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for argv in argvs
    ]
    deadline = time.monotonic() + RUN_TIMEOUT
    failures = []
    for argv, proc in zip(argvs, procs, strict=True):
        try:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail(f"{where} {argv}: still running after {RUN_TIMEOUT} s")
        if proc.returncode != 0:
            failures.append(
                f"{where} {argv} exited {proc.returncode}:\n{out.decode()}\n{err.decode()[-3000:]}"
            )
    assert not failures, "\n".join(failures)
