"""Row-level access to a closed SQLite store for the storage tests: rewrite its log rows (with
valid checksums, so that only the check under test can object) and convert it back to schema
version 1, the layout of stores written before entry batches."""

from __future__ import annotations

import os
import sqlite3
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

from phalanx_aio import Entry
from phalanx_aio.storage._codec import batch_crc, entry_crc, identity_crc

Record = tuple[int, int, int, bytes]  # term, index, type (any integer), data

_HEADER = struct.Struct("<BI")
_RECORD = struct.Struct("<QQBI")


def blob(records: Sequence[Record], version: int = 1) -> bytes:
    """A packed batch of ``records`` in the store's layout (types are not checked)."""
    table = [_HEADER.pack(version, len(records))]
    table += [_RECORD.pack(term, index, type_, len(data)) for term, index, type_, data in records]
    return b"".join(table + [data for *_, data in records])


def records(entries: Iterable[Entry]) -> list[Record]:
    return [(e.term, e.index, int(e.type), e.data) for e in entries]


def batch_row(first: int, last: int, data: bytes) -> tuple[int, int, bytes, int]:
    """An ``entry_batches`` row with a valid checksum, whatever it holds."""
    return (first, last, data, batch_crc(first, last, data))


def connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def close(conn: sqlite3.Connection, path: Path) -> None:
    """Close, checkpointing the WAL (so that the main file holds everything)."""
    conn.close()
    assert not os.path.exists(f"{path}-wal")


def read_log(path: Path) -> list[tuple[int, int]]:
    """``(first, last)`` of every ``entry_batches`` row, in order (the store may be open)."""
    conn = connect(path)
    try:
        return conn.execute("SELECT first, last FROM entry_batches ORDER BY first").fetchall()
    finally:
        conn.close()


def load_records(path: Path) -> list[Record]:
    """Every entry the rows hold, decoded here, in order of index."""
    conn = connect(path)
    try:
        rows = conn.execute("SELECT data FROM entry_batches ORDER BY first").fetchall()
    finally:
        close(conn, path)
    out: list[Record] = []
    for (data,) in rows:
        _, count = _HEADER.unpack_from(data)
        offset = _HEADER.size + count * _RECORD.size
        for term, index, type_, length in _RECORD.iter_unpack(data[_HEADER.size : offset]):
            out.append((term, index, type_, data[offset : offset + length]))
            offset += length
    return out


def put_log(path: Path, *rows: Sequence[Record]) -> None:
    """Replace the stored log with ``rows``, one row per sequence, each with a valid checksum;
    a row claims the indexes of its first and last records."""
    conn = connect(path)
    conn.execute("DELETE FROM entry_batches")
    for recs in rows:
        conn.execute(
            "INSERT INTO entry_batches VALUES (?, ?, ?, ?)", batch_row(recs[0][1], recs[-1][1], blob(recs))
        )
    close(conn, path)


def to_schema_1(path: Path, node_id: str, cluster_id: str) -> list[Record]:
    """Rewrite a closed store in schema version 1 (one row per entry, none covered by the
    snapshot); returns its entries."""
    conn = connect(path)
    (snap_index,) = conn.execute("SELECT idx FROM snapshot").fetchone()
    close(conn, path)
    recs = [r for r in load_records(path) if r[1] > snap_index]
    conn = connect(path)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        "CREATE TABLE entries (idx INTEGER PRIMARY KEY, term INTEGER NOT NULL, type INTEGER NOT NULL,"
        " data BLOB NOT NULL, crc INTEGER NOT NULL)"
    )
    conn.executemany(
        "INSERT INTO entries VALUES (?, ?, ?, ?, ?)",
        [(i, t, ty, d, entry_crc(i, t, ty, d)) for t, i, ty, d in recs],
    )
    conn.execute("DROP TABLE entry_batches")
    conn.execute("UPDATE identity SET schema_version = 1, crc = ?", (identity_crc(1, node_id, cluster_id),))
    conn.execute("PRAGMA user_version=1")
    conn.execute("COMMIT")
    conn.execute("VACUUM")  # no trace of the new layout's pages is left in the file
    close(conn, path)
    return recs
