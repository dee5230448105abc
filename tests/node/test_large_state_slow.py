"""A smaller run of benchmarks/large_state.py (issue 17 part 6): three processes, 200,000 keys,
a snapshot taken by the live members at once and then sent to a restarted follower, with
``snapshot_later``: no election, no term or leader change, and the follower restores every key.
(The gap bound is measured and documented by the benchmark, not asserted here: it depends on
the machine.)"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_snapshot_of_a_large_state_raises_no_election(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "large_state.json"
    keys = 200_000
    script = str(ROOT / "benchmarks" / "large_state.py")
    subprocess.run(
        [sys.executable, script, "--keys", str(keys), "--modes", "on", "--out", str(out)],
        check=True,
        timeout=600,
        capture_output=True,
    )
    results = json.loads(out.read_text())["results"]
    assert [r["phase"] for r in results] == ["idle", "take", "send"]
    for r in results:
        assert (r["elections"], r["term_changes"], r["leader_changes"]) == (0, 0, 0), r["phase"]
    take = results[1]
    assert all(any(s["kind"] == "taken" for s in snaps) for snaps in take["snapshots"].values())
    assert results[2]["restored_keys"] == keys + 1  # and the PUT that triggered the snapshot
