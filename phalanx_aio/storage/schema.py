"""The on-disk layout of a :class:`~phalanx_aio.storage.SQLiteStorage` store: the schema, the
checks of its header and identity, its creation, and the migration from schema version 1.

``docs/storage.md`` describes the layout. :func:`check_header` is public for the backup
commands, which check a file the way a store does before trusting it.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Sequence

from phalanx_aio._fs import fsync_dir
from phalanx_aio.core.types import Entry, HardState, Snapshot
from phalanx_aio.errors import StorageError
from phalanx_aio.storage._codec import (
    batch_rows,
    encode_conf_state,
    hard_state_row,
    identity_crc,
    snapshot_crc,
)

__all__ = [
    "APPLICATION_ID",
    "INSERT_BATCH",
    "SCHEMA",
    "SCHEMA_VERSION",
    "check_header",
    "check_identity",
    "create_store",
    "describe",
    "pragmas",
    "upgrade_store",
]

SCHEMA_VERSION = 2
"""The on-disk layout this code writes (kept in the header's ``user_version``); stores of
version 1 are read too, and converted when opened."""
APPLICATION_ID = 0x50484C58
"""SQLite ``application_id`` of a phalanx_aio store ("PHLX")."""

CREATE_BATCHES = (
    "CREATE TABLE entry_batches (first INTEGER PRIMARY KEY, last INTEGER NOT NULL,"
    " data BLOB NOT NULL, crc INTEGER NOT NULL)"
)
SCHEMA = (
    "CREATE TABLE identity (k INTEGER PRIMARY KEY CHECK (k = 1), schema_version INTEGER NOT NULL,"
    " node_id TEXT NOT NULL, cluster_id TEXT NOT NULL, crc INTEGER NOT NULL)",
    "CREATE TABLE hard_state (k INTEGER PRIMARY KEY CHECK (k = 1), term INTEGER NOT NULL, vote TEXT,"
    " commit_index INTEGER NOT NULL, crc INTEGER NOT NULL)",
    "CREATE TABLE snapshot (k INTEGER PRIMARY KEY CHECK (k = 1), idx INTEGER NOT NULL,"
    " term INTEGER NOT NULL, conf BLOB NOT NULL, data BLOB NOT NULL, crc INTEGER NOT NULL)",
    CREATE_BATCHES,
)
"""The statements that create an empty store (shared with the benchmark's baseline)."""

INSERT_BATCH = "INSERT INTO entry_batches (first, last, data, crc) VALUES (?, ?, ?, ?)"
PUT_HARD_STATE = "INSERT OR REPLACE INTO hard_state (k, term, vote, commit_index, crc) VALUES (1, ?, ?, ?, ?)"
PUT_SNAPSHOT = "INSERT OR REPLACE INTO snapshot (k, idx, term, conf, data, crc) VALUES (1, ?, ?, ?, ?, ?)"


_HEADER_MAGIC = b"SQLite format 3\x00"
READABLE_VERSIONS = (1, SCHEMA_VERSION)


def pragmas(synchronous: str) -> list[str]:
    """The per-connection settings of a store (also used by the benchmark's baseline)."""
    out = [f"PRAGMA synchronous={synchronous}"]
    if sys.platform == "darwin":  # fsync() does not reach the platter on macOS; F_FULLFSYNC does
        out += ["PRAGMA fullfsync=ON", "PRAGMA checkpoint_fullfsync=ON"]
    return out


def describe(exc: sqlite3.Error) -> str:
    """What a SQLite error means for a store, in words an operator can act on."""
    msg = str(exc)
    if "file is not a database" in msg:
        return f"not a SQLite database, or its header is damaged ({msg})"
    if "malformed" in msg:
        return f"the database is corrupt ({msg})"
    if "no such table" in msg or "no such column" in msg:
        return f"not a phalanx_aio store, or its schema is damaged ({msg})"
    return msg


def check_header(path: str, fd: int) -> int:
    """Check the 100-byte SQLite header before SQLite itself reads the file; return the schema
    version it names."""
    size = os.fstat(fd).st_size
    if size == 0:
        raise StorageError(f"{path}: the file is empty (truncated to zero bytes?)")
    head = os.pread(fd, 100, 0)
    if len(head) < 100:
        raise StorageError(f"{path}: the file is only {size} bytes long: truncated, or not a database")
    if head[:16] != _HEADER_MAGIC:
        raise StorageError(f"{path}: not a SQLite database, or its header is damaged (bad magic bytes)")
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        raise StorageError(f"{path}: the database header is damaged (page size {page_size})")
    app_id = int.from_bytes(head[68:72], "big")
    if app_id != APPLICATION_ID:
        raise StorageError(
            f"{path}: not a phalanx_aio store (SQLite application id 0x{app_id:08x}, "
            f"expected 0x{APPLICATION_ID:08x})"
        )
    version = int.from_bytes(head[60:64], "big")
    if version not in READABLE_VERSIONS:
        raise StorageError(unknown_version(path, version))
    if head[18] != 2 or head[19] != 2:
        raise StorageError(f"{path}: the database is not in WAL mode (damaged header?)")
    wal = path + "-wal"
    if os.path.exists(wal) and os.path.getsize(wal) > 0:
        return version  # pages may live in the WAL: SQLite and the checks below judge the whole
    if size % page_size:
        raise StorageError(
            f"{path}: the file is truncated or damaged: {size} bytes is not a whole number of "
            f"{page_size}-byte pages"
        )
    pages = int.from_bytes(head[28:32], "big")
    if head[24:28] == head[92:96] and pages * page_size > size:
        raise StorageError(
            f"{path}: the file is truncated: its header says {pages} pages of {page_size} bytes "
            f"({pages * page_size} bytes) but it has {size}"
        )
    return version


def unknown_version(path: str, version: object) -> str:
    """The error text for a store of a schema version this code cannot read."""
    return (
        f"{path}: unknown schema version {version!r} (this phalanx_aio reads versions "
        f"{', '.join(map(str, READABLE_VERSIONS))})"
    )


def one_row(path: str, conn: sqlite3.Connection, table: str, columns: str) -> tuple[object, ...]:
    """The one row of a single-row table, or :class:`StorageError`."""
    rows = conn.execute(f"SELECT {columns} FROM {table}").fetchall()
    if len(rows) != 1:
        raise StorageError(f"{path}: the {table} table has {len(rows)} rows instead of 1 (damaged store)")
    return tuple(rows[0])


def text_column(value: object) -> str | None:
    """A TEXT column read as bytes, decoded; None if it is not valid UTF-8 text."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) else None


def check_identity(
    path: str, conn: sqlite3.Connection, node_id: str, cluster_id: str, header_version: int
) -> None:
    """Check the identity row: its checksum, its schema version against the header's, and that
    it names this node of this cluster."""
    version, raw_node, raw_cluster, crc = one_row(
        path, conn, "identity", "schema_version, node_id, cluster_id, crc"
    )
    node, cluster = text_column(raw_node), text_column(raw_cluster)
    if (
        not isinstance(version, int)
        or node is None
        or cluster is None
        or crc != identity_crc(version, node, cluster)
    ):
        raise StorageError(f"{path}: the identity row fails its checksum (corrupt)")
    if version != header_version:
        raise StorageError(
            f"{path}: the identity row says schema version {version} but the header says "
            f"{header_version} (damaged store)"
        )
    if (node, cluster) != (node_id, cluster_id):
        raise StorageError(
            f"{path}: the store belongs to node {node!r} of cluster {cluster!r}, not to node {node_id!r} "
            f"of cluster {cluster_id!r}"
        )


def snapshot_row(snapshot: Snapshot) -> tuple[int, int, bytes, bytes, int]:
    """The column values of the ``snapshot`` row for ``snapshot``."""
    meta = snapshot.meta
    conf = encode_conf_state(meta.conf)
    data = bytes(snapshot.data)
    return (meta.index, meta.term, conf, data, snapshot_crc(meta.index, meta.term, conf, data))


# ---------------------------------------------------------------------- creation and migration


def create_store(path: str, node_id: str, cluster_id: str) -> None:
    """Build a complete empty store under a temporary name, then rename it into place, so
    that the store's path never holds a half-initialised database."""
    tmp = path + ".creating"
    for suffix in ("", "-journal", "-wal", "-shm"):
        if os.path.lexists(tmp + suffix):
            os.remove(tmp + suffix)  # left by a creation that crashed: never a live store
    try:
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            for pragma in pragmas("FULL"):
                conn.execute(pragma)
            conn.execute("BEGIN IMMEDIATE")
            for stmt in SCHEMA:
                conn.execute(stmt)
            conn.execute(
                "INSERT INTO identity VALUES (1, ?, ?, ?, ?)",
                (SCHEMA_VERSION, node_id, cluster_id, identity_crc(SCHEMA_VERSION, node_id, cluster_id)),
            )
            conn.execute(PUT_HARD_STATE, hard_state_row(HardState()))
            conn.execute(PUT_SNAPSHOT, snapshot_row(Snapshot()))
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise StorageError(f"{path}: SQLite refused WAL journal mode (got {mode!r})")
        finally:
            conn.close()
        if os.path.lexists(tmp + "-wal") and os.path.getsize(tmp + "-wal") > 0:
            raise StorageError(f"{tmp}: the new database was not fully checkpointed")
        for suffix in ("-wal", "-shm"):
            if os.path.lexists(tmp + suffix):
                os.remove(tmp + suffix)
        os.rename(tmp, path)
        fsync_dir(os.path.dirname(os.path.abspath(path)))
    except sqlite3.Error as exc:
        raise StorageError(f"{path}: cannot create the store: {exc}") from exc
    except OSError as exc:
        raise StorageError(f"{path}: cannot create the store: {exc.strerror or exc}") from exc


def upgrade_store(
    path: str,
    conn: sqlite3.Connection,
    node_id: str,
    cluster_id: str,
    entries: Sequence[Entry],
    row_entries: int,
) -> None:
    """Convert a verified schema 1 store to the current layout in one transaction: either
    all of it is converted or, if anything fails (a full disk), the file is unchanged."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(CREATE_BATCHES)
            conn.executemany(INSERT_BATCH, batch_rows(entries, row_entries))
            conn.execute("DROP TABLE entries")
            conn.execute(
                "UPDATE identity SET schema_version = ?, crc = ? WHERE k = 1",
                (SCHEMA_VERSION, identity_crc(SCHEMA_VERSION, node_id, cluster_id)),
            )
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        conn.close()
        raise StorageError(
            f"{path}: converting the store from schema version 1 to {SCHEMA_VERSION} failed "
            f"({describe(exc)}); the file is unchanged"
        ) from exc
    except BaseException:
        conn.close()
        raise
