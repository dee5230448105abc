"""Ports of the MIT 6.5840 Raft lab scenarios (see shared/reference/RAFT_TESTS.md) to the
simulator. Each runs on a few seeds in simulated time; the checker judges every event too.

Differences from the lab, by design: our logs start with the bootstrap configuration entry and
each leader's no-op, so indexes are compared relative to where commands begin; a message is
one-way, so the lab's RPC counts are compared against half our message counts.
"""

from __future__ import annotations

import random

import pytest

from tests.sim.lab import Lab

SEEDS = [1, 2, 3]
ET = 1000  # the lab's election timeout, in ms (ours is 0.5-1 s on the LAN preset)


def rnd_cmd(rng: random.Random) -> bytes:
    return b"c%d" % rng.randrange(1 << 30)


@pytest.mark.parametrize("seed", SEEDS)
def test_initial_election(seed: int) -> None:
    lab = Lab(3, seed)
    lab.check_one_leader()
    lab.run(50)
    term1 = lab.check_terms()
    assert term1 >= 1
    lab.run(2 * ET)
    assert lab.check_terms() == term1, "term changed with no failures"
    lab.check_one_leader()


@pytest.mark.parametrize("seed", SEEDS)
def test_re_election(seed: int) -> None:
    lab = Lab(3, seed)
    leader1 = lab.check_one_leader()
    lab.disconnect(leader1)
    lab.check_one_leader()
    lab.connect(leader1)  # the old leader rejoins without disrupting
    leader2 = lab.check_one_leader()
    i = lab.ids.index(leader2)
    other = lab.ids[(i + 1) % 3]
    lab.disconnect(leader2)
    lab.disconnect(other)
    lab.run(2 * ET)
    lab.check_no_leader()  # no quorum, no leader
    lab.connect(other)
    lab.check_one_leader()
    lab.connect(leader2)
    lab.check_one_leader()


@pytest.mark.parametrize("seed", SEEDS)
def test_many_elections(seed: int) -> None:
    lab = Lab(7, seed)
    rng = random.Random(seed)
    lab.check_one_leader()
    for _ in range(9):
        gone = rng.sample(lab.ids, 3)
        for s in gone:
            lab.disconnect(s)
        lab.check_one_leader()
        for s in gone:
            lab.connect(s)
    lab.check_one_leader()


@pytest.mark.parametrize("seed", SEEDS)
def test_basic_agree(seed: int) -> None:
    lab = Lab(3, seed)
    leader = lab.check_one_leader()
    core = lab.c.nodes[leader].core
    assert core is not None
    base = core.log.last_index()
    for k in range(1, 4):
        n, _ = lab.n_committed(base + k)
        assert n == 0, "committed before Start()"
        assert lab.one(b"%d" % (k * 100), 3, retry=False) == base + k


@pytest.mark.parametrize("seed", SEEDS)
def test_rpc_bytes(seed: int) -> None:
    lab = Lab(3, seed)
    lab.one(b"99", 3)
    bytes0 = lab.c.msg_bytes
    sent = 0
    rng = random.Random(seed)
    for _ in range(10):
        cmd = bytes(rng.randrange(256) for _ in range(5000))
        lab.one(cmd, 3)
        sent += len(cmd)
    got = lab.c.msg_bytes - bytes0
    assert got <= 3 * sent + 50_000, f"too many bytes: {got} for {sent} bytes of commands"


@pytest.mark.parametrize("seed", SEEDS)
def test_follower_failure(seed: int) -> None:
    lab = Lab(3, seed)
    lab.one(b"101", 3)
    leader1 = lab.check_one_leader()
    lab.disconnect(lab.ids[(lab.ids.index(leader1) + 1) % 3])
    lab.one(b"102", 2)
    lab.run(ET)
    lab.one(b"103", 2)
    leader2 = lab.check_one_leader()
    for s in lab.ids:
        if s != leader2:
            lab.disconnect(s)
    got = lab.start_cmd(leader2, b"104")
    assert got is not None, "leader rejected Start()"
    lab.run(2 * ET)
    n, _ = lab.n_committed(got[1])
    assert n == 0, f"{n} committed without a majority"


@pytest.mark.parametrize("seed", SEEDS)
def test_leader_failure(seed: int) -> None:
    lab = Lab(3, seed)
    lab.one(b"101", 3)
    leader1 = lab.check_one_leader()
    lab.disconnect(leader1)
    lab.one(b"102", 2)
    lab.run(ET)
    lab.one(b"103", 2)
    leader2 = lab.check_one_leader()
    lab.disconnect(leader2)
    indexes = [got[1] for s in lab.ids if (got := lab.start_cmd(s, b"104")) is not None]
    lab.run(2 * ET)
    for idx in indexes:
        n, _ = lab.n_committed(idx)
        assert n == 0, f"{n} committed without a majority"


@pytest.mark.parametrize("seed", SEEDS)
def test_fail_agree(seed: int) -> None:
    lab = Lab(3, seed)
    lab.one(b"101", 3)
    leader = lab.check_one_leader()
    follower = lab.ids[(lab.ids.index(leader) + 1) % 3]
    lab.disconnect(follower)
    for cmd in (b"102", b"103"):
        lab.one(cmd, 2)
    lab.run(ET)
    for cmd in (b"104", b"105"):
        lab.one(cmd, 2)
    lab.connect(follower)
    lab.one(b"106", 3)  # the follower catches up
    lab.run(ET)
    lab.one(b"107", 3)


@pytest.mark.parametrize("seed", SEEDS)
def test_fail_no_agree(seed: int) -> None:
    lab = Lab(5, seed)
    lab.one(b"10", 5)
    leader = lab.check_one_leader()
    i = lab.ids.index(leader)
    gone = [lab.ids[(i + k) % 5] for k in (1, 2, 3)]
    for s in gone:
        lab.disconnect(s)
    got = lab.start_cmd(leader, b"20")
    assert got is not None
    lab.run(2 * ET)
    n, _ = lab.n_committed(got[1])
    assert n == 0, f"{n} committed but no majority"
    for s in gone:
        lab.connect(s)
    leader2 = lab.check_one_leader()
    got2 = lab.start_cmd(leader2, b"30")
    assert got2 is not None
    # The uncommitted entry may survive (then 30 lands one later) or be replaced; with our
    # no-op per term the new entry lands within a few slots of the old one.
    assert got[1] <= got2[1] <= got[1] + 3, f"unexpected index {got2[1]} (old {got[1]})"
    lab.one(b"1000", 5)


@pytest.mark.parametrize("seed", SEEDS)
def test_concurrent_starts(seed: int) -> None:
    lab = Lab(3, seed)
    for _ in range(5):
        leader = lab.check_one_leader()
        node = lab.c.nodes[leader]
        assert node.core is not None
        term = node.core.term
        got = [lab.start_cmd(leader, b"cs%d" % k) for k in range(5)]
        if any(g is None or g[0] != term for g in got):
            continue  # leadership moved: the lab retries
        lab.run(2 * ET)
        if node.core is None or node.core.term != term:
            continue
        values = {lab.n_committed(g[1])[1] for g in got if g is not None}
        assert values == {b"cs%d" % k for k in range(5)}
        return
    raise AssertionError("term changed too often")


@pytest.mark.parametrize("seed", SEEDS)
def test_rejoin(seed: int) -> None:
    lab = Lab(3, seed)
    lab.one(b"101", 3)
    leader1 = lab.check_one_leader()
    lab.disconnect(leader1)
    for cmd in (b"102", b"103", b"104"):
        lab.start_cmd(leader1, cmd)  # stale leader: these must be overwritten
    lab.one(b"103", 2)
    leader2 = lab.check_one_leader()
    lab.disconnect(leader2)
    lab.connect(leader1)
    lab.one(b"104", 2)
    lab.connect(leader2)
    lab.one(b"105", 3)


@pytest.mark.parametrize("seed", SEEDS)
def test_backup(seed: int) -> None:
    lab = Lab(5, seed)
    rng = random.Random(seed)
    lab.one(rnd_cmd(rng), 5)
    leader1 = lab.check_one_leader()
    i = lab.ids.index(leader1)
    ring = [lab.ids[(i + k) % 5] for k in range(5)]
    for s in ring[2:]:
        lab.disconnect(s)
    for _ in range(50):
        lab.start_cmd(leader1, rnd_cmd(rng))  # 50 entries that never commit
    lab.run(ET / 2)
    lab.disconnect(ring[0])
    lab.disconnect(ring[1])
    for s in ring[2:]:
        lab.connect(s)
    for _ in range(50):
        lab.one(rnd_cmd(rng), 3)
    leader2 = lab.check_one_leader()
    other = ring[2] if ring[2] != leader2 else ring[3]
    lab.disconnect(other)
    for _ in range(50):
        lab.start_cmd(leader2, rnd_cmd(rng))
    lab.run(ET / 2)
    for s in lab.ids:
        lab.disconnect(s)
    for s in (ring[0], ring[1], other):
        lab.connect(s)
    t0 = lab.c.now
    for _ in range(50):
        lab.one(rnd_cmd(rng), 3)
    for s in lab.ids:
        lab.connect(s)
    lab.one(rnd_cmd(rng), 5)
    # The lab requires this in well under its 10 s per-command bound.
    assert lab.c.now - t0 < 60_000


@pytest.mark.parametrize("seed", SEEDS)
def test_count(seed: int) -> None:
    lab = Lab(3, seed)
    lab.check_one_leader()
    # One RPC in the lab is a request plus its reply: two of our messages.
    assert lab.rpc_count() / 2 <= 30, f"too many RPCs for an election: {lab.rpc_count()}"
    for _ in range(3):
        leader = lab.check_one_leader()
        before = lab.rpc_count()
        node = lab.c.nodes[leader]
        assert node.core is not None
        term = node.core.term
        base = lab.start_cmd(leader, b"0")
        assert base is not None
        for k in range(1, 11):
            got = lab.start_cmd(leader, b"%d" % k)
            assert got is not None and got[0] == term
        lab.run(200)
        if node.core is None or node.core.term != term:
            continue
        for k in range(11):
            assert lab.n_committed(base[1] + k)[0] == 3
        used = (lab.rpc_count() - before) / 2
        # 11 entries in 200 ms: appends are batched, heartbeats are 10/s per follower.
        assert used <= (11 + 1 + 3) * 3, f"too many RPCs ({used}) for 11 entries"
        break
    else:
        raise AssertionError("term changed too often")
    before = lab.rpc_count()
    lab.run(ET)
    idle = (lab.rpc_count() - before) / 2
    assert idle <= 3 * 20, f"too many RPCs ({idle}) for 1 s of idleness"


@pytest.mark.parametrize("seed", SEEDS)
def test_persist1(seed: int) -> None:
    lab = Lab(3, seed)
    lab.one(b"11", 3)
    for s in lab.ids:
        lab.crash(s)
    for s in lab.ids:
        lab.start(s)
    lab.one(b"12", 3)
    leader1 = lab.check_one_leader()
    lab.crash(leader1)
    lab.start(leader1)
    lab.one(b"13", 3)
    leader2 = lab.check_one_leader()
    lab.crash(leader2)
    lab.one(b"14", 2)
    lab.start(leader2)
    i3 = lab.ids[(lab.ids.index(lab.check_one_leader()) + 1) % 3]
    lab.crash(i3)
    lab.one(b"15", 2)
    lab.start(i3)
    lab.one(b"16", 3)


@pytest.mark.parametrize("seed", SEEDS)
def test_persist2(seed: int) -> None:
    lab = Lab(5, seed)
    index = 1
    for _ in range(5):
        lab.one(b"%d" % (10 + index), 5)
        index += 1
        leader1 = lab.check_one_leader()
        i = lab.ids.index(leader1)
        ring = [lab.ids[(i + k) % 5] for k in range(5)]
        lab.crash(ring[1])
        lab.crash(ring[2])
        lab.one(b"%d" % (10 + index), 3)
        index += 1
        for s in (ring[0], ring[3], ring[4]):
            lab.crash(s)
        lab.start(ring[1])
        lab.start(ring[2])
        lab.run(ET)
        lab.start(ring[3])
        lab.one(b"%d" % (10 + index), 3)
        index += 1
        lab.start(ring[4])
        lab.start(ring[0])
    lab.one(b"1000", 5)


@pytest.mark.parametrize("seed", SEEDS)
def test_persist3(seed: int) -> None:
    lab = Lab(3, seed)
    lab.one(b"101", 3)
    leader = lab.check_one_leader()
    i = lab.ids.index(leader)
    ring = [lab.ids[(i + k) % 3] for k in range(3)]
    lab.disconnect(ring[2])
    lab.one(b"102", 2)
    lab.crash(ring[0])
    lab.crash(ring[1])
    lab.connect(ring[2])
    lab.start(ring[0])
    lab.one(b"103", 2)
    lab.start(ring[1])
    lab.one(b"104", 3)


def _figure8(lab: Lab, rng: random.Random, iters: int, unreliable: bool) -> None:
    up = set(lab.ids)
    for it in range(iters):
        if unreliable and it == iters // 5:
            lab.set_long_reordering(True)
        leader = None
        for s in lab.ids:
            live = s in up and (s in lab.connected or not unreliable)
            if live and lab.start_cmd(s, rnd_cmd(rng)) is not None:
                leader = s
        lab.run(rng.uniform(0, 500) if rng.random() < 0.1 else rng.uniform(0, 13))
        if unreliable:
            if leader is not None and rng.random() < 0.5:
                lab.disconnect(leader)
            if len(lab.connected) < 3:
                lab.connect(rng.choice(sorted(set(lab.ids) - lab.connected)))
        else:
            if leader is not None:
                lab.crash(leader)
                up.discard(leader)
            if len(up) < 3:
                s = rng.choice(sorted(set(lab.ids) - up))
                lab.start(s)
                up.add(s)
    lab.set_unreliable(False)
    lab.set_long_reordering(False)
    for s in lab.ids:
        lab.start(s)
        lab.connect(s)
    lab.one(rnd_cmd(rng), 5)


@pytest.mark.parametrize("seed", SEEDS)
def test_figure8(seed: int) -> None:
    lab = Lab(5, seed)
    _figure8(lab, random.Random(seed), 300, unreliable=False)


@pytest.mark.parametrize("seed", SEEDS)
def test_figure8_unreliable(seed: int) -> None:
    lab = Lab(5, seed, unreliable=True)
    _figure8(lab, random.Random(seed), 300, unreliable=True)


@pytest.mark.parametrize("seed", SEEDS)
def test_unreliable_agree(seed: int) -> None:
    lab = Lab(5, seed, unreliable=True)
    for it in range(1, 50):
        for j in range(4):
            lab.one(b"%d" % (100 * it + j), 1)
        lab.one(b"%d" % it, 1)
    lab.set_unreliable(False)
    lab.one(b"100", 5)


def _churn(lab: Lab, rng: random.Random, unreliable: bool) -> None:
    committed: list[bytes] = []
    waiting: dict[bytes, str] = {}

    def client() -> None:
        if not active[0]:
            return
        lab.c.call_at(lab.c.now + rng.uniform(1, 30), client)
        cmd = rnd_cmd(rng)
        for s in lab.ids:
            if lab.start_cmd(s, cmd) is not None:
                waiting[cmd] = s
                break

    def applied(node: object, e: object) -> None:
        data = getattr(e, "data", b"")
        if data in waiting and getattr(node, "id", None) == waiting[data]:
            committed.append(data)
            del waiting[data]

    active = [True]
    lab.c.on_apply.append(applied)
    for _ in range(3):
        lab.c.call_at(lab.c.now, client)
    up = set(lab.ids)
    for _ in range(20):
        if rng.random() < 0.2:
            lab.disconnect(rng.choice(lab.ids))
        if rng.random() < 0.5:
            s = rng.choice(lab.ids)
            if s not in up:
                lab.start(s)
                up.add(s)
            lab.connect(s)
        if rng.random() < 0.2:
            s = rng.choice(lab.ids)
            lab.crash(s)
            up.discard(s)
        lab.run(700)
    active[0] = False
    lab.set_unreliable(False)
    for s in lab.ids:
        lab.start(s)
        lab.connect(s)
    last = lab.one(rnd_cmd(rng), 5)
    final = {lab.n_committed(i)[1] for i in range(1, last + 1)}
    missing = [v for v in committed if v not in final]
    assert not missing, f"{len(missing)} acknowledged values missing from the final log"
    assert committed, "the churn workload committed nothing"


@pytest.mark.parametrize("seed", SEEDS)
def test_reliable_churn(seed: int) -> None:
    _churn(Lab(5, seed), random.Random(seed), unreliable=False)


@pytest.mark.parametrize("seed", SEEDS)
def test_unreliable_churn(seed: int) -> None:
    _churn(Lab(5, seed, unreliable=True), random.Random(seed), unreliable=True)


# -- snapshots ------------------------------------------------------------------------------


def _snap_common(seed: int, disconnect: bool, reliable: bool, crash: bool) -> Lab:
    lab = Lab(3, seed, unreliable=not reliable, snapshot_every=10)
    rng = random.Random(seed)
    lab.one(rnd_cmd(rng), 3)
    leader1 = lab.check_one_leader()
    for it in range(30):
        victim = lab.ids[(lab.ids.index(leader1) + 1) % 3] if it % 3 == 0 else leader1
        if disconnect:
            lab.disconnect(victim)
            lab.one(rnd_cmd(rng), 2)
        if crash:
            lab.crash(victim)
            lab.one(rnd_cmd(rng), 2)
        for _ in range(rng.randrange(5, 15)):
            lab.start_cmd(leader1, rnd_cmd(rng))
        lab.one(rnd_cmd(rng), 3 if not (disconnect or crash) else 2)
        for s in lab.ids:
            st = lab.c.nodes[s].store
            size = sum(len(e.data) + 16 for e in st.entries)
            assert size < 2000, f"{s}'s log is not trimmed: {size} bytes"
        if disconnect:
            lab.connect(victim)
            lab.one(rnd_cmd(rng), 3)
        if crash:
            lab.start(victim)
            lab.one(rnd_cmd(rng), 3)
        leader1 = lab.check_one_leader()
    return lab


@pytest.mark.parametrize("seed", SEEDS)
def test_snapshot_basic(seed: int) -> None:
    _snap_common(seed, disconnect=False, reliable=True, crash=False)


@pytest.mark.parametrize("seed", SEEDS)
def test_snapshot_install(seed: int) -> None:
    lab = _snap_common(seed, disconnect=True, reliable=True, crash=False)
    assert lab.c.msg_counts["SNAP"] > 0, "no follower needed a snapshot"


@pytest.mark.parametrize("seed", SEEDS)
def test_snapshot_install_unreliable(seed: int) -> None:
    _snap_common(seed, disconnect=True, reliable=False, crash=False)


@pytest.mark.parametrize("seed", SEEDS)
def test_snapshot_install_crash(seed: int) -> None:
    _snap_common(seed, disconnect=False, reliable=True, crash=True)


@pytest.mark.parametrize("seed", SEEDS)
def test_snapshot_install_uncrash(seed: int) -> None:
    _snap_common(seed, disconnect=False, reliable=False, crash=True)


@pytest.mark.parametrize("seed", SEEDS)
def test_snapshot_all_crash(seed: int) -> None:
    lab = Lab(3, seed, snapshot_every=10)
    rng = random.Random(seed)
    lab.one(rnd_cmd(rng), 3)
    for _ in range(5):
        for _ in range(11):
            lab.one(rnd_cmd(rng), 3)
        index1 = lab.one(rnd_cmd(rng), 3)
        for s in lab.ids:
            lab.crash(s)
        for s in lab.ids:
            lab.start(s)
        index2 = lab.one(rnd_cmd(rng), 3)
        assert index2 > index1, f"index decreased from {index1} to {index2}"


@pytest.mark.parametrize("seed", SEEDS)
def test_snapshot_init(seed: int) -> None:
    lab = Lab(3, seed, snapshot_every=10)
    rng = random.Random(seed)
    lab.one(rnd_cmd(rng), 3)
    for _ in range(12):
        lab.one(rnd_cmd(rng), 3)
    for s in lab.ids:
        lab.crash(s)
    for s in lab.ids:
        lab.start(s)
    lab.one(rnd_cmd(rng), 3)
    for s in lab.ids:
        lab.crash(s)
    for s in lab.ids:
        lab.start(s)
    lab.one(rnd_cmd(rng), 3)
    assert all(lab.c.nodes[s].store.snapshot.meta.index > 0 for s in lab.ids)
