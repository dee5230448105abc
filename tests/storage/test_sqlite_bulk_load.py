"""The column-wise encoding and loading of log entries: same rows and checksums as the
row-by-row functions, and a damaged row is still found (and named) wherever it lies."""

from __future__ import annotations

import gc
import hashlib
import random
import re
import sqlite3
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from phalanx_aio import Entry, EntryType, HardState, StorageError
from phalanx_aio._entry_batch import EncodeError
from phalanx_aio.storage import SQLiteStorage
from phalanx_aio.storage import _loaders as loaders_module
from phalanx_aio.storage import sqlite as sqlite_module
from phalanx_aio.storage._codec import batch_crc, batch_rows, decode_batch, entry_crc, entry_crcs
from tests.storage.sqlite_rows import batch_row, blob, read_log, records, to_schema_1

NODE, CLUSTER = "n1", "bulk"
N = 100
CHUNK = 7  # schema 1 rows per chunk while loading: the log spans 15 chunks, the last one partial
ROWS, LOADED = 7, 3  # entries per row, rows per chunk while loading: 6 + 9 rows in 5 chunks


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
def test_batch_rows_decode_to_the_entries(seed: int) -> None:
    entries = random_entries(random.Random(seed), 200)
    rows = batch_rows(entries, 64)
    assert [(r[0], r[1]) for r in rows] == [(e[0].index, e[-1].index) for e in chunks(entries, 64)]
    decoded = [e for first, last, data, crc in rows for e in decode_batch(data, first, last)]
    assert decoded == entries
    assert all(crc == batch_crc(first, last, data) for first, last, data, crc in rows)


def test_a_row_must_hold_the_entries_it_claims() -> None:
    entries = random_entries(random.Random(1), 10)
    ((first, last, data, _),) = batch_rows(entries, 64)
    for claim in [(first, last + 1), (first + 1, last + 1), (first - 1, last - 1), (last, first)]:
        with pytest.raises(ValueError, match="the row claims entries"):
            decode_batch(data, *claim)


def test_batch_rows_name_an_entry_that_cannot_be_stored() -> None:
    with pytest.raises(EncodeError, match="entry 1 cannot be encoded"):
        batch_rows([Entry(1, 1), Entry(1, 2, EntryType.NORMAL, "text")], 64)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(3))
def test_entry_crcs_match_entry_crc(seed: int) -> None:
    entries = random_entries(random.Random(seed), 200)
    cols = [e.index for e in entries], [e.term for e in entries], [int(e.type) for e in entries]
    assert entry_crcs(*cols, [e.data for e in entries]) == [
        entry_crc(e.index, e.term, int(e.type), e.data) for e in entries
    ]


@pytest.mark.usefixtures("small_rows")
@pytest.mark.parametrize("count", [1, 6, 7, 8, 20, 300])
async def test_one_save_of_any_size_stores_every_entry(tmp_path: Path, count: int) -> None:
    # A save goes in rows of at most ROWS entries.
    entries = random_entries(random.Random(count), count)
    entries = [Entry(e.term, i, e.type, e.data) for i, e in enumerate(entries, start=1)]
    store = SQLiteStorage(tmp_path / "s.db")
    await store.open(node_id=NODE, cluster_id=CLUSTER)
    await store.save(entries=entries, hard_state=HardState(entries[-1].term, None, count))
    await store.aclose()
    assert read_log(tmp_path / "s.db") == [(c[0].index, c[-1].index) for c in chunks(entries, ROWS)]
    assert await load(tmp_path / "s.db") == tuple(entries)


def test_entry_crcs_refuses_bad_values() -> None:
    with pytest.raises(TypeError):
        entry_crcs([1], [1], [0], [None])  # type: ignore[list-item]
    with pytest.raises(struct.error):
        entry_crcs([-1], [1], [0], [b""])  # an index is a 64-bit unsigned integer


def chunks(entries: list[Entry], size: int) -> list[list[Entry]]:
    return [entries[i : i + size] for i in range(0, len(entries), size)]


@pytest.fixture
def small_rows(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Store ROWS entries per row and load LOADED rows at a time: a test log spans many rows and
    many chunks."""
    monkeypatch.setattr(sqlite_module, "ROW_ENTRIES", ROWS)
    monkeypatch.setattr(loaders_module, "_LOAD_BATCHES", LOADED)
    yield


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Load the log a few rows at a time, so that a test log spans many chunks."""
    monkeypatch.setattr(loaders_module, "_LOAD_CHUNK", CHUNK)
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


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------- schema 2: rows of batches


@pytest.mark.usefixtures("small_rows")
async def test_a_log_loaded_in_chunks_is_the_log_written(tmp_path: Path) -> None:
    path = tmp_path / "n1.db"
    entries = await write_store(path)
    assert len(read_log(path)) == 15
    loaded = await load(path)
    assert loaded == tuple(entries)
    assert [type(e.type) for e in loaded] == [EntryType] * N


@pytest.mark.usefixtures("small_rows")
@pytest.mark.parametrize(
    ("sql", "params", "match"),
    [
        ("UPDATE entry_batches SET data = ? WHERE first = ?", (b"changed", 55), "log entries 55..61 fail"),
        (
            "UPDATE entry_batches SET data = ? WHERE first = ?",
            (12345, 55),
            "the row of log entries 55..61 has damaged columns",
        ),
        ("UPDATE entry_batches SET data = ? WHERE first = ?", ("text", 55), "log entries 55..61 fail"),
        (
            "UPDATE entry_batches SET last = ? WHERE first = ?",
            ("abc", 55),
            "the row of log entries 55..b'abc' has damaged",
        ),
        (
            "UPDATE entry_batches SET last = ? WHERE first = ?",
            (2.5, 55),
            "the row of log entries 55..2.5 has damaged",
        ),
        ("UPDATE entry_batches SET crc = crc + 1 WHERE first = ?", (97,), "log entries 97..100 fail"),
        ("UPDATE entry_batches SET crc = crc + 1 WHERE first = ?", (1,), "log entries 1..7 fail"),
    ],
)
async def test_a_damaged_row_is_named_in_any_chunk(
    tmp_path: Path, sql: str, params: tuple[Any, ...], match: str
) -> None:
    path = tmp_path / "n1.db"
    await write_store(path)
    tamper(path, sql, params)
    with pytest.raises(StorageError, match=re.escape(match)):
        await load(path)


@pytest.mark.usefixtures("small_rows")
async def test_an_unknown_type_is_named_in_a_later_chunk(tmp_path: Path) -> None:
    path = tmp_path / "n1.db"
    entries = await write_store(path)
    recs = records(entries[54:61])  # the row 55..61
    recs[2] = (*recs[2][:2], 9, recs[2][3])
    tamper(
        path, "UPDATE entry_batches SET data = ?, crc = ? WHERE first = 55", batch_row(55, 61, blob(recs))[2:]
    )
    with pytest.raises(
        StorageError,
        match=re.escape("log entries 55..61 are malformed: entries: entry 2 has unknown type 9 (index 57)"),
    ):
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
        tamper(path, "UPDATE entry_batches SET data = ? WHERE first = 1", (b"changed",))
        with pytest.raises(StorageError):
            await load(path)
        assert gc.isenabled() is enabled
    finally:
        if was:
            gc.enable()
        else:
            gc.disable()


@pytest.mark.usefixtures("small_rows")
async def test_entries_of_one_term_share_its_number(tmp_path: Path) -> None:
    path = tmp_path / "n1.db"
    store = SQLiteStorage(path)
    await store.open(node_id=NODE, cluster_id=CLUSTER)
    terms = [1000] * 30 + [1001] * 30  # above 256: Python does not cache these ints itself
    await store.save(entries=[Entry(t, i, EntryType.NORMAL, b"x") for i, t in enumerate(terms, start=1)])
    await store.aclose()
    loaded = await load(path)
    assert [e.term for e in loaded] == terms
    assert len({id(e.term) for e in loaded}) == 2  # one object per term, across rows and chunks


# ---------------------------------------------------------------------- schema 1: a row per entry


@pytest.mark.usefixtures("small_chunks")
async def test_a_schema_1_log_loaded_in_chunks_is_the_log_written(tmp_path: Path) -> None:
    path = tmp_path / "n1.db"
    entries = await write_store(path)
    to_schema_1(path, NODE, CLUSTER)
    loaded = await load(path)
    assert loaded == tuple(entries)
    assert [type(e.type) for e in loaded] == [EntryType] * N
    assert read_log(path) == [(1, N)]  # converted on the way


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
async def test_a_damaged_schema_1_row_is_named_in_any_chunk(
    tmp_path: Path, sql: str, params: tuple[Any, ...], match: str
) -> None:
    path = tmp_path / "n1.db"
    await write_store(path)
    to_schema_1(path, NODE, CLUSTER)
    tamper(path, sql, params)
    before = digest(path)
    with pytest.raises(StorageError, match=match):
        await load(path)
    assert digest(path) == before  # refused before anything is converted


@pytest.mark.usefixtures("small_chunks")
async def test_an_unknown_type_is_named_in_a_later_schema_1_chunk(tmp_path: Path) -> None:
    path = tmp_path / "n1.db"
    entries = await write_store(path)
    to_schema_1(path, NODE, CLUSTER)
    e = entries[62]
    tamper(
        path,
        "UPDATE entries SET type = ?, crc = ? WHERE idx = ?",
        (9, entry_crc(e.index, e.term, 9, e.data), e.index),
    )
    with pytest.raises(StorageError, match="log entry 63 has an unknown type 9"):
        await load(path)
