"""The simulator itself: determinism, seed sweeps under faults, and the checker's teeth."""

from __future__ import annotations

import pytest

from phalanx_aio.core import Config, Entry, HardState, Message, MessageType
from phalanx_aio.sim import (
    BudgetExceeded,
    Checker,
    Cluster,
    RegionLatency,
    SafetyViolation,
    SimOptions,
    describe,
    load_rtt_matrix,
    resolve,
    run,
)
from phalanx_aio.sim.checker import chain_hash


def test_same_seed_same_trace() -> None:
    a = run(SimOptions(seed=7, steps=5000))
    b = run(SimOptions(seed=7, steps=5000))
    c = run(SimOptions(seed=8, steps=5000))
    assert a.trace_hash == b.trace_hash
    assert a.summary() == b.summary()
    assert a.trace_hash != c.trace_hash


@pytest.mark.parametrize("block", range(6))
def test_seed_sweep_with_faults(block: int) -> None:
    """300 seeds in all (six blocks of 50), crashes, partitions, loss, duplication, reordering."""
    for seed in range(block * 50 + 1, block * 50 + 51):
        res = run(SimOptions(seed=seed, steps=3000))
        assert res.committed > 1
        assert res.checks > 0


@pytest.mark.parametrize("seed", range(1, 31))
def test_membership_and_snapshots(seed: int) -> None:
    res = run(SimOptions(seed=seed, steps=8000, membership=True, snapshot_every=25))
    assert res.committed > 25


def test_workload_is_checked() -> None:
    res = run(SimOptions(seed=3, steps=20_000))
    assert res.writes_acked > 100
    assert res.reads_checked > 20
    assert sum(res.faults.values()) > 3


def test_global_mesh_preset_runs_on_the_five_region_matrix() -> None:
    regions, rtt, _ = load_rtt_matrix()
    ids = [f"n{i + 1}" for i in range(5)]
    mesh = RegionLatency.place(rtt, regions, ids)
    res = run(SimOptions(seed=1, steps=20_000, config=Config.global_mesh(), mesh=mesh, faults=False))
    # One election at start, one after the availability phase's deliberate failover, no flapping.
    assert res.faults["failover"] == 1
    assert res.elections == 2, "the global-mesh preset should elect once per leader loss, never flap"


def test_rtt_aware_mode_is_safe_under_faults() -> None:
    """The RTT-aware timeout changes only timing: every invariant holds under crashes,
    partitions, loss, duplication and reordering (lease reads included), and runs replay."""
    cfg = Config.global_mesh_adaptive()
    for seed in range(1, 11):
        res = run(SimOptions(seed=seed, steps=3000, config=cfg, membership=seed % 2 == 0))
        assert res.committed > 1 and res.checks > 0
    lease = cfg.replace(read_mode="lease")
    for seed in range(11, 16):
        res = run(SimOptions(seed=seed, steps=3000, config=lease))
        assert res.reads_checked > 0
    opts = SimOptions(seed=4, steps=2000, config=cfg)
    assert run(opts).trace_hash == run(opts).trace_hash
    assert "--preset global-mesh-adaptive" in opts.command()


@pytest.mark.slow
@pytest.mark.parametrize("block", range(40))
def test_long_sweep(block: int) -> None:
    for seed in range(1000 + block * 50, 1000 + block * 50 + 50):
        run(SimOptions(seed=seed, steps=20_000, membership=seed % 2 == 0, snapshot_every=(seed % 3) * 20))


@pytest.mark.slow
@pytest.mark.parametrize("block", range(20))
def test_long_swarm_sweep(block: int) -> None:
    """1,000 swarm seeds of 20,000 events: every configuration the seeds choose, every check."""
    for seed in range(100_000 + block * 50, 100_000 + block * 50 + 50):
        res = run(SimOptions(seed=seed, steps=20_000, swarm=True))
        assert res.probes > 0


# -- the checker catches each violation when fed one directly ---------------------------------


def test_checker_two_leaders_in_a_term() -> None:
    chk = Checker()
    chk.on_leader("a", 3, {}, 0)
    with pytest.raises(SafetyViolation, match="election safety"):
        chk.on_leader("b", 3, {}, 0)


def test_checker_double_vote_and_backwards_term() -> None:
    chk = Checker()
    chk.on_persist_hard_state("a", HardState(1, None, 0), HardState(2, "b", 0))
    with pytest.raises(SafetyViolation, match="one vote per term"):
        chk.on_persist_hard_state("a", HardState(2, "b", 0), HardState(2, "c", 0))
    with pytest.raises(SafetyViolation, match="term monotonic"):
        chk.on_persist_hard_state("a", HardState(2, "b", 0), HardState(1, None, 0))


def test_checker_log_matching_and_state_machine_safety() -> None:
    chk = Checker()
    e1, e1x = Entry(1, 1, data=b"x"), Entry(1, 1, data=b"y")
    chk.on_persist_entry("a", e1, chain_hash(0, e1))
    with pytest.raises(SafetyViolation, match="log matching"):
        chk.on_persist_entry("b", e1x, chain_hash(0, e1x))
    chk.on_apply("a", 1, 1, 5, 9)
    with pytest.raises(SafetyViolation, match="state machine safety"):
        chk.on_apply("b", 1, 1, 5, 10)


def test_checker_commit_quorum_leader_completeness_and_reads() -> None:
    chk = Checker()
    with pytest.raises(SafetyViolation, match="committed on a quorum"):
        chk.on_commit("a", 5, 2, 1, {"a", "b", "c"})
    chk.on_commit("a", 5, 2, 2, {"a", "b", "c"})
    with pytest.raises(SafetyViolation, match="leader completeness"):
        chk.on_leader("b", 3, {5: 1}, 0)
    with pytest.raises(SafetyViolation, match="linearizable read"):
        chk.on_read("a", 4, 5)


def test_checker_new_invariants_fire() -> None:
    chk = Checker()
    with pytest.raises(SafetyViolation, match="loadable store"):
        chk.on_loadable("a", 7, 6)
    with pytest.raises(SafetyViolation, match="vote for an up-to-date log"):
        chk.on_grant("a", "VOTE", "b", 5, (10, 3), (9, 4))
    chk.on_grant("a", "PRE_VOTE", "b", 5, (9, 4), (9, 4))  # as up to date: fine
    chk.on_node_commit("a", 4, 2)
    with pytest.raises(SafetyViolation, match="commit agreement"):
        chk.on_node_commit("b", 4, 3)
    resp = Message(MessageType.APP_RESP, "a", "b", 6)
    with pytest.raises(SafetyViolation, match="higher term adopted"):
        chk.on_step("a", resp, 5, 5)
    chk.on_step("a", Message(MessageType.VOTE, "a", "b", 6), 5, 5)  # stickiness may ignore it
    chk.on_read_confirmed("a", 2, 1000.0, 900.0, 950.0, 0.0)  # round sent after the invocation
    with pytest.raises(SafetyViolation, match="read confirmed by a quorum"):
        chk.on_read_confirmed("a", 2, 1000.0, 900.0, 850.0, 0.0)
    chk.on_read_confirmed("a", 2, 1000.0, 990.0, 700.0, 400.0)  # within a 400 ms lease
    with pytest.raises(SafetyViolation, match="read confirmed by a quorum"):
        chk.on_read_confirmed("a", 2, 1000.0, 990.0, 500.0, 400.0)


def test_background_writes_are_lost_in_crashes_and_every_invariant_holds() -> None:
    """Every node writes a leader's entries in the background on slow disks; crashes land
    while writes are in flight, and the runs still pass every check."""
    lost = 0
    for seed in range(1, 7):
        opts = SimOptions(
            seed=seed,
            steps=8000,
            background_writes=1.0,
            disk_ms=(5.0, 60.0),
            triggers=True,
            fault_interval_ms=300.0,
        )
        res = run(opts)
        assert res.committed > 1
        lost += res.faults["background_writes_lost"]
    assert lost > 0, "no crash ever hit a background write in flight"
    assert "--background-writes 1.0 --disk-ms 5.0,60.0 --fault-interval-ms 300.0" in opts.command()


def test_background_write_hard_state_travels_with_its_entries() -> None:
    """A commit index covering entries still in flight is saved only with them: after any
    crash every store is loadable (the checker's loadable-store check), and the early
    hard-state driver bug is refused by the same check."""
    res = run(SimOptions(seed=5, steps=6000, background_writes=1.0, disk_ms=(20.0, 80.0), triggers=True))
    assert res.checks > 0

    def early(c: Cluster) -> None:
        for n in c.nodes.values():
            n.store.early_hard_state = True

    with pytest.raises(SafetyViolation, match="loadable store"):
        run(SimOptions(seed=5, steps=6000, background_writes=1.0, disk_ms=(20.0, 80.0), setup=early))


def test_swarm_seeds_vary_the_configuration_and_replay() -> None:
    setups = {describe(resolve(SimOptions(seed=s, swarm=True))) for s in range(1, 21)}
    assert len(setups) == 20
    opts = SimOptions(seed=11, steps=4000, swarm=True)
    assert opts.command() == "phalanx-aio sim --seed 11 --swarm --steps 4000"
    a, b = run(opts), run(opts)
    assert a.trace_hash == b.trace_hash and a.probes > 0


def test_event_budget_stops_a_run_with_its_replay_command() -> None:
    with pytest.raises(BudgetExceeded, match="events") as exc:
        run(SimOptions(seed=2, steps=3000, max_events=3000))
    assert "replay with: phalanx-aio sim --seed 2" in "".join(exc.value.__notes__)


def test_wall_clock_budget_stops_a_run() -> None:
    ticks = iter(range(0, 10**9, 30))  # each reading of the injected clock is 30 s later
    with pytest.raises(BudgetExceeded, match="wall-clock"):
        run(SimOptions(seed=2, steps=3000, clock=lambda: float(next(ticks)), wall_seconds=60.0))


def test_the_reference_matrix_ships_in_the_package() -> None:
    """Read through importlib.resources, not from a path beside the repository."""
    regions, rtt, faults = load_rtt_matrix()
    assert regions == ["lagos", "london", "chicago", "singapore", "frankfurt"]
    assert all(rtt[a][b] == rtt[b][a] for a in regions for b in regions)
    assert rtt["london"]["frankfurt"] == 15 and rtt["lagos"]["singapore"] == 265
    assert faults["loss"] == 0.002
