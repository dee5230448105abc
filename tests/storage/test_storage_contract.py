"""The storage contract, run against MemoryStorage and SQLiteStorage alike."""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from phalanx_aio import (
    ClosedError,
    ConfState,
    Entry,
    EntryType,
    HardState,
    InitialState,
    LocalError,
    Snapshot,
    SnapshotMeta,
    StorageError,
)
from phalanx_aio.storage import MemoryStorage, SQLiteStorage, Storage, StoredState
from phalanx_aio.storage import sqlite as sqlite_module

NODE, CLUSTER = "n1", "cluster-a"
CONF = ConfState(
    voters=frozenset({"n1", "n2", "n3"}),
    learners=frozenset({"n4"}),
    contexts=(("n2", b"10.0.0.2:7000"), ("n1", b"10.0.0.1:7000"), ("n4", b"")),
)


def ents(first: int, last: int, term: int, tag: bytes = b"") -> list[Entry]:
    """Entries ``first..last`` of ``term`` with payloads that name them."""
    return [Entry(term, i, EntryType.NORMAL, b"%d/%d/" % (i, term) + tag) for i in range(first, last + 1)]


def snap(index: int, term: int, data: bytes = b"state", conf: ConfState = CONF) -> Snapshot:
    """A snapshot at ``(term, index)``."""
    return Snapshot(SnapshotMeta(index, term, conf), data)


@dataclass
class Backend:
    """How to build (and rebuild, for a restart) one kind of store over the same data."""

    name: str
    make: Callable[[], Storage]
    fill_disk: Callable[[Storage], Awaitable[None]]
    free_disk: Callable[[Storage], Awaitable[None]]


@pytest.fixture(params=["memory", "sqlite", "sqlite, rows of 3"])
def backend(
    request: pytest.FixtureRequest, tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> Backend:
    """One backend per parametrization; ``make()`` always reaches the same data.

    "sqlite, rows of 3" stores at most 3 entries per row, so that overwrites and compactions
    cut through rows all the time (with the default of 1,024, most saves here are one row)."""
    if request.param == "memory":
        mem = MemoryStorage("mem-n1")

        async def fill_mem(s: Storage) -> None:
            assert isinstance(s, MemoryStorage)
            s.simulate_disk_full(True)

        async def free_mem(s: Storage) -> None:
            assert isinstance(s, MemoryStorage)
            s.simulate_disk_full(False)

        return Backend("memory", lambda: mem, fill_mem, free_mem)
    if request.param == "sqlite, rows of 3":
        monkeypatch.setattr(sqlite_module, "ROW_ENTRIES", 3)
    path = os.path.join(os.fspath(tmp_path), "n1.db")

    async def fill_sqlite(s: Storage) -> None:
        assert isinstance(s, SQLiteStorage)
        await s.set_max_pages(1)  # clamped to the current size: no page may be added

    async def free_sqlite(s: Storage) -> None:
        assert isinstance(s, SQLiteStorage)
        await s.set_max_pages(None)

    return Backend("sqlite", lambda: SQLiteStorage(path), fill_sqlite, free_sqlite)


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Storage]:
    """An open, freshly created store."""
    s = backend.make()
    st = await s.open(node_id=NODE, cluster_id=CLUSTER)
    assert st.created
    yield s
    await s.aclose()


async def restart(backend: Backend, s: Storage) -> tuple[Storage, StoredState]:
    """Close ``s`` and open the same data again."""
    await s.aclose()
    s2 = backend.make()
    return s2, await s2.open(node_id=NODE, cluster_id=CLUSTER)


async def reload(backend: Backend, s: Storage) -> InitialState:
    """What a restart would load (``s`` stays usable: it is reopened in place)."""
    await s.aclose()
    st = await s.open(node_id=NODE, cluster_id=CLUSTER)
    assert not st.created
    return st.state


# ---------------------------------------------------------------------- creation and identity


async def test_new_store_is_empty_and_records_identity(backend: Backend) -> None:
    s = backend.make()
    st = await s.open(node_id=NODE, cluster_id=CLUSTER)
    assert st == StoredState(NODE, CLUSTER, InitialState(), created=True)
    assert s.healthy and s.last_error is None
    assert await s.read_snapshot() is None
    s, st = await restart(backend, s)
    assert st == StoredState(NODE, CLUSTER, InitialState(), created=False)
    await s.aclose()


@pytest.mark.parametrize(("node", "cluster"), [("n2", CLUSTER), (NODE, "cluster-b")])
async def test_foreign_identity_is_refused(backend: Backend, node: str, cluster: str) -> None:
    s = backend.make()
    await s.open(node_id=NODE, cluster_id=CLUSTER)
    await s.save(entries=ents(1, 3, 1), hard_state=HardState(1, "n1", 2))
    await s.aclose()
    with pytest.raises(StorageError, match=r"belongs to node 'n1' of cluster 'cluster-a', not to node") as ei:
        await backend.make().open(node_id=node, cluster_id=cluster)
    assert s.location in str(ei.value)
    s, st = await restart(backend, s)
    assert st.state.entries == tuple(ents(1, 3, 1))
    await s.aclose()


@pytest.mark.parametrize(("node", "cluster"), [("", CLUSTER), (NODE, "")])
async def test_empty_ids_are_refused(backend: Backend, node: str, cluster: str) -> None:
    with pytest.raises(LocalError, match="non-empty"):
        await backend.make().open(node_id=node, cluster_id=cluster)


async def test_lifecycle_errors(backend: Backend) -> None:
    s = backend.make()
    with pytest.raises(ClosedError):
        await s.save(entries=ents(1, 1, 1))
    with pytest.raises(ClosedError):
        await s.read_snapshot()
    async with s:
        await s.open(node_id=NODE, cluster_id=CLUSTER)
        with pytest.raises(LocalError, match="already open"):
            await s.open(node_id=NODE, cluster_id=CLUSTER)
        await s.save()  # nothing to do
    with pytest.raises(ClosedError):
        await s.save(hard_state=HardState(1))
    with pytest.raises(ClosedError):
        await s.save()
    with pytest.raises(ClosedError):
        await s.save_snapshot(snap(1, 1))
    await s.aclose()  # idempotent


# ---------------------------------------------------------------------- save semantics


async def test_append_and_restart(backend: Backend, store: Storage) -> None:
    await store.save(entries=ents(1, 5, 1), hard_state=HardState(1, "n1", 0))
    await store.save(entries=ents(6, 10, 1), hard_state=HardState(1, "n1", 7))
    s, st = await restart(backend, store)
    assert st.state.entries == tuple(ents(1, 10, 1))
    assert st.state.hard_state == HardState(1, "n1", 7)
    assert st.state.snapshot == Snapshot()
    assert not st.created
    await s.aclose()


async def test_entry_types_and_payloads_round_trip(backend: Backend, store: Storage) -> None:
    entries = [
        Entry(1, 1, EntryType.CONF, b'{"voters":["n1"]}'),
        Entry(1, 2, EntryType.NOOP, b""),
        Entry(2, 3, EntryType.NORMAL, bytes(range(256)) * 40),
        Entry(2, 4, EntryType.NORMAL, b"\x00"),
    ]
    await store.save(entries=entries, hard_state=HardState(2, None, 4))
    state = await reload(backend, store)
    assert state.entries == tuple(entries)
    assert [type(e.type) for e in state.entries] == [EntryType] * 4
    assert state.hard_state == HardState(2, None, 4)


async def test_overwrite_from_index(backend: Backend, store: Storage) -> None:
    await store.save(entries=ents(1, 10, 1), hard_state=HardState(1, "n1", 3))
    # a new leader's log differs from index 6 on and is shorter: 6..10 go, 6..7 arrive
    await store.save(entries=ents(6, 7, 2, b"new"), hard_state=HardState(2, "n2", 3))
    state = await reload(backend, store)
    assert state.entries == tuple(ents(1, 5, 1) + ents(6, 7, 2, b"new"))
    assert state.hard_state == HardState(2, "n2", 3)
    # overwrite right after the commit index, longer than before
    await store.save(entries=ents(4, 12, 3))
    state = await reload(backend, store)
    assert state.entries == tuple(ents(1, 3, 1) + ents(4, 12, 3))


async def test_hard_state_only_and_votes(backend: Backend, store: Storage) -> None:
    await store.save(hard_state=HardState(5, None, 0))
    assert (await reload(backend, store)).hard_state == HardState(5, None, 0)
    await store.save(hard_state=HardState(5, "n3", 0))
    assert (await reload(backend, store)).hard_state == HardState(5, "n3", 0)
    await store.save(hard_state=HardState(6, "", 0))  # an empty vote is not "no vote"
    assert (await reload(backend, store)).hard_state == HardState(6, "", 0)


async def test_received_snapshot_replaces_the_log(backend: Backend, store: Storage) -> None:
    await store.save(entries=ents(1, 8, 1), hard_state=HardState(1, "n1", 2))
    leader_snap = snap(20, 3, b"leader state" * 1000)
    await store.save(snapshot=leader_snap, entries=ents(21, 23, 3), hard_state=HardState(3, None, 20))
    state = await reload(backend, store)
    assert state.snapshot == leader_snap
    assert state.entries == tuple(ents(21, 23, 3))
    assert state.hard_state == HardState(3, None, 20)
    assert await store.read_snapshot() == leader_snap
    # a received snapshot inside the stored log still replaces all of it
    await store.save(snapshot=snap(22, 3, b"again"), hard_state=HardState(3, None, 22))
    state = await reload(backend, store)
    assert state.entries == ()
    assert state.snapshot == snap(22, 3, b"again")


async def test_compaction(backend: Backend, store: Storage) -> None:
    await store.save(entries=ents(1, 10, 1) + ents(11, 15, 2), hard_state=HardState(2, "n1", 12))
    local = snap(8, 1, b"app state at 8")
    await store.save_snapshot(local)
    state = await reload(backend, store)
    assert state.snapshot == local
    assert state.entries == tuple(ents(9, 10, 1) + ents(11, 15, 2))
    assert await store.read_snapshot() == local
    # the log keeps working after compaction: overwrite and append
    await store.save(entries=ents(14, 16, 3), hard_state=HardState(3, None, 13))
    await store.save_snapshot(snap(13, 2, b"app state at 13"))
    state = await reload(backend, store)
    assert state.entries == tuple(ents(14, 16, 3))
    assert state.snapshot == snap(13, 2, b"app state at 13")
    # compacting everything, and then at the same index again (same term): idempotent
    await store.save_snapshot(snap(16, 3, b"all"))
    await store.save_snapshot(snap(16, 3, b"all, taken again"))
    state = await reload(backend, store)
    assert state.entries == ()
    assert state.snapshot == snap(16, 3, b"all, taken again")
    await store.save(entries=ents(17, 17, 3))
    assert (await reload(backend, store)).entries == tuple(ents(17, 17, 3))


async def test_snapshot_round_trip_keeps_configuration(backend: Backend, store: Storage) -> None:
    data = random.Random(7).randbytes(300_000)
    joint = ConfState(
        voters=frozenset({"n1", "n5"}),
        contexts=(("n5", b"e"), ("n2", b"b")),
        voters_outgoing=frozenset({"n1", "n2"}),
        removed=(("n3", 12), ("n7", 40)),
    )
    for i, conf in enumerate((CONF, ConfState(), ConfState(voters=frozenset({"only"})), joint)):
        s = snap(50 + i, 4, data, conf)
        await store.save(snapshot=s, hard_state=HardState(4, None, s.meta.index))
        assert await store.read_snapshot() == s
        state = await reload(backend, store)
        assert state.snapshot == s
        assert state.snapshot.meta.conf.contexts == conf.contexts  # order kept


async def test_state_survives_many_restarts(backend: Backend) -> None:
    """A seeded random run against a plain model, restarting at random points."""
    rng = random.Random(3)
    s = backend.make()
    await s.open(node_id=NODE, cluster_id=CLUSTER)
    model: list[Entry] = []
    snapshot = Snapshot()
    hs = HardState()
    for step in range(120):
        last = model[-1].index if model else snapshot.meta.index
        roll = rng.random()
        if roll < 0.1 and hs.commit > snapshot.meta.index:
            idx = rng.randint(snapshot.meta.index + 1, hs.commit)
            term = next(e.term for e in model if e.index == idx)
            snapshot = snap(idx, term, b"s%d" % step)
            await s.save_snapshot(snapshot)
            model = [e for e in model if e.index > idx]
        elif roll < 0.3 or hs.term == 0:
            term = hs.term + 1
            start = rng.randint(max(hs.commit, snapshot.meta.index) + 1, last + 1)
            new = ents(start, start + rng.randint(0, 6), term, b"%d" % step)
            hs = HardState(term, rng.choice([None, "n1", "n2"]), hs.commit)
            await s.save(entries=new, hard_state=hs)
            model = [e for e in model if e.index < start] + new
        else:
            new = ents(last + 1, last + rng.randint(1, 9), hs.term, b"%d" % step)
            hs = HardState(hs.term, hs.vote, rng.randint(hs.commit, new[-1].index))
            await s.save(entries=new, hard_state=hs)
            model += new
        if rng.random() < 0.15:
            s, st = await restart(backend, s)
            assert st.state == InitialState(hs, snapshot, tuple(model))
    s, st = await restart(backend, s)
    assert st.state == InitialState(hs, snapshot, tuple(model))
    await s.aclose()


# ---------------------------------------------------------------------- refused writes


async def refused(backend: Backend, s: Storage, call: Awaitable[None], match: str) -> None:
    """``call`` raises LocalError matching ``match`` and changes nothing."""
    before = await reload(backend, s)
    with pytest.raises(LocalError, match=match):
        await call
    assert await reload(backend, s) == before
    assert s.healthy


async def test_writes_that_would_break_the_log_are_refused(backend: Backend, store: Storage) -> None:
    s = store
    await s.save(entries=ents(1, 10, 2), hard_state=HardState(3, "n2", 4))
    await s.save_snapshot(snap(3, 2))
    await refused(backend, s, s.save(entries=ents(12, 13, 3)), "gap after the last stored index 10")
    await refused(backend, s, s.save(entries=ents(3, 5, 3)), "inside the snapshot")
    await refused(backend, s, s.save(entries=ents(4, 5, 3)), "overwriting committed entries")
    await refused(backend, s, s.save(entries=[*ents(11, 12, 3), *ents(14, 14, 3)]), "not contiguous")
    await refused(backend, s, s.save(entries=ents(11, 12, 1)), "lower than the term 2")
    await refused(backend, s, s.save(entries=ents(7, 7, 1)), "lower than the term 2")
    await refused(backend, s, s.save(entries=[Entry(3, 11, 7, b"")]), "unknown type")  # type: ignore[arg-type]
    await refused(backend, s, s.save(hard_state=HardState(2, None, 4)), "term would go back")
    await refused(backend, s, s.save(hard_state=HardState(3, "n1", 4)), "vote of term 3 would change")
    await refused(backend, s, s.save(hard_state=HardState(3, "n2", 11)), "beyond the last index 10")
    await refused(backend, s, s.save(hard_state=HardState(3, "n2", -1)), "negative")
    await refused(backend, s, s.save(snapshot=snap(2, 2)), "before the stored snapshot at 3")
    await refused(backend, s, s.save_snapshot(snap(2, 2)), "before the stored snapshot at 3")
    await refused(backend, s, s.save_snapshot(snap(6, 1)), "stored log says 2")
    await refused(backend, s, s.save_snapshot(snap(10, 3)), "stored log says 2")
    await refused(backend, s, s.save_snapshot(snap(3, 1)), "stored log says 2")
    # a vote may be cast when there was none, and entries after the commit may be replaced
    await s.save(entries=ents(5, 6, 3), hard_state=HardState(3, "n2", 4))
    assert (await reload(backend, s)).entries == tuple(ents(4, 4, 2) + ents(5, 6, 3))


# ---------------------------------------------------------------------- disk full


async def test_disk_full_stops_writes_and_they_resume(backend: Backend, store: Storage) -> None:
    s = store
    await s.save(entries=ents(1, 20, 1), hard_state=HardState(1, "n1", 5))
    acknowledged = await reload(backend, s)
    await backend.fill_disk(s)
    big = [Entry(1, i, EntryType.NORMAL, os.urandom(2000)) for i in range(21, 61)]
    with pytest.raises(StorageError, match="disk full") as ei:
        await s.save(entries=big, hard_state=HardState(1, "n1", 40))
    assert s.location in str(ei.value)
    assert not s.healthy and not s.failed  # recoverable: the driver retries
    assert s.last_error is ei.value
    with pytest.raises(StorageError, match="disk full"):
        await s.save_snapshot(snap(60, 1, os.urandom(100_000)))
    assert not s.healthy
    assert await s.read_snapshot() is None  # reads still work
    await backend.free_disk(s)
    await s.save(entries=big, hard_state=HardState(1, "n1", 40))
    assert s.healthy and s.last_error is None
    state = await reload(backend, s)
    assert state.entries == acknowledged.entries + tuple(big)
    assert state.hard_state == HardState(1, "n1", 40)
