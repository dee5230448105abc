"""Every example runs and does what its docs say.

The cluster examples run as ``python examples/x.py`` in a subprocess (as a reader would run
them), with ``TMPDIR`` pointed at a fresh directory that must be empty again afterwards; the
tests assert on what they print.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import runpy
import subprocess
import sys
from typing import Any

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
DEADLINE = 120.0  # generous: the examples take a few seconds on an idle machine


def run_example(name: str, tmp_path: pathlib.Path) -> str:
    """Run ``examples/<name>``; it must exit 0 and leave no temporary files behind."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert list(tmp_path.iterdir()) == [], "the example left files in its temporary directory"
    return proc.stdout


def search(pattern: str, out: str) -> re.Match[str]:
    found = re.search(pattern, out, re.MULTILINE)
    assert found is not None, f"{pattern!r} not in the output:\n{out}"
    return found


def test_three_cores_example_commits_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(EXAMPLES / "three_cores.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "leads term" in out
    assert out.count("b'set x=1'") == 3, out


def test_replicated_counter_survives_the_leaders_shutdown(tmp_path: pathlib.Path) -> None:
    out = run_example("replicated_counter.py", tmp_path)
    first = search(r"^leader: (n\d)$", out).group(1)
    search(rf"^{first} \(leader\)   propose incr 5 -> 5$", out)
    search(r"^(n\d) \(follower\) propose incr 3 -> 8  \(forwarded\)$", out)
    search(r"^(n\d) \(follower\) read -> 8  \(linearizable\)$", out)
    search(r"propose decr 1 -> ValueError: unknown command", out)
    down, second = search(r"^shut down (n\d); new leader: (n\d) after", out).groups()
    assert down == first and second != first
    search(r"^(n\d) \(follower\) propose incr 2 -> 10$", out)
    search(rf"^{second} \(leader\)   read -> 10$", out)
    search(rf"^{first} restarted from its SQLite file; read -> 10$", out)
    search(r"^every member reads: n1=10, n2=10, n3=10$", out)


def test_kv_cluster_shows_the_outcomes_and_exactly_once_fail_over(tmp_path: pathlib.Path) -> None:
    out = run_example("kv_cluster.py", tmp_path)
    tour = [
        ("put colour=blue", "None"),
        ("put colour=green", "b'blue'"),
        ("get colour", "b'green'"),
        ("cas colour green->red", "True"),
        ("cas colour green->red", "False"),
        ("cas shape absent->round", "True"),
        ("delete colour", "True"),
        ("delete colour", "False"),
        ("get colour", "None"),
    ]
    lines = out.splitlines()[: len(tour)]
    printed = [tuple(part.strip() for part in line.rsplit(" -> ", 1)) for line in lines]
    assert printed == tour, out
    search(r"^put with an empty key     -> RequestRefused: INVALID_ARGUMENT", out)
    search(r"^put to the wrong cluster  -> RequestRefused: WRONG_CLUSTER", out)
    search(r"^put with no server        -> Unavailable$", out)
    down, in_flight = search(r"^shutting down the leader (n\d) with (\d+) write", out).groups()
    assert int(in_flight) >= 1
    assert search(r"^new leader: (n\d)$", out).group(1) != down
    tally = search(r"^acknowledged increments: (\d+), unknown outcomes: (\d+)$", out)
    acked, unknown = int(tally.group(1)), int(tally.group(2))
    counter = int(search(r"^counter: (\d+)$", out).group(1))
    assert acked == 45
    assert acked <= counter <= acked + unknown
    search(r"^every acknowledged increment happened exactly once$", out)


def test_fencing_lock_rejects_the_paused_holders_write(tmp_path: pathlib.Path) -> None:
    out = run_example("fencing_lock.py", tmp_path)
    token_a = int(search(r"^client-A acquires 'report': granted=True, token (\d+)", out).group(1))
    search(r"^client-B acquires 'report': held by client-A", out)
    token_b = int(search(r"^client-B acquires 'report': granted=True, token (\d+)", out).group(1))
    assert token_b > token_a
    rejected = f"client-A writes 'report v1.1 by A' with token {token_a} to the fenced store: REJECTED"
    assert rejected in out
    search(r"client-A writes 'report v1.1 by A' .* to the trusting store: accepted$", out)
    search(r"^fenced store holds:   'report v2 by B'$", out)
    search(r"^trusting store holds: 'report v1.1 by A'", out)
    held = re.findall(rf"^on (n\d): 'report' is held by client-B with token {token_b}$", out, re.MULTILINE)
    assert held == ["n1", "n2", "n3"], out
    search(rf"^client-A releases token {token_a}: False", out)
    search(rf"^client-B releases token {token_b}: True$", out)


@pytest.fixture(scope="module")
def lock_example() -> dict[str, Any]:
    """The fencing-lock example's module namespace (not run as __main__)."""
    return runpy.run_path(str(EXAMPLES / "fencing_lock.py"))


def cmd(op: str, now: float, **fields: Any) -> bytes:
    return json.dumps({"op": op, "lock": "L", "now": now, **fields}).encode()


def test_lock_table_expiry_follows_the_commands_clock(lock_example: dict[str, Any]) -> None:
    table = lock_example["LockTable"]()
    first = table.apply(cmd("acquire", 100.0, owner="a", ttl=10))
    assert first.granted and first.grant.token == 1 and first.grant.expires == 110.0
    assert not table.apply(cmd("acquire", 109.9, owner="b", ttl=10)).granted
    again = table.apply(cmd("acquire", 105.0, owner="a", ttl=10))  # a retry; the clock stays at 109.9
    assert again.granted and again.grant.token == 1 and again.grant.expires == pytest.approx(119.9)
    later = table.apply(cmd("acquire", 120.0, owner="b", ttl=10))
    assert later.granted and later.grant.token == 4 > first.grant.token
    assert table.apply(cmd("release", 121.0, token=1)) is False  # a's grant is over
    assert table.apply(cmd("release", 121.0, token=4)) is True
    assert table.locks == {}
    with pytest.raises(ValueError):
        table.apply(cmd("steal", 122.0))


def test_lock_table_replicas_agree_and_snapshots_round_trip(lock_example: dict[str, Any]) -> None:
    log = [
        cmd("acquire", 1.0, owner="a", ttl=2),
        cmd("acquire", 2.5, owner="b", ttl=2),
        cmd("acquire", 3.5, owner="b", ttl=2),
        cmd("release", 4.0, token=1),
    ]
    one, two = lock_example["LockTable"](), lock_example["LockTable"]()
    assert [one.apply(c) for c in log] == [two.apply(c) for c in log]
    copy = lock_example["LockTable"]()
    copy.restore(one.snapshot())
    assert (copy.locks, copy.clock, copy.applied) == (one.locks, one.clock, one.applied)


def test_fenced_store_refuses_older_tokens(lock_example: dict[str, Any]) -> None:
    store = lock_example["FencedStore"]()
    assert store.write(5, "x") and store.write(5, "y") and store.write(7, "z")
    assert not store.write(6, "late")
    assert store.value == "z" and store.newest_token == 7
