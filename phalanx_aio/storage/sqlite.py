"""A durable store in one SQLite database (WAL journal), driven through aiosqlite.

Layout (schema version 2). Each table but ``entry_batches`` holds exactly one row (``k = 1``);
every row carries a CRC-32 of its canonical encoding (see ``_codec``)::

    identity(k, schema_version, node_id, cluster_id, crc)
    hard_state(k, term, vote, commit_index, crc)
    snapshot(k, idx, term, conf, data, crc)       -- idx 0: no snapshot yet
    entry_batches(first PRIMARY KEY, last, data, crc)

A row of ``entry_batches`` holds the log entries ``first .. last`` (at most 1,024) packed in
the layout the transport sends (``_entry_batch``): one row per write rather than one per
entry. Schema version 1 (one row per entry in a table ``entries``) is converted when opened.

The database header carries ``application_id`` 0x50484C58 ("PHLX") and ``user_version`` (the
schema version), so a foreign or future file is recognised before anything is read.

Every write is one SQLite transaction (``BEGIN IMMEDIATE`` .. ``COMMIT``) run as a single
call on aiosqlite's worker thread: one thread hop per ``Ready``, whatever it holds.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pathlib
import sqlite3
import struct
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Literal, TypeVar, cast

import aiosqlite

from phalanx_aio._entry_batch import EncodeError
from phalanx_aio._fs import fsync_dir
from phalanx_aio.core.raft import InitialState
from phalanx_aio.core.types import ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMeta
from phalanx_aio.errors import ConfigError, LocalError, ProtocolError, StorageError
from phalanx_aio.storage._codec import (
    batch_crc,
    batch_rows,
    decode_batch,
    decode_conf_state,
    encode_conf_state,
    entry_crc,
    entry_crcs,
    hard_state_crc,
    hard_state_row,
    identity_crc,
    snapshot_crc,
)
from phalanx_aio.storage.base import (
    LogShape,
    Storage,
    StoredState,
    check_ids,
    check_loaded_log,
    closed_error,
)

if sys.platform != "win32":
    import fcntl

__all__ = ["APPLICATION_ID", "SCHEMA_VERSION", "SQLiteStorage"]

SCHEMA_VERSION = 2
"""The on-disk layout this code writes (kept in the header's ``user_version``); stores of
version 1 are read too, and converted when opened."""
APPLICATION_ID = 0x50484C58
"""SQLite ``application_id`` of a phalanx_aio store ("PHLX")."""

_CREATE_BATCHES = (
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
    _CREATE_BATCHES,
)
"""The statements that create an empty store (shared with the benchmark's baseline)."""

INSERT_BATCH = "INSERT INTO entry_batches (first, last, data, crc) VALUES (?, ?, ?, ?)"
ROW_ENTRIES = 1024
"""The most log entries one row of ``entry_batches`` holds."""
_PUT_HARD_STATE = (
    "INSERT OR REPLACE INTO hard_state (k, term, vote, commit_index, crc) VALUES (1, ?, ?, ?, ?)"
)
_PUT_SNAPSHOT = "INSERT OR REPLACE INTO snapshot (k, idx, term, conf, data, crc) VALUES (1, ?, ?, ?, ?, ?)"

_SQLITE_FULL = 13
_SQLITE_TOOBIG = 18
_MAX_PAGES = 0xFFFFFFFE  # SQLite's own ceiling; asking for more is clamped
_HEADER_MAGIC = b"SQLite format 3\x00"
_ENTRY_TYPES = {int(t): t for t in EntryType}
_LOAD_CHUNK = 65_536  # schema 1 rows (one entry each) read and checked at a time
_LOAD_BATCHES = 64  # entry_batches rows read at a time
_READABLE_VERSIONS = (1, SCHEMA_VERSION)
_T = TypeVar("_T")


def _pragmas(synchronous: str) -> list[str]:
    """The per-connection settings of a store (also used by the benchmark's baseline)."""
    out = [f"PRAGMA synchronous={synchronous}"]
    if sys.platform == "darwin":  # fsync() does not reach the platter on macOS; F_FULLFSYNC does
        out += ["PRAGMA fullfsync=ON", "PRAGMA checkpoint_fullfsync=ON"]
    return out


class SQLiteStorage(Storage):
    """A :class:`Storage` in one SQLite database file (plus its ``-wal`` and ``-shm`` files).

    ``synchronous="FULL"`` (the default) fsyncs the write-ahead log at every commit: a write
    that returned survives power loss. ``synchronous="NORMAL"`` skips that fsync (the log is
    synced at checkpoints only): a process crash still loses nothing, but a power loss or kernel
    crash may lose the last writes that returned, which can make this node forget a vote or
    an acknowledged entry. Use it only where the whole cluster losing power at once is ruled out
    and a node that lost data is rebuilt, or for tests.

    ``max_pages`` caps the database size in pages (``PRAGMA max_page_count``); reaching it
    behaves like a full disk (see :attr:`healthy`); :meth:`set_max_pages` changes it.

    ``quick_check`` runs SQLite's ``PRAGMA quick_check`` at open (reads every page once).

    The file is locked (``flock``) while open: a second store on the same file, in this process
    or another, fails to open. I/O errors other than a full disk (a failed fsync, corruption
    found while running) are fatal: every later write raises until the store is reopened,
    which verifies everything again.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        max_pages: int | None = None,
        quick_check: bool = True,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ConfigError(f"synchronous must be 'FULL' or 'NORMAL', not {synchronous!r}")
        if max_pages is not None and max_pages < 1:
            raise ConfigError(f"max_pages must be a positive number of pages, not {max_pages!r}")
        self._path = os.fspath(path)
        self._synchronous = synchronous
        self._max_pages = max_pages
        self._quick_check = quick_check
        self._db: aiosqlite.Connection | None = None
        self._raw: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._shape = LogShape()
        self._last_error: StorageError | None = None
        self._failed: StorageError | None = None

    # ------------------------------------------------------------------ properties

    @property
    def location(self) -> str:
        """The database file's path, as given."""
        return self._path

    @property
    def path(self) -> str:
        """The database file's path, as given."""
        return self._path

    @property
    def synchronous(self) -> str:
        """The durability mode: ``"FULL"`` or ``"NORMAL"``."""
        return self._synchronous

    @property
    def healthy(self) -> bool:
        """False after a write failed (disk full until a write succeeds; other errors for good)."""
        return self._last_error is None and self._failed is None

    @property
    def last_error(self) -> StorageError | None:
        """The error that made the store unhealthy, or None."""
        return self._failed or self._last_error

    @property
    def failed(self) -> bool:
        """True after an I/O error other than a full disk, or damage found while running."""
        return self._failed is not None

    # ------------------------------------------------------------------ open / close

    async def open(self, *, node_id: str, cluster_id: str) -> StoredState:
        """Verify and load the store, creating it if the file does not exist.

        Verification runs on a read-only connection before anything is written: the header
        (SQLite magic, WAL mode, application id, schema version, truncation), SQLite's quick
        check, the identity, every checksum and the shape of the log. A file that fails
        raises :class:`StorageError` naming the file and the problem and is left unchanged.
        A verified store of schema version 1 is then converted to the current layout in one
        transaction (if that fails, it raises and the file is unchanged).
        """
        check_ids(node_id, cluster_id)
        if self._db is not None:
            raise LocalError(f"{self._path}: the store is already open")
        loaded: list[StoredState] = []
        failed: list[BaseException] = []

        def connector() -> sqlite3.Connection:
            try:
                conn, stored = self._open_sync(node_id, cluster_id)
            except Exception as exc:
                # Let aiosqlite start normally on a stand-in so that its thread is shut down
                # cleanly below (a failing connector leaves it stopping after the loop is gone).
                failed.append(exc)
                return sqlite3.connect(":memory:")
            loaded.append(stored)
            return conn

        db = aiosqlite.Connection(connector, 64)
        thread = getattr(db, "_thread", None)
        if isinstance(thread, threading.Thread):
            # A store that is never closed must not keep the interpreter alive at exit. Ending
            # the thread there is no worse than a crash, which the store is built to survive.
            thread.daemon = True
        await db
        if failed:
            await db.close()
            raise failed[0]
        self._db = db
        self._last_error = None
        self._failed = None
        return loaded[0]

    async def aclose(self) -> None:
        """Close the database (checkpointing the WAL) and release the file lock. Idempotent."""
        db, self._db = self._db, None
        if db is None:
            return
        try:
            await db.close()
        except sqlite3.Error as exc:
            raise StorageError(f"{self._path}: closing the database failed: {exc}") from exc
        finally:
            self._raw = None
            self._unlock()

    def _open_sync(self, node_id: str, cluster_id: str) -> tuple[sqlite3.Connection, StoredState]:
        path = self._path
        created = False
        try:
            if not os.path.lexists(path):
                self._create_sync(node_id, cluster_id)
                created = True
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise StorageError(f"{path}: cannot open the store: {exc.strerror or exc}") from exc
        try:
            self._lock(fd)
            version = _check_header(path, fd)
            state, shape = self._verify_sync(node_id, cluster_id, version)
            conn = self._connect_rw()
            if version != SCHEMA_VERSION:
                self._upgrade_sync(conn, node_id, cluster_id, state.entries)
        except BaseException:
            os.close(fd)
            self._lock_fd = None
            raise
        self._raw = conn
        self._shape = shape
        return conn, StoredState(node_id, cluster_id, state, created)

    def _lock(self, fd: int) -> None:
        self._lock_fd = fd
        if sys.platform != "win32":
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise StorageError(
                    f"{self._path}: the store is in use (open in another process or another SQLiteStorage)"
                ) from exc

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock

    def _create_sync(self, node_id: str, cluster_id: str) -> None:
        """Build a complete empty store under a temporary name, then rename it into place, so
        that the store's path never holds a half-initialised database."""
        path = self._path
        tmp = path + ".creating"
        for suffix in ("", "-journal", "-wal", "-shm"):
            if os.path.lexists(tmp + suffix):
                os.remove(tmp + suffix)  # left by a creation that crashed: never a live store
        try:
            conn = sqlite3.connect(tmp, isolation_level=None)
            try:
                for pragma in _pragmas("FULL"):
                    conn.execute(pragma)
                conn.execute("BEGIN IMMEDIATE")
                for stmt in SCHEMA:
                    conn.execute(stmt)
                conn.execute(
                    "INSERT INTO identity VALUES (1, ?, ?, ?, ?)",
                    (SCHEMA_VERSION, node_id, cluster_id, identity_crc(SCHEMA_VERSION, node_id, cluster_id)),
                )
                conn.execute(_PUT_HARD_STATE, hard_state_row(HardState()))
                conn.execute(_PUT_SNAPSHOT, _snapshot_row(Snapshot()))
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

    def _verify_sync(self, node_id: str, cluster_id: str, version: int) -> tuple[InitialState, LogShape]:
        """Read and check everything on a read-only connection (it never writes the file).

        ``version`` is the schema version in the header: the identity row must say the same,
        and the log is read in that version's layout.
        """
        path = self._path
        uri = pathlib.Path(path).resolve().as_uri() + "?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None)
            conn.text_factory = bytes  # damaged text must not escape as a decoding error
            try:
                conn.execute("BEGIN")  # one read transaction: everything from one point in time
                if self._quick_check:
                    rows = conn.execute("PRAGMA quick_check(5)").fetchall()
                    problems = [bytes(r[0]).decode("utf-8", "replace") for r in rows]
                    if problems != ["ok"]:
                        raise StorageError(
                            f"{path}: the database is corrupt (SQLite quick_check: {'; '.join(problems)})"
                        )
                _check_identity(path, conn, node_id, cluster_id, version)
                hard_state = _load_hard_state(path, conn)
                snapshot = _load_snapshot(path, conn)
                with _gc_paused():
                    if version == 1:
                        entries = _load_entry_rows(path, conn)
                    else:
                        entries = _load_batches(path, conn, snapshot.meta.index)
                conn.execute("COMMIT")
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise StorageError(f"{path}: {_describe(exc)}") from exc
        except ValueError as exc:  # e.g. a value SQLite cannot convert: damage it did not notice
            raise StorageError(f"{path}: the database is corrupt ({exc})") from exc
        shape = check_loaded_log(path, hard_state, snapshot, entries)
        return InitialState(hard_state, snapshot, tuple(entries)), shape

    def _upgrade_sync(
        self, conn: sqlite3.Connection, node_id: str, cluster_id: str, entries: Sequence[Entry]
    ) -> None:
        """Convert a verified schema 1 store to the current layout in one transaction: either
        all of it is converted or, if anything fails (a full disk), the file is unchanged."""
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(_CREATE_BATCHES)
                conn.executemany(INSERT_BATCH, batch_rows(entries, ROW_ENTRIES))
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
                f"{self._path}: converting the store from schema version 1 to {SCHEMA_VERSION} failed "
                f"({_describe(exc)}); the file is unchanged"
            ) from exc
        except BaseException:
            conn.close()
            raise

    def _connect_rw(self) -> sqlite3.Connection:
        path = self._path
        try:
            conn = sqlite3.connect(path, isolation_level=None)
            try:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if mode != "wal":
                    raise StorageError(f"{path}: SQLite refused WAL journal mode (got {mode!r})")
                for pragma in _pragmas(self._synchronous):
                    conn.execute(pragma)
                if self._max_pages is not None:
                    conn.execute(f"PRAGMA max_page_count={int(self._max_pages)}")
            except BaseException:
                conn.close()
                raise
        except sqlite3.Error as exc:
            raise StorageError(f"{path}: {_describe(exc)}") from exc
        except ValueError as exc:  # an undecodable error message from a damaged schema
            raise StorageError(f"{path}: the database is corrupt ({exc})") from exc
        return conn

    # ------------------------------------------------------------------ writes

    async def _call(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on the connection's worker thread: one hop, however much it does."""
        db = self._db
        if db is None:
            raise closed_error(self._path)
        # aiosqlite has no public "run this on the connection thread"; _execute is exactly that.
        run = cast("Callable[[Callable[[], _T]], Awaitable[_T]]", db._execute)
        return await run(fn)

    async def save(
        self,
        *,
        hard_state: HardState | None = None,
        entries: Sequence[Entry] = (),
        snapshot: Snapshot | None = None,
    ) -> None:
        """Persist one ``Ready`` in one transaction and one thread hop (see :meth:`Storage.save`)."""
        if hard_state is None and not entries and snapshot is None:
            if self._db is None:
                raise closed_error(self._path)
            return
        await self._call(lambda: self._save_sync(hard_state, entries, snapshot))

    def _save_sync(
        self, hard_state: HardState | None, entries: Sequence[Entry], snapshot: Snapshot | None
    ) -> None:
        conn = self._writable()
        shape, delete_from = self._shape.plan_save(self._path, hard_state, entries, snapshot, self._term_at)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if snapshot is not None:
                    conn.execute("DELETE FROM entry_batches")
                    conn.execute(_PUT_SNAPSHOT, _snapshot_row(snapshot))
                if entries:
                    if delete_from is not None:
                        self._truncate(conn, delete_from)
                    conn.executemany(INSERT_BATCH, batch_rows(entries, ROW_ENTRIES))
                if hard_state is not None:
                    conn.execute(_PUT_HARD_STATE, hard_state_row(hard_state))
                conn.execute("COMMIT")
            except BaseException:
                self._rollback(conn)
                raise
        except sqlite3.Error as exc:
            raise self._write_failed("saving", exc) from exc
        except EncodeError as exc:
            raise LocalError(f"{self._path}: cannot store the entries: {exc}") from exc
        self._shape = shape
        self._last_error = None

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        """Store a local snapshot and delete the entries it covers, in one transaction."""
        await self._call(lambda: self._save_snapshot_sync(snapshot))

    def _save_snapshot_sync(self, snapshot: Snapshot) -> None:
        conn = self._writable()
        shape = self._shape.plan_compact(self._path, snapshot, self._term_at)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(_PUT_SNAPSHOT, _snapshot_row(snapshot))
                # A row that straddles the snapshot's index stays whole; loading skips the entries
                # it holds up to the snapshot, and the next compaction deletes it.
                conn.execute("DELETE FROM entry_batches WHERE last <= ?", (snapshot.meta.index,))
                conn.execute("COMMIT")
            except BaseException:
                self._rollback(conn)
                raise
        except sqlite3.Error as exc:
            raise self._write_failed("saving a snapshot", exc) from exc
        self._shape = shape
        self._last_error = None

    async def read_snapshot(self) -> Snapshot | None:
        """The stored snapshot (checksum verified), or None if there is none."""
        return await self._call(self._read_snapshot_sync)

    def _read_snapshot_sync(self) -> Snapshot | None:
        conn = self._connection()
        try:
            snap = _load_snapshot(self._path, conn)
        except sqlite3.Error as exc:
            raise self._write_failed("reading the snapshot", exc) from exc
        except StorageError as exc:
            self._failed = exc
            raise
        return snap if snap.meta.index > 0 else None

    async def set_max_pages(self, pages: int | None) -> int:
        """Change the size cap (None: no cap beyond SQLite's own); returns the cap in force.

        SQLite never sets the cap below the current size of the database.
        """
        if pages is not None and pages < 1:
            raise ConfigError(f"max_pages must be a positive number of pages, not {pages!r}")
        self._max_pages = pages
        limit = _MAX_PAGES if pages is None else int(pages)

        def apply() -> int:
            row = self._connection().execute(f"PRAGMA max_page_count={limit}").fetchone()
            return int(row[0])

        return await self._call(apply)

    # ------------------------------------------------------------------ helpers (worker thread)

    def _connection(self) -> sqlite3.Connection:
        if self._raw is None:
            raise closed_error(self._path)
        return self._raw

    def _writable(self) -> sqlite3.Connection:
        conn = self._connection()
        if self._failed is not None:
            raise StorageError(
                f"{self._path}: the store failed earlier and refuses writes until it is reopened "
                f"({self._failed})"
            )
        return conn

    def _term_at(self, index: int) -> int:
        first, row = self._row_holding(self._connection(), index)
        return row[index - first].term

    def _row_holding(self, conn: sqlite3.Connection, index: int) -> tuple[int, tuple[Entry, ...]]:
        """The first index and the entries of the row that holds ``index`` (checked)."""
        row = conn.execute(
            "SELECT first, last, data, crc FROM entry_batches WHERE first <= ? ORDER BY first DESC LIMIT 1",
            (index,),
        ).fetchone()
        if row is None or not isinstance(row[1], int) or row[1] < index:
            err = StorageError(f"{self._path}: log entry {index} has disappeared from the database")
            self._failed = err
            raise err
        return row[0], self._checked_row(row)

    def _checked_row(self, row: tuple[object, ...]) -> tuple[Entry, ...]:
        """The entries of a row read while running; damage found makes the store fail."""
        first, last, data, crc = row
        try:
            return _batch_entries(self._path, first, last, data, crc)
        except StorageError as err:
            self._failed = err
            raise

    def _truncate(self, conn: sqlite3.Connection, index: int) -> None:
        """Delete the stored entries from ``index`` on (in the open transaction); a row that
        holds entries on both sides is rewritten with the ones before ``index``."""
        straddling = conn.execute(
            "SELECT first, last, data, crc FROM entry_batches WHERE first < ? AND last >= ?", (index, index)
        ).fetchone()
        if straddling is not None:
            first = straddling[0]
            kept = self._checked_row(straddling)[: index - first]
            conn.execute("DELETE FROM entry_batches WHERE first >= ?", (first,))
            conn.executemany(INSERT_BATCH, batch_rows(kept, ROW_ENTRIES))
        else:
            conn.execute("DELETE FROM entry_batches WHERE first >= ?", (index,))

    def _rollback(self, conn: sqlite3.Connection) -> None:
        if not conn.in_transaction:
            return  # SQLite already rolled the transaction back (it may after SQLITE_FULL)
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            self._failed = StorageError(f"{self._path}: rolling back a failed write failed: {exc}")

    def _write_failed(self, what: str, exc: sqlite3.Error) -> StorageError:
        code = getattr(exc, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        if primary == _SQLITE_FULL:
            err = StorageError(
                f"{self._path}: disk full while {what} ({exc}); nothing was written, and writes "
                "resume once there is space"
            )
            self._last_error = err
        elif primary == _SQLITE_TOOBIG:
            err = StorageError(f"{self._path}: {what} failed: a value is too big for SQLite ({exc})")
        else:
            err = StorageError(
                f"{self._path}: {what} failed: {_describe(exc)}; the store refuses writes until it is "
                "reopened"
            )
            self._failed = err
        return err


# ---------------------------------------------------------------------- verification helpers


def _describe(exc: sqlite3.Error) -> str:
    msg = str(exc)
    if "file is not a database" in msg:
        return f"not a SQLite database, or its header is damaged ({msg})"
    if "malformed" in msg:
        return f"the database is corrupt ({msg})"
    if "no such table" in msg or "no such column" in msg:
        return f"not a phalanx_aio store, or its schema is damaged ({msg})"
    return msg


def _check_header(path: str, fd: int) -> int:
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
    if version not in _READABLE_VERSIONS:
        raise StorageError(_unknown_version(path, version))
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


def _unknown_version(path: str, version: object) -> str:
    return (
        f"{path}: unknown schema version {version!r} (this phalanx_aio reads versions "
        f"{', '.join(map(str, _READABLE_VERSIONS))})"
    )


def _one_row(path: str, conn: sqlite3.Connection, table: str, columns: str) -> tuple[object, ...]:
    rows = conn.execute(f"SELECT {columns} FROM {table}").fetchall()
    if len(rows) != 1:
        raise StorageError(f"{path}: the {table} table has {len(rows)} rows instead of 1 (damaged store)")
    return tuple(rows[0])


def _text(value: object) -> str | None:
    """A TEXT column read as bytes, decoded; None if it is not valid UTF-8 text."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) else None


def _check_identity(
    path: str, conn: sqlite3.Connection, node_id: str, cluster_id: str, header_version: int
) -> None:
    version, raw_node, raw_cluster, crc = _one_row(
        path, conn, "identity", "schema_version, node_id, cluster_id, crc"
    )
    node, cluster = _text(raw_node), _text(raw_cluster)
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


def _load_hard_state(path: str, conn: sqlite3.Connection) -> HardState:
    term, raw_vote, commit, crc = _one_row(path, conn, "hard_state", "term, vote, commit_index, crc")
    vote = None if raw_vote is None else _text(raw_vote)
    if (
        not (isinstance(term, int) and isinstance(commit, int) and (raw_vote is None or vote is not None))
        or term < 0
        or commit < 0
        or crc != hard_state_crc(term, vote, commit)
    ):
        raise StorageError(f"{path}: the hard state row fails its checksum (corrupt)")
    return HardState(term, vote, commit)


def _snapshot_row(snapshot: Snapshot) -> tuple[int, int, bytes, bytes, int]:
    meta = snapshot.meta
    conf = encode_conf_state(meta.conf)
    data = bytes(snapshot.data)
    return (meta.index, meta.term, conf, data, snapshot_crc(meta.index, meta.term, conf, data))


def _load_snapshot(path: str, conn: sqlite3.Connection) -> Snapshot:
    index, term, conf, data, crc = _one_row(path, conn, "snapshot", "idx, term, conf, data, crc")
    if (
        not (isinstance(index, int) and isinstance(term, int) and isinstance(conf, bytes))
        or not isinstance(data, bytes)
        or index < 0
        or term < 0
        or crc != snapshot_crc(index, term, conf, data)
    ):
        raise StorageError(f"{path}: the snapshot row fails its checksum (corrupt snapshot or metadata)")
    try:
        conf_state = decode_conf_state(conf) if index > 0 else ConfState()
    except ValueError as exc:
        raise StorageError(f"{path}: the snapshot's configuration is malformed: {exc}") from exc
    return Snapshot(SnapshotMeta(index, term, conf_state), data)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while the log is loaded (a million new objects
    would otherwise trigger many collections that find nothing); restore it as it was."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _load_batches(path: str, conn: sqlite3.Connection, snap_index: int) -> list[Entry]:
    """Every stored entry after the snapshot (``snap_index``), each row checked against its
    checksum and its claimed indexes before its entries are returned.

    The first row may hold entries up to the snapshot's index as well (compaction deletes
    whole rows only): those are skipped. Entries of one term share one ``int`` for it.
    """
    entries: list[Entry] = []
    terms: dict[int, int] = {}
    cursor = conn.execute("SELECT first, last, data, crc FROM entry_batches ORDER BY first")
    while rows := cursor.fetchmany(_LOAD_BATCHES):
        for first, last, data, crc in rows:
            batch = _batch_entries(path, first, last, data, crc, terms)
            if not entries and first <= snap_index < last:
                batch = batch[snap_index - first + 1 :]
            entries += batch
    return entries


def _batch_entries(
    path: str, first: object, last: object, data: object, crc: object, terms: dict[int, int] | None = None
) -> tuple[Entry, ...]:
    """The entries of one ``entry_batches`` row, or :class:`StorageError` if it fails a check."""
    if not (type(first) is int and type(last) is int and type(data) is bytes):
        raise StorageError(
            f"{path}: the row of log entries {first!r}..{last!r} has damaged columns (corrupt row)"
        )
    try:
        ok = crc == batch_crc(first, last, data)
    except (struct.error, OverflowError):
        ok = False
    if not ok:
        raise StorageError(f"{path}: log entries {first}..{last} fail their checksum (corrupt row)")
    try:
        return decode_batch(data, first, last, terms)
    except (ProtocolError, ValueError) as exc:
        raise StorageError(f"{path}: log entries {first}..{last} are malformed: {exc}") from exc


def _load_entry_rows(path: str, conn: sqlite3.Connection) -> list[Entry]:
    """Every entry of a schema 1 store (one row per entry), each checked against its checksum
    before it is returned.

    Rows are read and checked in chunks, column by column (``map`` over C functions rather than
    Python code per row). A chunk that fails the bulk check is checked again row by row, so that the
    error names the first bad entry; no entry of a failing chunk is returned.
    """
    entries: list[Entry] = []
    terms: dict[int, int] = {}
    cursor = conn.execute("SELECT idx, term, type, data, crc FROM entries ORDER BY idx")
    while rows := cursor.fetchmany(_LOAD_CHUNK):
        entries += _checked_entries(path, rows, terms)
    return entries


def _checked_entries(path: str, rows: list[tuple[object, ...]], terms_seen: dict[int, int]) -> list[Entry]:
    """The entries of ``rows`` once all of them passed their checks.

    Entries of one term share one ``int`` object for it (``terms_seen``): SQLite hands out a
    new one per row, which costs 32 bytes per entry once terms pass 256.
    """
    try:
        idx, terms, types, datas, crcs = zip(*rows, strict=True)
        kinds = list(map(_ENTRY_TYPES.get, types))
        ok = entry_crcs(idx, terms, types, datas) == list(crcs) and None not in kinds
    except (TypeError, ValueError, struct.error, OverflowError):
        ok = False
    if not ok:
        _check_rows_one_by_one(path, rows)
        raise StorageError(f"{path}: a log entry fails its checksum (corrupt row)")  # not reached
    shared_terms = map(terms_seen.setdefault, terms, terms)
    return list(map(Entry, shared_terms, idx, kinds, datas))  # type: ignore[arg-type]


def _check_rows_one_by_one(path: str, rows: list[tuple[object, ...]]) -> None:
    """Raise :class:`StorageError` naming the first row that fails its checks."""
    types = _ENTRY_TYPES
    for index, term, type_, data, crc in rows:
        try:
            ok = type(data) is bytes and crc == entry_crc(index, term, type_, data)  # type: ignore[arg-type]
        except (TypeError, struct.error, OverflowError):
            ok = False
        if not ok:
            raise StorageError(f"{path}: log entry {index} fails its checksum (corrupt row)")
        if types.get(type_) is None:  # type: ignore[call-overload]
            raise StorageError(f"{path}: log entry {index} has an unknown type {type_!r}")
