"""Teeth: planted bugs must be caught by the simulator's generic swarm runs within a bounded
number of seeds, and the correct core must pass the very same seeds.

No scenario is written for any bug: each test runs swarm seeds 1, 2, 3, ... (the seed picks
the configuration, the workload and the faults, see ``phalanx_aio.sim.resolve``) until one
fails, and the failure must carry the command that replays it. The bugs are in
``tests/sim/planted.py``; ``docs/simulator.md`` has the table of seeds each one needs.
"""

from __future__ import annotations

import time

import pytest

from phalanx_aio.sim import SafetyViolation, SimOptions, run
from tests.sim.planted import BUGS, JOINT_BUGS, JOINT_UNCAUGHT, UNCAUGHT, Bug, mutant

MAX_SEEDS = 40
"""Every bug in ``BUGS`` must be caught within this many swarm seeds (a few need more)."""
BOUNDS = {
    "lease read without a quorum's recent acknowledgement": 100,
    "follower commits past the last entry the append verified": 150,
    "second membership change before the first commits": 150,
}
"""Bugs that only some seeds can show get a larger bound: lease reads (about 3 seeds in 10),
re-sent slices reaching a follower that still holds a stale suffix, and a split just before
two membership changes at once (both rare: first caught at seeds 119 and 83)."""
FIGURE_8_BOUND = 100
JOINT_BOUND = 60
"""Joint-consensus bugs are caught within this many swarm seeds with ``joint_changes`` on
(first caught at seeds 2 and 42)."""
STEPS = 10_000
CONTROL_SEEDS = max(MAX_SEEDS, *BOUNDS.values(), FIGURE_8_BOUND)


def _options(seed: int, bug: Bug | None = None, **extra: object) -> SimOptions:
    return SimOptions(
        seed=seed,
        steps=STEPS,
        swarm=True,
        raft_factory=mutant(bug.edits) if bug is not None and bug.edits else None,
        setup=bug.setup if bug is not None else None,
        clock=time.monotonic,
        wall_seconds=30.0,
        **extra,  # type: ignore[arg-type]
    )


def _first_failure(bug: Bug, seeds: int, **extra: object) -> tuple[int, AssertionError] | None:
    """The first swarm seed on which ``bug`` fails the run, with the failure."""
    for seed in range(1, seeds + 1):
        try:
            run(_options(seed, bug, **extra))
        except AssertionError as exc:  # SafetyViolation, LivenessFailure or a core assertion
            return seed, exc
    return None


@pytest.mark.parametrize("what", sorted(BUGS))
def test_planted_bug_is_caught_by_swarm_seeds(what: str) -> None:
    bound = BOUNDS.get(what, MAX_SEEDS)
    found = _first_failure(BUGS[what], bound)
    assert found is not None, f"planted bug {what!r} survived {bound} swarm seeds"
    seed, exc = found
    notes = "".join(getattr(exc, "__notes__", []))
    assert f"replay with: phalanx-aio sim --seed {seed} --swarm --steps {STEPS}" in notes


def test_figure_8_is_caught_by_the_safety_checks_alone() -> None:
    """Without the availability phase (which notices the missing no-op at once), the
    Figure 8 pair of bugs is still found, as the loss of a committed entry."""
    found = _first_failure(
        BUGS["Figure 8: §5.4.2 broken and no §8 no-op"], FIGURE_8_BOUND, availability=False
    )
    assert found is not None, f"Figure 8 survived {FIGURE_8_BOUND} swarm seeds without the availability phase"
    assert isinstance(found[1], SafetyViolation)


@pytest.mark.parametrize("what", sorted(JOINT_BUGS))
def test_planted_joint_bug_is_caught_by_joint_swarm_seeds(what: str) -> None:
    found = _first_failure(JOINT_BUGS[what], JOINT_BOUND, joint_changes=True)
    assert found is not None, f"planted bug {what!r} survived {JOINT_BOUND} joint swarm seeds"
    seed, exc = found
    notes = "".join(getattr(exc, "__notes__", []))
    assert "--joint-changes" in notes and f"--seed {seed} " in notes


def test_correct_core_passes_the_joint_swarm_seeds() -> None:
    joints = 0
    for seed in range(1, JOINT_BOUND + 1):
        res = run(_options(seed, joint_changes=True))
        assert res.probes > 0 and res.checks > 0
        joints += res.faults["joint_change"]
    assert joints >= 10  # the workload did change several voters at once (20 times when written)


@pytest.mark.slow
@pytest.mark.parametrize("what", sorted(JOINT_UNCAUGHT))
def test_uncaught_joint_bugs_stay_documented(what: str) -> None:
    bug, _why = JOINT_UNCAUGHT[what]
    assert _first_failure(bug, 150, joint_changes=True) is None


def test_correct_core_passes_the_same_swarm_seeds() -> None:
    for seed in range(1, CONTROL_SEEDS + 1):
        res = run(_options(seed))
        assert res.probes > 0 and res.checks > 0


def test_unmutated_copy_of_the_core_replays_the_core_exactly() -> None:
    """The mutation harness itself changes nothing: a copy built with no edit gives the same
    trace as the real core."""
    real = run(_options(3))
    copy = run(SimOptions(**{**_as_dict(_options(3)), "raft_factory": mutant(())}))
    assert copy.trace_hash == real.trace_hash


def test_a_snippet_missing_from_the_core_fails_loudly() -> None:
    with pytest.raises(AssertionError, match="snippet found 0 times"):
        mutant((("raft", "this text is not in raft.py", ""),))


def _as_dict(opts: SimOptions) -> dict[str, object]:
    return {f: getattr(opts, f) for f in SimOptions.__dataclass_fields__}


@pytest.mark.slow
@pytest.mark.parametrize("what", sorted(UNCAUGHT))
def test_uncaught_bugs_stay_documented(what: str) -> None:
    """The bugs the table lists as not caught: if the simulator starts catching one within
    150 seeds, this fails so that the table is updated."""
    bug, _why = UNCAUGHT[what]
    assert _first_failure(bug, 150) is None
