"""Real processes under faults: a short run in the default suite, long ones under ``-m chaos``.

The short run is three ``phalanx-aio serve`` processes with recording clients, under a fixed plan
that kills the leader, partitions, pauses a member past the election timeout, isolates the
leader, removes and re-adds a member, transfers leadership, delays links while killing a
member, and removes two members at once (a joint change) before they join again. It must end
linearizable, with no acknowledged write lost, converged, every member's state identical, and
no process left behind. On failure the history, faults, report and timeline are in the test's
``tmp_path`` (and the members' logs in the report's workdir).
"""

from __future__ import annotations

import importlib.util
import itertools
import pathlib

import pytest

from phalanx_aio.chaos.faults import DEFAULT_FAULTS, FaultKind, FaultStep, plan_faults
from phalanx_aio.chaos.linearizability import Operation, OpKind, Verdict, check_history, read_history
from phalanx_aio.chaos.runner import ChaosConfig, ChaosReport, run_chaos
from phalanx_aio.chaos.workload import WorkloadConfig

from .conftest import serve_children

K = FaultKind
SHORT_PLAN = (
    FaultStep(0, 2.0, 3.0, (K.KILL_LEADER,)),
    FaultStep(1, 7.0, 3.0, (K.PARTITION,)),
    FaultStep(2, 12.0, 2.5, (K.PAUSE,)),
    FaultStep(3, 16.5, 3.0, (K.ISOLATE_LEADER,)),
    FaultStep(4, 21.5, 4.0, (K.MEMBERSHIP,)),
    FaultStep(5, 27.5, 2.0, (K.TRANSFER,)),
    FaultStep(6, 30.5, 3.0, (K.DELAY, K.KILL)),
    FaultStep(7, 34.5, 5.0, (K.JOINT,)),
)


def _explain(report: ChaosReport, out: pathlib.Path) -> str:
    paths = report.save(out)
    names = ", ".join(p.name for p in paths.values())
    return f"{report.summary()}\nartifacts: {out} ({names}); logs: {report.workdir}"


def _assert_passed(report: ChaosReport, out: pathlib.Path) -> None:
    why = _explain(report, out)
    assert report.error is None, why
    assert report.verdict is Verdict.LINEARIZABLE, why
    assert report.lost_writes == [], why
    assert report.failed_but_applied == [], why
    assert report.converged, why
    assert report.identical and len(report.digests) == report.config.nodes, why
    assert report.ok, why


async def test_short_chaos_run_is_linearizable_and_converges(
    tmp_path: pathlib.Path, no_orphans: None
) -> None:
    cfg = ChaosConfig(
        nodes=3,
        duration=41.0,
        seed=11,
        plan=SHORT_PLAN,
        workload=WorkloadConfig(clients=5, shared_keys=3),
        converge_timeout=30.0,
    )
    report = await run_chaos(cfg)
    _assert_passed(report, tmp_path)
    injected = {w.kind for w in report.faults}
    assert {K.KILL_LEADER, K.PARTITION, K.PAUSE, K.ISOLATE_LEADER, K.JOINT} <= injected, report.fault_errors
    joint = next(w for w in report.faults if w.kind is K.JOINT)
    assert "at once" in joint.detail and len(joint.targets) == 2
    kill = next(w for w in report.faults if w.kind is K.KILL_LEADER)
    assert kill.detail == "leader"
    counts = report.counts
    assert counts["ok"] > 100, counts
    assert report.acknowledged_once > 10
    assert report.check is not None and report.check.ops_checked >= counts["ok"]
    # The artifacts hold the whole history.
    saved = read_history(tmp_path / "history.jsonl")
    assert len(saved) == len(report.history)
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "timeline.png").stat().st_size > 10_000
    assert serve_children() == []


def test_a_report_fails_on_any_broken_promise() -> None:
    def report(**changes: object) -> ChaosReport:
        r = ChaosReport(ChaosConfig(), converged=True, digests={"n1": "a", "n2": "a"})
        r.check = check_history([Operation(1, OpKind.PUT, "k", 0.0, 1.0, value="v")])
        for name, value in changes.items():
            setattr(r, name, value)
        return r

    assert report().ok
    assert not report(lost_writes=["u0-1"]).ok
    assert not report(failed_but_applied=["u0-2"]).ok
    assert not report(converged=False).ok
    assert not report(digests={"n1": "a", "n2": "b"}).ok
    assert not report(leaders_by_term={3: {"n1", "n2"}}).ok
    assert not report(error="boom").ok
    assert not report(exits=[(1.0, "n1", 1)]).ok  # a member crashed
    assert report(exits=[(1.0, "n1", 2)]).ok  # a --join whose contact was down: a config error
    bad = check_history(
        [
            Operation(1, OpKind.PUT, "k", 0.0, 1.0, value="a"),
            Operation(2, OpKind.GET, "k", 2.0, 3.0, result="b"),
        ]
    )
    assert not report(check=bad).ok
    assert "violation" in report(check=bad).summary()


def test_the_fault_plan_is_a_function_of_the_seed() -> None:
    a = plan_faults(5, 600.0)
    assert a == plan_faults(5, 600.0)
    assert a != plan_faults(6, 600.0)
    kinds = {k for step in a for k in step.kinds}
    assert kinds == set(DEFAULT_FAULTS)  # every default kind comes up in a long plan
    assert K.WIPE not in kinds
    for step in a:
        assert 2.0 <= step.duration <= 5.0
        if len(step.kinds) == 2:
            assert step.kinds[0] in {K.PARTITION, K.ISOLATE_LEADER, K.BRIDGE, K.ONE_WAY, K.DROP, K.DELAY}
            assert step.kinds[1] in {K.KILL, K.KILL_LEADER, K.KILL_TWO, K.PAUSE}
    for before, after in itertools.pairwise(a):
        assert after.at >= before.at + before.duration + 1.0
    assert plan_faults(1, 1.0) == []
    with pytest.raises(ValueError):
        plan_faults(1, 60.0, kinds=())


@pytest.mark.chaos
@pytest.mark.parametrize("seed", [1, 2])
async def test_long_chaos_run_five_nodes_every_fault(
    tmp_path: pathlib.Path, no_orphans: None, seed: int
) -> None:
    cfg = ChaosConfig(nodes=5, duration=180.0, seed=seed, workload=WorkloadConfig(clients=8))
    report = await run_chaos(cfg)
    _assert_passed(report, tmp_path)
    assert len(report.faults_by_kind) >= len(DEFAULT_FAULTS) - 2, report.fault_errors


@pytest.mark.chaos
@pytest.mark.parametrize("seed", [3, 4])
async def test_membership_soak_joint_changes_replacements_and_wipes(
    tmp_path: pathlib.Path, no_orphans: None, seed: int
) -> None:
    """Membership under chaos: joint changes (two members removed at once, then joining
    again), single replacements, wiped members restarted by mistake with --bootstrap or with
    their founding command line, mixed with kills, partitions and transfers; linearizable, no
    acknowledged write lost."""
    kinds = (K.JOINT, K.MEMBERSHIP, K.REFOUND, K.WIPE, K.KILL_LEADER, K.PARTITION, K.TRANSFER)
    cfg = ChaosConfig(
        nodes=5,
        duration=150.0,
        seed=seed,
        plan=tuple(plan_faults(seed, 150.0, kinds=kinds)),
        workload=WorkloadConfig(clients=6),
    )
    report = await run_chaos(cfg)
    _assert_passed(report, tmp_path)
    assert {K.JOINT, K.REFOUND} <= set(report.faults_by_kind), report.fault_errors
