"""SQLiteStorage refuses damaged, foreign or unknown files, naming the file and the problem,
and never modifies a file it refused."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import sqlite3
from pathlib import Path
from typing import Any

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
from phalanx_aio.storage._codec import identity_crc
from tests.storage.sqlite_rows import Record, batch_row, blob, put_log, read_log, records

NODE, CLUSTER = "n1", "cluster-a"
VOTE = "voter-ZQXJ"
SNAP_DATA = b"SNAPSHOT-DATA-" * 400


def payload(i: int) -> bytes:
    """A payload that can be found in the file."""
    return b"PAYLOAD-%04d-" % i + bytes(50)


async def make_store(path: Path, node: str = NODE) -> InitialState:
    """A store with a snapshot at 3, entries 4..100 and a hard state with a vote; closed."""
    s = SQLiteStorage(path)
    await s.open(node_id=node, cluster_id=CLUSTER)
    await s.save(entries=[Entry(1, i, EntryType.NORMAL, payload(i)) for i in range(1, 101)])
    conf = ConfState(voters=frozenset({"n1", "n2", "n3"}))
    await s.save_snapshot(Snapshot(SnapshotMeta(3, 1, conf), SNAP_DATA))
    await s.save(hard_state=HardState(2, VOTE, 90))
    await s.aclose()
    s2 = SQLiteStorage(path)
    state = (await s2.open(node_id=node, cluster_id=CLUSTER)).state
    await s2.aclose()
    assert not os.path.exists(f"{path}-wal")  # fully checkpointed: the main file holds everything
    return state


@pytest.fixture
async def db(tmp_path: Path) -> tuple[Path, InitialState]:
    """A closed, valid store and the state it holds."""
    path = tmp_path / "n1.db"
    return path, await make_store(path)


def digest(path: Path) -> str:
    """Hash of the main database file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def refuses(path: Path, match: str, node: str = NODE, cluster: str = CLUSTER) -> str:
    """Opening ``path`` raises StorageError naming it and matching ``match``; the file is intact."""
    before = digest(path)
    with pytest.raises(StorageError, match=match) as ei:
        await SQLiteStorage(path).open(node_id=node, cluster_id=cluster)
    assert str(path) in str(ei.value)
    assert digest(path) == before, "a refused file was modified"
    return str(ei.value)


def flip(path: Path, offset: int, mask: int = 0xFF) -> None:
    """XOR one byte of the file."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ mask]))


def find(path: Path, needle: bytes) -> int:
    """Offset of the only occurrence of ``needle`` in the file."""
    raw = path.read_bytes()
    at = raw.find(needle)
    assert at >= 0 and raw.find(needle, at + 1) < 0
    return at


def tamper(path: Path, *statements: tuple[str, tuple[Any, ...]]) -> None:
    """Run statements on the store with plain sqlite3 and close (checkpointing the WAL)."""
    conn = sqlite3.connect(path, isolation_level=None)
    for sql, params in statements:
        conn.execute(sql, params)
    conn.close()
    assert not os.path.exists(f"{path}-wal")


INSERT = "INSERT INTO entry_batches VALUES (?, ?, ?, ?)"


def stored(state: InitialState, low: int, high: int) -> list[Record]:
    """The entries ``low .. high`` of the fixture's log, as records."""
    return records(e for e in state.entries if low <= e.index <= high)


# ---------------------------------------------------------------------- flipped bytes


async def test_flipped_entry_byte(db: tuple[Path, InitialState]) -> None:
    path, _ = db
    flip(path, find(path, payload(57)) + 3)
    await refuses(path, r"log entries 1\.\.100 fail their checksum")


async def test_flipped_hard_state_byte(db: tuple[Path, InitialState]) -> None:
    path, _ = db
    flip(path, find(path, VOTE.encode()) + 2, 0x01)
    await refuses(path, "hard state row fails its checksum")


async def test_flipped_snapshot_byte(db: tuple[Path, InitialState]) -> None:
    path, _ = db
    raw = path.read_bytes()
    at = raw.find(SNAP_DATA[:200])
    assert at >= 0
    flip(path, at + 1000)
    await refuses(path, "snapshot row fails its checksum")


async def test_flipped_header_byte(db: tuple[Path, InitialState]) -> None:
    path, _ = db
    flip(path, 3)
    await refuses(path, "not a SQLite database, or its header is damaged")


async def test_flipped_btree_page_header(db: tuple[Path, InitialState]) -> None:
    path, _ = db
    page = find(path, payload(57)) // 4096 * 4096
    flip(path, page + 3, 0x7F)  # the cell count of the leaf page holding entry 57
    await refuses(path, "corrupt")


async def test_random_flips_never_yield_different_data(db: tuple[Path, InitialState], tmp_path: Path) -> None:
    """Every flipped byte either is refused with StorageError or changes nothing that is read."""
    path, state = db
    size = path.stat().st_size
    rng = random.Random(11)
    refused = 0
    for n in range(60):
        copy = tmp_path / f"flip-{n}.db"
        shutil.copyfile(path, copy)
        offset = rng.randrange(size)
        flip(copy, offset, rng.randrange(1, 256))
        before = digest(copy)
        s = SQLiteStorage(copy)
        try:
            st = await s.open(node_id=NODE, cluster_id=CLUSTER)
        except StorageError as exc:
            refused += 1
            assert str(copy) in str(exc)
            assert digest(copy) == before, f"refused file modified (flip at {offset})"
        else:
            await s.aclose()
            assert st.state == state, f"flip at {offset} changed the data read"
    assert refused > 10


# ---------------------------------------------------------------------- truncation


@pytest.mark.parametrize("keep", ["zero", "50", "one page", "half", "minus one"])
async def test_truncated_file(db: tuple[Path, InitialState], keep: str) -> None:
    path, _ = db
    size = path.stat().st_size
    new = {"zero": 0, "50": 50, "one page": 4096, "half": size // 8192 * 4096, "minus one": size - 1}[keep]
    with open(path, "r+b") as f:
        f.truncate(new)
    expected = {
        "zero": "empty",
        "50": "only 50 bytes long",
        "one page": "truncated",
        "half": "truncated",
        "minus one": "truncated or damaged",
    }[keep]
    await refuses(path, expected)


# ---------------------------------------------------------------------- wrong files


async def test_another_nodes_file(tmp_path: Path) -> None:
    path = tmp_path / "n2.db"
    await make_store(path, node="n2")
    await refuses(path, "belongs to node 'n2' of cluster 'cluster-a', not to node 'n1'")
    await refuses(
        path, "belongs to node 'n2' of cluster 'cluster-a', not to node 'n2' of cluster 'b'", "n2", "b"
    )


async def test_unknown_schema_version_in_header(db: tuple[Path, InitialState]) -> None:
    path, _ = db
    tamper(path, ("PRAGMA user_version=3", ()))
    await refuses(path, r"unknown schema version 3 \(this phalanx_aio reads versions 1, 2\)")


async def test_unknown_schema_version_in_identity(db: tuple[Path, InitialState]) -> None:
    path, _ = db
    tamper(path, ("UPDATE identity SET schema_version = 7, crc = ?", (identity_crc(7, NODE, CLUSTER),)))
    await refuses(path, "the identity row says schema version 7 but the header says 2")


async def test_foreign_sqlite_database(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    tamper(path, ("PRAGMA journal_mode=WAL", ()), ("CREATE TABLE t (x)", ()))
    await refuses(path, r"not a phalanx_aio store \(SQLite application id 0x00000000")


async def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"just some text, long enough to have a header's worth of bytes in it. " * 20)
    await refuses(path, "not a SQLite database")


async def test_missing_table(db: tuple[Path, InitialState]) -> None:
    path, _ = db
    tamper(path, ("DROP TABLE snapshot", ()))
    await refuses(path, "not a phalanx_aio store, or its schema is damaged")


async def test_missing_hard_state_row(db: tuple[Path, InitialState]) -> None:
    path, _ = db
    tamper(path, ("DELETE FROM hard_state", ()))
    await refuses(path, "hard_state table has 0 rows instead of 1")


# ---------------------------------------------------------------------- logs that do not fit


async def test_a_row_may_straddle_the_snapshot(db: tuple[Path, InitialState]) -> None:
    """Compaction deletes whole rows: the one row holding 1..100 stays after the snapshot at
    3, and loading skips the entries it covers."""
    path, state = db
    assert read_log(path) == [(1, 100)]
    assert [e.index for e in state.entries] == list(range(4, 101))


async def test_gap_in_the_log(db: tuple[Path, InitialState]) -> None:
    path, state = db
    put_log(path, stored(state, 4, 49), stored(state, 51, 100))
    await refuses(path, r"entries 50\.\.50 are missing \(gap in the log\)")


async def test_log_does_not_start_after_snapshot(db: tuple[Path, InitialState]) -> None:
    path, state = db
    put_log(path, stored(state, 6, 100))
    await refuses(path, "does not fit its snapshot: the snapshot ends at index 3 but the first entry is 6")


async def test_entry_inside_the_snapshot(db: tuple[Path, InitialState]) -> None:
    path, state = db
    put_log(path, [(1, 2, 0, payload(2))], stored(state, 4, 100))  # a row wholly covered
    await refuses(path, "entry 2 is covered by the snapshot, which ends at index 3")


async def test_terms_going_down(db: tuple[Path, InitialState]) -> None:
    path, state = db
    put_log(path, stored(state, 4, 99), [(0, 100, 0, payload(100))])
    await refuses(path, "entry 100 has term 0, lower than the term 1 before it")


async def test_unknown_entry_type(db: tuple[Path, InitialState]) -> None:
    path, state = db
    put_log(path, [*stored(state, 4, 99), (1, 100, 9, payload(100))])
    await refuses(path, r"log entries 4\.\.100 are malformed: .*unknown type 9 \(index 100\)")


async def test_a_row_holding_other_entries_than_it_claims(db: tuple[Path, InitialState]) -> None:
    path, state = db
    tamper(path, ("DELETE FROM entry_batches", ()), (INSERT, batch_row(4, 101, blob(stored(state, 4, 100)))))
    await refuses(
        path, r"log entries 4\.\.101 are malformed: the row claims entries 4\.\.101 but holds 97 \(4\.\.100\)"
    )


async def test_an_unknown_batch_version(db: tuple[Path, InitialState]) -> None:
    path, state = db
    tamper(
        path, ("DELETE FROM entry_batches", ()), (INSERT, batch_row(4, 100, blob(stored(state, 4, 100), 2)))
    )
    await refuses(path, "log entries 4..100 are malformed: entries: unsupported batch version 2")


@pytest.mark.parametrize(
    ("sql", "match"),
    [
        ("UPDATE entry_batches SET data = 'text'", r"log entries 1\.\.100 fail their checksum"),
        ("UPDATE entry_batches SET last = 'abc'", "the row of log entries 1..b'abc' has damaged columns"),
        ("UPDATE entry_batches SET data = 12345", "the row of log entries 1..100 has damaged columns"),
        ("UPDATE entry_batches SET last = -1", r"log entries 1\.\.-1 fail their checksum"),
    ],
)
async def test_a_row_with_damaged_columns(db: tuple[Path, InitialState], sql: str, match: str) -> None:
    path, _ = db
    tamper(path, (sql, ()))
    await refuses(path, match)


async def test_commit_beyond_the_log(db: tuple[Path, InitialState]) -> None:
    path, state = db
    put_log(path, stored(state, 4, 80))
    await refuses(path, "commit index 90 is beyond the last stored index 80")


async def test_a_refused_file_opens_once_repaired(db: tuple[Path, InitialState]) -> None:
    """Nothing is rewritten on the way: restoring the bytes makes the store whole again."""
    path, state = db
    at = find(path, payload(57)) + 3
    flip(path, at)
    await refuses(path, r"log entries 1\.\.100")
    flip(path, at)
    s = SQLiteStorage(path)
    assert (await s.open(node_id=NODE, cluster_id=CLUSTER)).state == state
    await s.aclose()


# ---------------------------------------------------------------------- files, locks, settings


async def test_a_second_store_on_the_same_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "n1.db"
    first = SQLiteStorage(path)
    await first.open(node_id=NODE, cluster_id=CLUSTER)
    with pytest.raises(StorageError, match="in use"):
        await SQLiteStorage(path).open(node_id=NODE, cluster_id=CLUSTER)
    await first.aclose()
    second = SQLiteStorage(path)
    await second.open(node_id=NODE, cluster_id=CLUSTER)
    await second.aclose()


async def test_creation_is_all_or_nothing(tmp_path: Path) -> None:
    path = tmp_path / "n1.db"
    # what a crash in the middle of creating a store leaves behind
    (tmp_path / "n1.db.creating").write_bytes(b"half a database")
    (tmp_path / "n1.db.creating-journal").write_bytes(b"junk")
    s = SQLiteStorage(path)
    assert (await s.open(node_id=NODE, cluster_id=CLUSTER)).created
    await s.aclose()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n1.db"]


async def test_an_empty_file_is_not_a_new_store(tmp_path: Path) -> None:
    path = tmp_path / "n1.db"
    path.touch()
    await refuses(path, "the file is empty")


async def test_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "no-such-dir" / "n1.db"
    with pytest.raises(StorageError, match=r"cannot create the store") as ei:
        await SQLiteStorage(path).open(node_id=NODE, cluster_id=CLUSTER)
    assert str(path) in str(ei.value)


@pytest.mark.parametrize(("mode", "level"), [("FULL", 2), ("NORMAL", 1)])
async def test_durability_settings(tmp_path: Path, mode: str, level: int) -> None:
    s = SQLiteStorage(tmp_path / "n1.db", synchronous=mode)  # type: ignore[arg-type]
    await s.open(node_id=NODE, cluster_id=CLUSTER)
    assert s.synchronous == mode

    def pragmas() -> tuple[Any, Any]:
        assert s._raw is not None
        sync = s._raw.execute("PRAGMA synchronous").fetchone()[0]
        journal = s._raw.execute("PRAGMA journal_mode").fetchone()[0]
        return sync, journal

    assert await s._call(pragmas) == (level, "wal")
    await s.save(entries=[Entry(1, 1, EntryType.NORMAL, b"x")], hard_state=HardState(1, None, 1))
    await s.aclose()
    again = SQLiteStorage(tmp_path / "n1.db")
    assert (await again.open(node_id=NODE, cluster_id=CLUSTER)).state.hard_state == HardState(1, None, 1)
    await again.aclose()


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    from phalanx_aio import ConfigError

    with pytest.raises(ConfigError, match="synchronous"):
        SQLiteStorage(tmp_path / "x.db", synchronous="OFF")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_pages"):
        SQLiteStorage(tmp_path / "x.db", max_pages=0)


def test_a_store_left_open_does_not_keep_the_process_alive(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "n1.db"
    code = (
        "import asyncio, sys\n"
        "from phalanx_aio.storage import SQLiteStorage\n"
        "async def main():\n"
        "    s = SQLiteStorage(sys.argv[1])\n"
        "    await s.open(node_id='n1', cluster_id='cluster-a')\n"
        "    raise SystemExit(3)  # forgets aclose()\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, timeout=60)
    assert proc.returncode == 3, proc.stderr.decode(errors="replace")
