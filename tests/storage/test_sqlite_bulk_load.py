"""The column-wise encoding and loading of log entries: same rows and checksums as the
row-by-row functions, and a damaged row is still found (and named) wherever it lies."""

from __future__ import annotations

import gc
import random
import sqlite3
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from phalanx_aio import Entry, EntryType, HardState, StorageError
from phalanx_aio.storage import SQLiteStorage
from phalanx_aio.storage import sqlite as sqlite_module
from phalanx_aio.storage._codec import entry_crc, entry_crcs, entry_row, entry_rows, entry_values

NODE, CLUSTER = "n1", "bulk"
N = 100
CHUNK = 7  # rows per chunk while loading: the log spans 15 chunks, the last one partial


def random_entries(rng: random.Random, n: int) -> list[Entry]:
    """``n`` contiguous entries of every type, with payloads of many sizes and large numbers."""
    first = rng.choice([1, 2**40])
    term = rng.choice([1, 300, 2**62])
    out = []
    for i in range(first, first + n):
        term += rng.random() < 0.1
        kind = rng.choice(list(EntryType))
        out.append(Entry(term, i, kind, rng.randbytes(rng.choice([0, 1, 64, 1000]))))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_entry_rows_match_entry_row(seed: int) -> None:
    entries = random_entries(random.Random(seed), 200)
    rows = entry_rows(entries)
    assert rows == [entry_row(e) for e in entries]
    assert all(type(r[2]) is int for r in rows)  # the type is stored as a plain integer
    assert entry_crcs(
        [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows]
    ) == [entry_crc(*r[:4]) for r in rows]


def test_entry_rows_of_nothing() -> None:
    assert entry_rows([]) == []
    assert entry_values([]) == []


@pytest.mark.parametrize("seed", range(3))
def test_entry_values_are_the_rows_flattened(seed: int) -> None:
    entries = random_entries(random.Random(seed), 150)
    assert entry_values(entries) == [v for row in entry_rows(entries) for v in row]


@pytest.mark.parametrize("count", [1, 99, 100, 101, 250, 300])
async def test_one_save_of_any_size_stores_every_entry(tmp_path: Path, count: int) -> None:
    # Entries go in a hundred rows per statement, the rest one row per statement.
    entries = random_entries(random.Random(count), count)
    entries = [Entry(e.term, i, e.type, e.data) for i, e in enumerate(entries, start=1)]
    store = SQLiteStorage(tmp_path / "s.db")
    await store.open(node_id=NODE, cluster_id=CLUSTER)
    await store.save(entries=entries, hard_state=HardState(entries[-1].term, None, count))
    await store.aclose()
    assert await load(tmp_path / "s.db") == tuple(entries)


def test_entry_crcs_refuses_bad_values() -> None:
    with pytest.raises(TypeError):
        entry_crcs([1], [1], [0], [None])  # type: ignore[list-item]
    with pytest.raises(struct.error):
        entry_crcs([-1], [1], [0], [b""])  # an index is a 64-bit unsigned integer


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Load the log a few rows at a time, so that a test log spans many chunks."""
    monkeypatch.setattr(sqlite_module, "_LOAD_CHUNK", CHUNK)
    yield


async def write_store(path: Path) -> list[Entry]:
    """A closed store holding entries 1..N of mixed types, all committed."""
    entries = random_entries(random.Random(7), N)
    entries = [Entry(e.term, i, e.type, e.data) for i, e in enumerate(entries, start=1)]
    store = SQLiteStorage(path)
    await store.open(node_id=NODE, cluster_id=CLUSTER)
    await store.save(entries=entries[:40])
    await store.save(entries=entries[40:], hard_state=HardState(entries[-1].term, None, N))
    await store.aclose()
    return entries


async def load(path: Path) -> tuple[Entry, ...]:
    store = SQLiteStorage(path)
    try:
        return (await store.open(node_id=NODE, cluster_id=CLUSTER)).state.entries
    finally:
        await store.aclose()


def tamper(path: Path, sql: str, params: tuple[Any, ...]) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(sql, params)
    conn.close()


@pytest.mark.usefixtures("small_chunks")
async def test_a_log_loaded_in_chunks_is_the_log_written(tmp_path: Path) -> None:
    path = tmp_path / "n1.db"
    entries = await write_store(path)
    loaded = await load(path)
    assert loaded == tuple(entries)
    assert [type(e.type) for e in loaded] == [EntryType] * N


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize(
    ("sql", "params", "match"),
    [
        ("UPDATE entries SET data = ? WHERE idx = ?", (b"changed", 57), "log entry 57 fails its checksum"),
        ("UPDATE entries SET data = ? WHERE idx = ?", (12345, 57), "log entry 57 fails its checksum"),
        ("UPDATE entries SET data = ? WHERE idx = ?", ("text", 57), "log entry 57 fails its checksum"),
        ("UPDATE entries SET term = ? WHERE idx = ?", ("abc", 57), "log entry 57 fails its checksum"),
        ("UPDATE entries SET term = ? WHERE idx = ?", (2.5, 57), "log entry 57 fails its checksum"),
        ("UPDATE entries SET crc = crc + 1 WHERE idx = ?", (100,), "log entry 100 fails its checksum"),
        ("UPDATE entries SET crc = crc + 1 WHERE idx = ?", (1,), "log entry 1 fails its checksum"),
    ],
)
async def test_a_damaged_row_is_named_in_any_chunk(
    tmp_path: Path, sql: str, params: tuple[Any, ...], match: str
) -> None:
    path = tmp_path / "n1.db"
    await write_store(path)
    tamper(path, sql, params)
    with pytest.raises(StorageError, match=match):
        await load(path)


@pytest.mark.usefixtures("small_chunks")
async def test_an_unknown_type_is_named_in_a_later_chunk(tmp_path: Path) -> None:
    path = tmp_path / "n1.db"
    entries = await write_store(path)
    e = entries[62]
    tamper(
        path,
        "UPDATE entries SET type = ?, crc = ? WHERE idx = ?",
        (9, entry_crc(e.index, e.term, 9, e.data), e.index),
    )
    with pytest.raises(StorageError, match="log entry 63 has an unknown type 9"):
        await load(path)


@pytest.mark.parametrize("enabled", [True, False])
async def test_loading_leaves_the_garbage_collector_as_it_was(tmp_path: Path, enabled: bool) -> None:
    path = tmp_path / "n1.db"
    await write_store(path)
    was = gc.isenabled()
    try:
        if enabled:
            gc.enable()
        else:
            gc.disable()
        assert len(await load(path)) == N
        assert gc.isenabled() is enabled
        tamper(path, "UPDATE entries SET data = ? WHERE idx = ?", (b"changed", 5))
        with pytest.raises(StorageError):
            await load(path)
        assert gc.isenabled() is enabled
    finally:
        if was:
            gc.enable()
        else:
            gc.disable()


@pytest.mark.usefixtures("small_chunks")
async def test_entries_of_one_term_share_its_number(tmp_path: Path) -> None:
    path = tmp_path / "n1.db"
    store = SQLiteStorage(path)
    await store.open(node_id=NODE, cluster_id=CLUSTER)
    terms = [1000] * 30 + [1001] * 30  # above 256: Python does not cache these ints itself
    await store.save(entries=[Entry(t, i, EntryType.NORMAL, b"x") for i, t in enumerate(terms, start=1)])
    await store.aclose()
    loaded = await load(path)
    assert [e.term for e in loaded] == terms
    assert len({id(e.term) for e in loaded}) == 2  # one object per term, across chunks
