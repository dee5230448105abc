"""How SQLiteStorage lays the log out in rows (schema version 2), and the conversion of
schema 1 stores (a row per entry) when they are opened."""

from __future__ import annotations

import hashlib
import itertools
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from phalanx_aio import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    InitialState,
    Snapshot,
    SnapshotMeta,
    StorageError,
)
from phalanx_aio.storage import SQLiteStorage
from phalanx_aio.storage import sqlite as sqlite_module
from tests.storage.sqlite_rows import read_log, to_schema_1

NODE, CLUSTER = "n1", "layout"
ROWS = 4
CONF = ConfState(voters=frozenset({"n1", "n2", "n3"}))


@pytest.fixture
def small_rows(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(sqlite_module, "ROW_ENTRIES", ROWS)
    yield


def ents(first: int, last: int, term: int, tag: bytes = b"") -> list[Entry]:
    return [Entry(term, i, EntryType.NORMAL, b"%d/%d/" % (i, term) + tag) for i in range(first, last + 1)]


async def reopen(store: SQLiteStorage) -> InitialState:
    await store.aclose()
    return (await store.open(node_id=NODE, cluster_id=CLUSTER)).state


def check_rows(path: Path, snap_index: int, last_index: int) -> None:
    """Rows are contiguous and hold at most ROWS entries; only the first may reach back to or
    past the snapshot, and the last ends at the last index."""
    rows = read_log(path)
    if last_index == snap_index:
        assert all(last <= snap_index or first <= snap_index for first, last in rows[:1])
        return
    assert rows, "entries after the snapshot must be stored"
    assert rows[0][0] <= snap_index + 1 < rows[0][1] + 1
    assert rows[-1][1] == last_index
    for (_, last), (first, _) in itertools.pairwise(rows):
        assert first == last + 1
    assert all(0 < last - first + 1 <= ROWS for first, last in rows)


# ---------------------------------------------------------------------- rows


@pytest.mark.usefixtures("small_rows")
async def test_overwriting_rewrites_the_row_that_straddles(tmp_path: Path) -> None:
    path = tmp_path / "n1.db"
    async with SQLiteStorage(path) as store:
        await store.open(node_id=NODE, cluster_id=CLUSTER)
        await store.save(entries=ents(1, 10, 1))
        assert read_log(path) == [(1, 4), (5, 8), (9, 10)]
        await store.save(entries=ents(6, 7, 2))  # 6.. goes; the row 5..8 keeps 5
        assert read_log(path) == [(1, 4), (5, 5), (6, 7)]
        assert (await reopen(store)).entries == tuple(ents(1, 5, 1) + ents(6, 7, 2))
        await store.save(entries=ents(5, 5, 3))  # at a row's first index: the row goes whole
        assert read_log(path) == [(1, 4), (5, 5)]
        assert (await reopen(store)).entries == tuple(ents(1, 4, 1) + ents(5, 5, 3))


@pytest.mark.usefixtures("small_rows")
async def test_compaction_keeps_a_straddling_row_until_it_is_covered(tmp_path: Path) -> None:
    path = tmp_path / "n1.db"
    async with SQLiteStorage(path) as store:
        await store.open(node_id=NODE, cluster_id=CLUSTER)
        await store.save(entries=ents(1, 10, 1), hard_state=HardState(1, None, 10))
        await store.save_snapshot(Snapshot(SnapshotMeta(6, 1, CONF), b"at 6"))
        assert read_log(path) == [(5, 8), (9, 10)]
        assert (await reopen(store)).entries == tuple(ents(7, 10, 1))
        await store.save_snapshot(Snapshot(SnapshotMeta(8, 1, CONF), b"at 8"))
        assert read_log(path) == [(9, 10)]
        # the term at a compacted index is read from the straddling row
        await store.save(entries=ents(11, 13, 1), hard_state=HardState(1, None, 13))
        await store.save_snapshot(Snapshot(SnapshotMeta(10, 1, CONF), b"at 10"))
        assert read_log(path) == [(11, 13)]
        with pytest.raises(Exception, match="stored log says 1"):
            await store.save_snapshot(Snapshot(SnapshotMeta(12, 2, CONF), b"wrong term"))


@pytest.mark.usefixtures("small_rows")
async def test_a_random_run_keeps_the_rows_in_shape(tmp_path: Path) -> None:
    """A seeded run of appends, overwrites and compactions: the rows keep their invariants and a
    reopened store loads exactly the model."""
    path = tmp_path / "n1.db"
    rng = random.Random(5)
    model: list[Entry] = []
    snapshot = Snapshot()
    hs = HardState(1, None, 0)
    async with SQLiteStorage(path) as store:
        await store.open(node_id=NODE, cluster_id=CLUSTER)
        for step in range(150):
            last = model[-1].index if model else snapshot.meta.index
            roll = rng.random()
            if roll < 0.15 and hs.commit > snapshot.meta.index:
                idx = rng.randint(snapshot.meta.index + 1, hs.commit)
                term = next(e.term for e in model if e.index == idx)
                snapshot = Snapshot(SnapshotMeta(idx, term, CONF), b"s%d" % step)
                await store.save_snapshot(snapshot)
                model = [e for e in model if e.index > idx]
            elif roll < 0.35:
                hs = HardState(hs.term + 1, None, hs.commit)
                start = rng.randint(max(hs.commit, snapshot.meta.index) + 1, last + 1)
                new = ents(start, start + rng.randint(0, 9), hs.term, b"%d" % step)
                await store.save(entries=new, hard_state=hs)
                model = [e for e in model if e.index < start] + new
            else:
                new = ents(last + 1, last + rng.randint(1, 9), hs.term, b"%d" % step)
                hs = HardState(hs.term, None, rng.randint(hs.commit, new[-1].index))
                await store.save(entries=new, hard_state=hs)
                model += new
            check_rows(path, snapshot.meta.index, model[-1].index if model else snapshot.meta.index)
            if rng.random() < 0.1:
                assert await reopen(store) == InitialState(hs, snapshot, tuple(model))
        assert await reopen(store) == InitialState(hs, snapshot, tuple(model))


# ---------------------------------------------------------------------- schema 1 stores


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def schema(path: Path) -> tuple[int, int, list[str]]:
    """(header user_version, identity schema_version, table names)."""
    conn = sqlite3.connect(path)
    try:
        (header,) = conn.execute("PRAGMA user_version").fetchone()
        (identity,) = conn.execute("SELECT schema_version FROM identity").fetchone()
        tables = [
            r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        ]
    finally:
        conn.close()
    return header, identity, tables


async def schema_1_store(path: Path) -> InitialState:
    """A closed schema 1 store with a snapshot, a vote and entries of two terms; its state."""
    async with SQLiteStorage(path) as store:
        await store.open(node_id=NODE, cluster_id=CLUSTER)
        await store.save(entries=ents(1, 30, 1) + ents(31, 2500, 2), hard_state=HardState(2, "n2", 2400))
        await store.save_snapshot(Snapshot(SnapshotMeta(20, 1, CONF), b"app state at 20"))
        state = await reopen(store)
    to_schema_1(path, NODE, CLUSTER)
    assert schema(path)[:2] == (1, 1)
    return state


async def test_a_schema_1_store_is_converted_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "n1.db"
    state = await schema_1_store(path)
    async with SQLiteStorage(path) as store:
        assert (await store.open(node_id=NODE, cluster_id=CLUSTER)).state == state
        assert schema(path) == (2, 2, ["entry_batches", "hard_state", "identity", "snapshot"])
        assert read_log(path) == [(21, 1044), (1045, 2068), (2069, 2500)]
        # and it goes on as a schema 2 store
        await store.save(entries=ents(2401, 2402, 3), hard_state=HardState(3, None, 2401))
        expected = InitialState(
            HardState(3, None, 2401), state.snapshot, state.entries[:2380] + tuple(ents(2401, 2402, 3))
        )
        assert await reopen(store) == expected


async def test_a_conversion_that_fails_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "n1.db"
    state = await schema_1_store(path)
    before = digest(path)
    with pytest.raises(
        StorageError, match=r"converting the store from schema version 1 to 2 failed .*disk"
    ) as ei:
        # max_pages=1 is clamped to the current size: the new rows find no room
        await SQLiteStorage(path, max_pages=1).open(node_id=NODE, cluster_id=CLUSTER)
    assert "the file is unchanged" in str(ei.value)
    assert digest(path) == before
    assert schema(path)[:2] == (1, 1)
    async with SQLiteStorage(path) as store:
        assert (await store.open(node_id=NODE, cluster_id=CLUSTER)).state == state
    assert schema(path)[:2] == (2, 2)


async def test_a_schema_1_store_of_another_node_is_refused_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "n1.db"
    await schema_1_store(path)
    before = digest(path)
    with pytest.raises(StorageError, match="belongs to node 'n1'"):
        await SQLiteStorage(path).open(node_id="n9", cluster_id=CLUSTER)
    assert digest(path) == before
